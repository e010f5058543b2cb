"""The one reader of data files: every record of a JSONL, JSON or Parquet file, with where it came from.

Source data (`loaders`) and prepared splits (`splits`) are both read here, so a broken record is
reported the same way wherever it is: the file and the line (JSONL, a JSON array) or row (Parquet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from hydra_core.data.schema import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")


def file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for every record of the file at `path`; `where` is e.g. "data.jsonl:line 3".

    A record that cannot be parsed comes out as a `DataError` in place of its row, so that a
    caller may step over it; a file that cannot be read at all raises.
    """
    if path.suffix not in SUFFIXES:
        raise DataError(str(path), None, f"unsupported file type; expected one of {SUFFIXES}")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        yield from _json_rows(path)


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), None, f"is not a readable Parquet file ({str(e).splitlines()[0]})") from None
    i = 0
    for batch in table.iter_batches():  # batches keep large files out of memory
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:row {i}", row


def _not_text(where: str, error: UnicodeDecodeError) -> DataError:
    return DataError(where, None, f"is not UTF-8 text (byte 0x{error.object[error.start]:02x}); is it a binary file? "
                     "JSON and JSONL files must be UTF-8")


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    # Lines are read as bytes and decoded one by one, so that a byte that is not UTF-8 is reported
    # with its line, as a bad record that --skip-bad can step over.
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith(b"["):
            try:
                rows = json.loads(f.read().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise _not_text(str(path), e) from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:line {e.lineno}", None, f"malformed JSON ({e.msg})") from None
            for i, row in enumerate(rows, start=1):
                yield f"{path}:row {i}", _object_or_error(row, f"{path}:row {i}")
            return
        for i, raw in enumerate(f, start=1):
            where = f"{path}:line {i}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, _not_text(where, e)
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(where, None, f"malformed JSON ({e.msg})")
                continue
            yield where, _object_or_error(row, where)


def _object_or_error(row: Any, where: str) -> Any:
    return row if isinstance(row, dict) else DataError(where, None, "expected a JSON object")

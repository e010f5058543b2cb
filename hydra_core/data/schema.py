"""The one internal schema every loader produces and every stage reads.

A preference pair is (prompt, chosen, rejected); a demonstration is (prompt, response); an eval
prompt may carry a reference answer that a task verifier can check. Records keep a `source` string
("file.jsonl:12") so any later error can still point at the input record it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, TypeVar


class DataError(ValueError):
    """Bad input data. The message names the file, the record and the field."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}, field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    source: str = ""


@dataclass(frozen=True)
class Demonstration:
    prompt: str
    response: str
    source: str = ""


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    reference: str = ""  # a gold answer where the task has one; empty otherwise
    source: str = ""


Record = TypeVar("Record", PreferencePair, Demonstration, EvalPrompt)


def validate_pair(pair: PreferencePair) -> PreferencePair:
    for name in ("prompt", "chosen", "rejected"):
        value = getattr(pair, name)
        if not isinstance(value, str):
            raise DataError(pair.source, name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(pair.source, name, "is empty")
    if pair.chosen == pair.rejected:
        raise DataError(pair.source, "rejected", "is identical to 'chosen'; a pair must differ")
    return pair


def validate_demonstration(demo: Demonstration) -> Demonstration:
    for name in ("prompt", "response"):
        value = getattr(demo, name)
        if not isinstance(value, str):
            raise DataError(demo.source, name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(demo.source, name, "is empty")
    return demo


# --- prepared-split files -------------------------------------------------------------------
# A prepared directory holds one file per split (JSONL or Parquet) plus manifest.json.

SPLIT_FILES = {
    "pairs_train": PreferencePair,
    "pairs_eval": PreferencePair,
    "demos_train": Demonstration,
    "demos_eval": Demonstration,
    "prompts_train": EvalPrompt,
    "prompts_eval": EvalPrompt,
}
MANIFEST = "manifest.json"


def write_records(records: Iterable[Record], path: Path) -> int:
    rows = [asdict(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [f.name for f in fields(SPLIT_FILES[path.stem])]
        table = pa.table({n: [row[n] for row in rows] for n in names})
        pq.write_table(table, path)
    else:
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {i}", row
        return
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:line {i}", None, f"malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:line {i}", None, "expected a JSON object")
            yield f"{path}:line {i}", row


def read_records(path: Path, kind: type[Record]) -> list[Record]:
    names = [f.name for f in fields(kind) if f.name != "source"]
    out = []
    for where, row in _iter_rows(path):
        missing = [n for n in names if n not in row and n != "reference"]
        if missing:
            raise DataError(where, missing[0], "is missing")
        values = {n: row[n] for n in names if n in row}
        out.append(kind(**values, source=row.get("source") or where))
    return out


def split_path(prepared_dir: str | Path, split: str) -> Path:
    """The file for `split` in a prepared directory, whichever of the formats it was written in."""
    base = Path(prepared_dir)
    for suffix in (".jsonl", ".parquet"):
        candidate = base / f"{split}{suffix}"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{base}: no '{split}.jsonl' or '{split}.parquet'; is this a directory written by "
        "'hydra-rlhf prepare'?"
    )


def load_split(prepared_dir: str | Path, split: str) -> list:
    path = split_path(prepared_dir, split)
    records = read_records(path, SPLIT_FILES[split])
    if not records:
        raise DataError(str(path), None, f"split '{split}' is empty")
    return records


def read_manifest(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())

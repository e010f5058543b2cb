"""A prepared data directory: one file per split (JSONL or Parquet) and `manifest.json`.

`hydra-rlhf prepare` writes it; every later stage reads its splits through `load_split`, which
validates each record as the loaders do, so a hand-edited split fails with its file and line.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Iterable

from hydra_core.data.rows import file_rows
from hydra_core.data.schema import VALIDATORS, DataError, Demonstration, EvalPrompt, PreferencePair, Record

SPLIT_FILES = {
    "pairs_train": PreferencePair,
    "pairs_eval": PreferencePair,
    "demos_train": Demonstration,
    "demos_eval": Demonstration,
    "prompts_train": EvalPrompt,
    "prompts_eval": EvalPrompt,
}
MANIFEST = "manifest.json"


def _as_json(value):
    """A record's field as JSON and Parquet hold it: a conversation as a list of {"role", "content"} objects."""
    return [dict(m) for m in value] if isinstance(value, tuple) else value


def write_records(records: Iterable[Record], path: Path) -> int:
    rows = [{name: _as_json(value) for name, value in asdict(r).items()} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [f.name for f in fields(SPLIT_FILES[path.stem])]
        pq.write_table(pa.table({n: [row[n] for row in rows] for n in names}), path)
    else:
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def read_records(path: Path, kind: type[Record]) -> list[Record]:
    """Every record of a file of `kind` records (a split, or a file of eval prompts), validated."""
    names = [f.name for f in fields(kind) if f.name != "source"]
    optional = {f.name for f in fields(kind) if f.default is not MISSING}  # e.g. an eval prompt's reference
    out = []
    for where, row in file_rows(path):
        if isinstance(row, DataError):
            raise row
        missing = [n for n in names if n not in row and n not in optional]
        if missing:
            raise DataError(where, missing[0], "is missing")
        values = {n: row[n] for n in names if n in row}
        out.append(VALIDATORS[kind](kind(**values, source=row.get("source") or where)))
    return out


def split_path(prepared_dir: str | Path, split: str) -> Path:
    """The file of `split` that the directory's manifest lists. A directory without a manifest is
    not a finished prepared directory, and a split it does not list is not part of it."""
    base = Path(prepared_dir)
    if not (base / MANIFEST).is_file():
        what = "no such directory" if not base.exists() else f"no {MANIFEST}, so not a finished prepared data directory"
        raise DataError(str(base), None, f"{what}; prepare one with 'hydra-rlhf prepare'")
    listed = read_manifest(base).get("files", {}).get(split)
    if not listed:
        raise DataError(str(base / MANIFEST), "files", f"does not list a '{split}' split")
    if not (base / listed).is_file():
        raise DataError(str(base / MANIFEST), "files", f"lists {listed} for '{split}', and there is no such file")
    return base / listed


def load_split(prepared_dir: str | Path, split: str) -> list:
    path = split_path(prepared_dir, split)
    records = read_records(path, SPLIT_FILES[split])
    if not records:
        raise DataError(str(path), None, f"split '{split}' is empty")
    return records


def read_manifest(prepared_dir: str | Path) -> dict:
    """The manifest of a prepared directory ({} when it has none)."""
    path = Path(prepared_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(str(path), None, f"is not a readable manifest ({e})") from None

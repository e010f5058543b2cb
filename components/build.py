"""Compile every component to the `component.yaml` beside its code.

    python -m components.build            # rewrite the checked-in specs
    python -m components.build --out DIR  # write DIR/<name>/component.yaml instead

The image in the specs is the one setting of `components.image`, read now.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from kfp import compiler

NAMES = ("check_settings", "open_pipeline_run", "data_prep", "hydra_sft", "hydra_ppo", "pairwise_eval",
         "register_model", "compare_variants", "close_pipeline_run")
HERE = Path(__file__).parent


def load(name: str):
    """The component object of `components/<name>/component.py` (it bears the folder's name)."""
    if name not in NAMES:
        raise ValueError(f"unknown component {name!r}; the components are {list(NAMES)}")
    return getattr(importlib.import_module(f"components.{name}.component"), name)


def spec_path(name: str, root: str | Path = HERE) -> Path:
    return Path(root) / name / "component.yaml"


def build(root: str | Path = HERE) -> list[Path]:
    written = []
    for name in NAMES:
        path = spec_path(name, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(load(name), str(path))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE), help="root folder of the specs (default: beside the code)")
    for path in build(parser.parse_args(argv).out):
        print(path)


if __name__ == "__main__":
    main()

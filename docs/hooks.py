"""MkDocs hooks: the pages that are generated, never written twice. A page asks for one with a marker line:

    <!-- generated: cli-reference -->          every `hydra-rlhf` command and its flags; a stage command's flags
                                               from its config dataclass (type, range, default, meaning)
    <!-- generated: pipeline-parameters -->    the pipeline's parameters from the pipeline itself
    <!-- generated: landing -->                README.md, the repository's front page, as the home page

`mkdocs build --strict` (run by the tests) fails on an unknown marker.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(value) -> str:
    return f"`{json.dumps(value)}`"


def _stage_table(config) -> list[str]:
    from hydra_core.config.fields import field_docs

    rows = ["| flag | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for doc in field_docs(config):
        rows.append(f"| `{doc.flag}` | {doc.kind} | {_value(doc.default)} | {_cell(doc.allowed)} | "
                    f"{_cell(doc.meaning)} |")
    return rows


ARGUMENT_HEADER = ["| argument | default | meaning |", "|---|---|---|"]


def _argument_rows(actions) -> list[str]:
    rows = []
    for action in actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest.upper()}`"
        if action.metavar and action.option_strings:
            name += f" `{action.metavar}`"
        shown = action.default not in (None, argparse.SUPPRESS, False) and not action.required
        choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
        rows.append(f"| {name} | {_value(action.default) if shown else ''} | {_cell((action.help or '') + choices)} |")
    return rows


def cli_reference() -> str:
    from hydra_core import cli

    registry = cli.commands()
    parser = cli.build_parser(registry)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    lines = []
    for name, command in registry.items():
        lines += [f"## `hydra-rlhf {name}`", ""]
        if command.config is not None:  # its docstring says what the stage does, after the command's name
            doc = " ".join((command.config.__doc__ or "").split()).partition(": ")[2]
            lines += [f"{doc[0].upper()}{doc[1:]} Its settings are the fields of `{command.config.__name__}` "
                      f"(`hydra_core/config/settings.py`): each is a flag, a key of a `--config` file and of a "
                      f"recipe's `{name}` section.", ""]
            lines += _stage_table(command.config) + [""]
            others = [a for a in subparsers[name]._actions if a.dest in ("config", "tracking_uri")]
            lines += ["Besides them:", "", *ARGUMENT_HEADER, *_argument_rows(others), ""]
        else:  # argparse has no public list of a parser's arguments
            lines += [command.help[0].upper() + command.help[1:] + ".", "", *ARGUMENT_HEADER,
                      *_argument_rows(subparsers[name]._actions), ""]
    return "\n".join(lines)


def pipeline_parameters() -> str:
    from pipelines.hydra_rlhf import parameter_help

    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {_value(default)} | {_cell(meaning)} |" for name, default, meaning in parameter_help()]
    return "\n".join(rows)


# README.md's links are the repository's, where the site's pages are under docs/
LANDING_LINKS = {"](docs/": "](", "](ARCHITECTURE.md)": "](architecture.md)"}


def landing() -> str:
    """README.md as the site's home page: written once, for the repository's front page."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for repository, site in LANDING_LINKS.items():
        text = text.replace(repository, site)
    return text


GENERATED = {"cli-reference": cli_reference, "pipeline-parameters": pipeline_parameters, "landing": landing}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def render(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r} "
                             f"(known: {', '.join(GENERATED)})")
        return GENERATED[name]()

    return MARKER.sub(render, markdown)

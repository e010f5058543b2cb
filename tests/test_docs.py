"""The documentation: the site builds with no broken link or missing page, the README stays a landing page,
every setting says what it means, and every `hydra-rlhf` command the pages show is one the CLI takes as
written (its flags, its pipeline parameters and their values, its recipe), short of running it. The code
blocks that do run are run by the tests of what they show (test_component_reuse, test_served_models)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.build import NAMES
from conftest import DOCS, ROOT, code_blocks
from hydra_core import cli
from hydra_core.config.fields import field_help
from hydra_core.config.settings import STAGE_CONFIGS, Placement

PAGES = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav's files, a snippet that
    names no file, or a generated section that fails, each fails the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 0, done.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert all(f"--{name.replace('_', '-')}" in reference for cls in STAGE_CONFIGS.values()
               for name in field_help(cls)), "the CLI reference lacks a stage's flag"
    assert "ppo_rollout_batch_size" in (tmp_path / "site" / "pipeline" / "parameters" / "index.html").read_text()


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_navigation():
    # the hooks' tags (!!python/name) need a loader that knows them; the nav is plain data
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    nav = _nav_pages(yaml.load((ROOT / "mkdocs.yml").read_text(), Loader)["nav"])
    assert sorted(nav) == PAGES


def test_the_readme_is_a_landing_page_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    [commands, *_] = code_blocks("README.md", "bash")
    assert "./setup.sh && .venv/bin/hydra-rlhf run" in commands
    assert "./setup.sh --vllm && .venv/bin/python -m pytest -q" in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./setup.sh --vllm" in ci and ".venv/bin/python -m pytest -q" in ci  # CI runs the README's test command


def test_the_pipeline_picture_shows_every_component():
    [picture, *_] = code_blocks("README.md", "mermaid")
    missing = [name for name in NAMES if name.replace("_", "-") not in picture]
    assert not missing, f"README's pipeline picture lacks {missing}"


@pytest.mark.parametrize("cls", [*STAGE_CONFIGS.values(), Placement], ids=lambda c: c.__name__)
def test_every_setting_says_what_it_means(cls):
    """A field's comment is its meaning in `--help`, the CLI reference and the pipeline's parameters."""
    silent = [name for name, meaning in field_help(cls).items() if not meaning]
    assert not silent, f"{cls.__name__}: give these fields a comment saying what they mean: {silent}"


def _without_comments(block: str) -> str:
    """The block with each comment cut off: an unquoted `#` at a word's start to the end of its line."""
    kept, quote, comment = [], "", False
    for i, char in enumerate(block):
        if comment:
            comment = char != "\n"
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or block[i - 1].isspace()):
            comment = True
        if not comment:
            kept.append(char)
    return "".join(kept)


def _commands(block: str) -> list[list[str]]:
    """The `hydra-rlhf` commands of a shell block, each as its words and the processes a launcher starts: the shell's quoting, lines joined by
    `\\`, commands apart at a new line, `&&`, `|`, `;` or `&`, variables set before one cut off."""
    lex = shlex.shlex(_without_comments(block).replace("\\\n", " "), posix=True, punctuation_chars="();<>|&\n")
    lex.whitespace, lex.whitespace_split = " \t", True
    commands, words = [], []
    for token in [*lex, "\n"]:
        if set(token) <= set("();<>|&\n"):
            commands.append(words)
            words = []
        elif words or not re.fullmatch(r"[A-Z_]+=.*", token):
            words.append(token)
    found = []
    for words in commands:
        if words and Path(words[0]).name == "hydra-rlhf":
            found.append((words[1:], 1))
        elif "hydra_core.cli" in words:  # torchrun / accelerate launch ... -m hydra_core.cli COMMAND
            launcher = words[:words.index("hydra_core.cli")]
            processes = next((int(launcher[i + 1]) for i, w in enumerate(launcher)
                              if w in ("--nproc_per_node", "--nproc-per-node", "--num_processes")), 1)
            found.append((words[words.index("hydra_core.cli") + 1:], processes))
    return found


DOCUMENTED = [(page, words, processes) for page in ["README.md", *PAGES] for block in code_blocks(page, "bash")
              for words, processes in _commands(block)]


def test_the_docs_show_the_commands():
    assert len(DOCUMENTED) > 40 and {words[0] for _, words, _ in DOCUMENTED} >= {
        "init-model", "prepare", "sft", "ppo", "eval", "run", "compile", "submit"}


def _files_shown(page: str) -> dict[str, str]:
    """The files a page writes out for its commands: a yaml block whose first line is `# <file name>`."""
    return {m.group(1): block for block in code_blocks(page, "yaml") if (m := re.match(r"# (\S+)\n", block))}


@pytest.mark.parametrize("page,words,processes", DOCUMENTED,
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60] if isinstance(v, list) else "")
def test_a_documented_command_is_taken_as_written(page, words, processes, tmp_path, monkeypatch, capsys):
    """Its flags parse; a stage command's settings build into its config (with the --config file when it is
    in the repository or the page shows it; one an earlier command writes is left out), as many processes
    as its launcher starts; a pipeline command's parameters and recipe pass the check the command itself
    makes before it starts."""
    from pipelines.arguments import pipeline_arguments

    registry = cli.commands()
    parser = cli.build_parser(registry)
    if "--help" in words:
        with pytest.raises(SystemExit) as done:
            parser.parse_args(words)
        assert done.value.code == 0
        return
    try:
        args = parser.parse_args(words)
    except SystemExit:
        pytest.fail(f"{page}: hydra-rlhf {shlex.join(words)}: {capsys.readouterr().err.strip()}")
    command = registry[args.command]
    monkeypatch.chdir(ROOT)
    if getattr(args, "config", None) in _files_shown(page):
        shown = tmp_path / args.config
        shown.write_text(_files_shown(page)[args.config])
        args.config = str(shown)
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    if command.config is not None:
        if args.config and not Path(args.config).is_file():
            args.config = None
        cli.config_from_args(command.config, args)
    elif args.command in ("run", "compile", "submit"):
        pipeline_arguments(args.param, args.config, getattr(args, "stand_in", False))

"""`hydra-rlhf`: every command in one registry.

The library's own commands are one per stage (each flag a field of that stage's config, `--config
FILE` to start from a saved config or a recipe, flags on top) and `sync-tracking`. Commands of other
installed packages join the same registry through the `hydra_rlhf.commands` entry point group: the
pipeline's `compile`, `submit` and `run` come from `pipelines.commands` that way, so this module
imports no pipeline code and no kfp.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from hydra_core.config.fields import build, field_docs, field_names, field_type, flag
from hydra_core.config.files import config_file_name, load_config
from hydra_core.config.settings import (ALGORITHMS, DataConfig, EvalConfig, ExportConfig, ModelInitConfig, PPOConfig,
                                        PPO_VARIANTS, SFTConfig)
from hydra_core.tracking.runs import Tracking

PLUGIN_GROUP = "hydra_rlhf.commands"
DESCRIPTION = ("Memory-efficient RLHF (Hydra-SFT, Hydra-PPO): a command per stage, and the Kubeflow pipeline "
               "that runs them all. `hydra-rlhf COMMAND --help` lists a command's settings.")


@dataclass(frozen=True)
class Command:
    """One `hydra-rlhf` subcommand: its arguments and what it does with them."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    config: type | None = None  # a stage command's config class, whose fields are its flags


# --- the stage commands: flags from the config, --config FILE underneath ----------------------


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """`--config FILE` and one `--field-name` per field of `cls`. Values stay text here: `config.build`
    types and checks them, so a bad value is named the same way from every source."""
    parser.add_argument("--config", metavar="FILE", help=f"start from this config: a saved "
                        f"{config_file_name(cls)}, a flat YAML/JSON file of these settings, or a recipe with a "
                        f"'{cls.STAGE}' section; the flags below override it")
    for doc in field_docs(cls):
        shown = f"{doc.allowed}; " if doc.allowed else ""
        shown += f"default: {doc.default if doc.kind == 'choice' else repr(doc.default)}"
        tp, _ = field_type(cls, doc.name)
        extra = {"nargs": "?", "const": "true", "metavar": "BOOL"} if tp is bool else {"metavar": tp.__name__.upper()}
        meaning = f"{doc.meaning} " if doc.meaning else ""
        parser.add_argument(doc.flag, dest=doc.name, default=argparse.SUPPRESS, help=f"{meaning}({shown})", **extra)


def config_from_args(cls, args: argparse.Namespace):
    """The config of `--config FILE` (if given) with the flags that were given on top."""
    given = {name: value for name, value in vars(args).items() if name in field_names(cls)}
    if args.config:
        return load_config(cls, args.config, [(given, flag)], unset=flag)
    return build(cls, (given, flag), unset=flag)


def stage_command(cls, handler: Callable, help_text: str, tracked: bool = True) -> Command:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_flags(parser, cls)
        if tracked:
            parser.add_argument("--tracking-uri", default="", help="log to this MLflow tracking URI "
                                "(default: $MLFLOW_TRACKING_URI; no MLflow logging when neither is set)")

    def run(args: argparse.Namespace) -> None:
        handler(config_from_args(cls, args), Tracking(getattr(args, "tracking_uri", "")))

    return Command(cls.STAGE, help_text, add_arguments, run, cls)


def _init_model(cfg: ModelInitConfig, _tracking: Tracking) -> None:
    from hydra_core import stages

    print(f"base model written to {stages.init_model(cfg)}")


def _prepare(cfg: DataConfig, tracking: Tracking) -> None:
    from hydra_core import stages

    summary = stages.prepare_data(cfg, tracking)
    print(json.dumps({"output_dir": cfg.output_dir, "counts": summary.get("counts"),
                      "skipped": summary.get("skipped")}, indent=2))


def _sft(cfg: SFTConfig, tracking: Tracking) -> None:
    from hydra_core import stages

    summary = stages.sft(cfg, tracking)
    if not summary:  # not the main process of a distributed run
        return
    if "eval/reward_accuracy" in summary:
        print(f"held-out reward pairwise accuracy: {summary['eval/reward_accuracy']:.4f}")
    if "eval/gold_accuracy" in summary:
        print(f"held-out greedy gold accuracy: {summary['eval/gold_accuracy']:.4f}")
    precision = "bf16 autocast" if summary["mixed_precision"] == "bf16" else "fp32"
    print(f"{summary['steps']} steps in {summary['train_seconds']:.0f} s ({precision})")
    print(f"model written to {cfg.output_dir}")


def _ppo(cfg: PPOConfig, tracking: Tracking) -> None:
    from hydra_core import stages

    summary = stages.ppo(cfg, tracking)
    if not summary:  # not the main process of a data-parallel run
        return
    for key in ("eval/gold_accuracy_before", "eval/gold_accuracy"):
        if key in summary:
            print(f"{key}: {summary[key]:.4f}")
    print(f"policy written to {cfg.output_dir}")


def _eval(cfg: EvalConfig, tracking: Tracking) -> None:
    from hydra_core import stages

    print(stages.evaluate(cfg, tracking)["headline"])
    print(f"report written to {cfg.output_dir}")


def _export(cfg: ExportConfig, _tracking: Tracking) -> None:
    from hydra_core import stages

    print(f"plain causal LM written to {stages.export(cfg)}")


def _add_sync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pending_dir", help="a stage output's mlflow_pending folder")
    parser.add_argument("--tracking-uri", default="", help="send there (default: the URI the records were meant for)")


def _sync(args: argparse.Namespace) -> None:
    from hydra_core.tracking.mlflow_tracker import replay

    print(f"sent {args.pending_dir} to MLflow run {replay(args.pending_dir, args.tracking_uri)}")


COMMANDS = [
    stage_command(ModelInitConfig, _init_model, "build a small random-init base model and tokenizer", tracked=False),
    stage_command(DataConfig, _prepare, "load, validate, split and write preference data"),
    stage_command(SFTConfig, _sft, "train SFT, a reward model, or Hydra-SFT (--mode sft|rm|hydra)"),
    stage_command(PPOConfig, _ppo, f"RL from an SFT / Hydra-SFT model (--variant {'|'.join(PPO_VARIANTS)}, "
                                     f"--algorithm {'|'.join(ALGORITHMS)})"),
    stage_command(EvalConfig, _eval, "judge a candidate policy against a baseline, pairwise"),
    stage_command(ExportConfig, _export, "write a Hydra directory's policy as a plain HF causal-LM directory",
                  tracked=False),
    Command("sync-tracking", "send a stage's pending MLflow records (kept while MLflow was unreachable)",
            _add_sync, _sync),
]


def commands() -> dict[str, Command]:
    """This module's commands and those of installed plugins, by name."""
    found = {c.name: c for c in COMMANDS}
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            plugin = point.load()
        except ImportError as e:  # a broken plugin must not take the stage commands down with it
            print(f"hydra-rlhf: the commands of {point.value} could not be loaded ({e})", file=sys.stderr)
            continue
        for command in plugin:
            if command.name in found:
                raise RuntimeError(f"{point.value} registers '{command.name}', which is already a command")
            found[command.name] = command
    return found


def build_parser(registry: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydra-rlhf", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (registry or commands()).values():
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    registry = commands()
    args = build_parser(registry).parse_args(argv)
    try:
        registry[args.command].run(args)
    except (ValueError, FileNotFoundError) as e:  # bad input or settings (DataError, ConfigError are ValueErrors)
        print(f"hydra-rlhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:  # a server that does not answer (MLflow's is TrackingUnreachable, KFP's)
        print(f"hydra-rlhf {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

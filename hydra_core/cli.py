"""`hydra-rlhf`: one subcommand per stage, each flag a field of that stage's config."""

from __future__ import annotations

import argparse
import json
import sys

from hydra_core import config as C
from hydra_core.tracking.stages import Tracking


def _cmd_init_model(cfg: C.ModelInitConfig, _tracking: Tracking) -> None:
    from hydra_core.models.presets import build_base_model

    print(f"base model written to {build_base_model(cfg)}")


def _cmd_prepare(cfg: C.DataConfig, tracking: Tracking) -> None:
    from hydra_core.tracking.stages import prepare_data

    summary = prepare_data(cfg, tracking)
    print(json.dumps({"output_dir": cfg.output_dir, "counts": summary.get("counts"),
                      "skipped": summary.get("skipped")}, indent=2))


def _cmd_sft(cfg: C.TrainConfig, tracking: Tracking) -> None:
    from hydra_core.tracking.stages import sft

    summary = sft(cfg, tracking)
    if not summary:  # not the main process of a distributed run
        return
    if "eval/reward_accuracy" in summary:
        print(f"held-out reward pairwise accuracy: {summary['eval/reward_accuracy']:.4f}")
    if "eval/gold_accuracy" in summary:
        print(f"held-out greedy gold accuracy: {summary['eval/gold_accuracy']:.4f}")
    precision = "bf16 autocast" if summary["mixed_precision"] == "bf16" else "fp32"
    print(f"{summary['steps']} steps in {summary['train_seconds']:.0f} s ({precision})")
    print(f"model written to {cfg.output_dir}")


def _cmd_ppo(cfg: C.PPOConfig, tracking: Tracking) -> None:
    from hydra_core.tracking.stages import ppo

    summary = ppo(cfg, tracking)
    for key in ("eval/gold_accuracy_before", "eval/gold_accuracy"):
        if key in summary:
            print(f"{key}: {summary[key]:.4f}")
    print(f"policy written to {cfg.output_dir}")


def _cmd_eval(cfg: C.EvalConfig, tracking: Tracking) -> None:
    from hydra_core.tracking.stages import evaluate

    result = evaluate(cfg, tracking)
    print(result["headline"])
    print(f"report written to {cfg.output_dir}")


def _cmd_export(cfg: C.ExportConfig, _tracking: Tracking) -> None:
    from hydra_core.models.hydra import load_hydra

    model = load_hydra(cfg.model, heads=(), trust_remote_code=cfg.trust_remote_code)
    print(f"plain causal LM written to {model.export_policy(cfg.output_dir)}")


# name -> (config class, handler, help)
COMMANDS = {
    "init-model": (C.ModelInitConfig, _cmd_init_model, "build a small random-init base model and tokenizer"),
    "prepare": (C.DataConfig, _cmd_prepare, "load, validate, split and write preference data"),
    "sft": (C.TrainConfig, _cmd_sft, "train SFT, a reward model, or Hydra-SFT (--mode sft|rm|hydra)"),
    "ppo": (C.PPOConfig, _cmd_ppo, "PPO from an SFT / Hydra-SFT model (--variant full|lora|lora-dynamic|j-hydra|hydra)"),
    "eval": (C.EvalConfig, _cmd_eval, "judge a candidate policy against a baseline, pairwise"),
    "export": (C.ExportConfig, _cmd_export, "write a Hydra directory's policy as a plain HF causal-LM directory"),
}


TRACKED = ("prepare", "sft", "ppo", "eval")  # the stages that log to MLflow when given a tracking URI


def build_parser() -> argparse.ArgumentParser:
    from pipelines.commands import COMMANDS as TOOLS

    parser = argparse.ArgumentParser(prog="hydra-rlhf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        C.add_config_args(p, cls)
        if name in TRACKED:
            p.add_argument("--tracking-uri", default="", help="log to this MLflow tracking URI "
                           "(default: $MLFLOW_TRACKING_URI; no MLflow logging when neither is set)")
    for name, (add_arguments, _, help_text) in TOOLS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.commands import COMMANDS as TOOLS

    args = build_parser().parse_args(argv)
    if args.command in TOOLS:
        try:
            TOOLS[args.command][1](args)
        except (ValueError, FileNotFoundError) as e:
            print(f"hydra-rlhf {args.command}: error: {e}", file=sys.stderr)
            return 2
        return 0
    cls, handler, _ = COMMANDS[args.command]
    try:
        handler(C.from_args(cls, args), Tracking(getattr(args, "tracking_uri", "")))
    except (ValueError, FileNotFoundError) as e:  # bad input or settings (DataError is a ValueError)
        print(f"hydra-rlhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`hydra-rlhf`: one subcommand per stage, each flag a field of that stage's config."""

from __future__ import annotations

import argparse
import json
import sys

from hydra_core import config as C
from hydra_core.data.schema import DataError
from hydra_core.eval.judges import JudgeConfigError


def _cmd_init_model(cfg: C.ModelInitConfig) -> None:
    from hydra_core.models.presets import build_base_model

    print(f"base model written to {build_base_model(cfg)}")


def _cmd_prepare(cfg: C.DataConfig) -> None:
    from hydra_core.data.prepare import prepare

    summary = prepare(cfg)
    print(json.dumps({"output_dir": cfg.output_dir, "counts": summary.get("counts"),
                      "skipped": summary.get("skipped")}, indent=2))


def _cmd_sft(cfg: C.TrainConfig) -> None:
    from hydra_core.train.trainer import train

    summary = train(cfg)
    if not summary:  # not the main process of a distributed run
        return
    if "eval/reward_accuracy" in summary:
        print(f"held-out reward pairwise accuracy: {summary['eval/reward_accuracy']:.4f}")
    if "eval/gold_accuracy" in summary:
        print(f"held-out greedy gold accuracy: {summary['eval/gold_accuracy']:.4f}")
    print(f"model written to {cfg.output_dir}")


def _cmd_ppo(cfg: C.PPOConfig) -> None:
    from hydra_core.ppo.trainer import run_ppo

    summary = run_ppo(cfg)
    for key in ("eval/gold_accuracy_before", "eval/gold_accuracy"):
        if key in summary:
            print(f"{key}: {summary[key]:.4f}")
    print(f"policy written to {cfg.output_dir}")


def _cmd_eval(cfg: C.EvalConfig) -> None:
    from hydra_core.eval.runner import run_eval

    result = run_eval(cfg)
    print(result["headline"])
    print(f"report written to {cfg.output_dir}")


# name -> (config class, handler, help)
COMMANDS = {
    "init-model": (C.ModelInitConfig, _cmd_init_model, "build a small random-init base model and tokenizer"),
    "prepare": (C.DataConfig, _cmd_prepare, "load, validate, split and write preference data"),
    "sft": (C.TrainConfig, _cmd_sft, "train SFT, a reward model, or Hydra-SFT (--mode sft|rm|hydra)"),
    "ppo": (C.PPOConfig, _cmd_ppo, "PPO from an SFT / Hydra-SFT model (--variant full|lora|lora-dynamic|j-hydra|hydra)"),
    "eval": (C.EvalConfig, _cmd_eval, "judge a candidate policy against a baseline, pairwise"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydra-rlhf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        C.add_config_args(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cls, handler, _ = COMMANDS[args.command]
    try:
        handler(C.from_args(cls, args))
    except (DataError, FileNotFoundError, JudgeConfigError) as e:
        print(f"hydra-rlhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline arguments from the command line: `NAME=VALUE` pairs, typed by the pipeline's parameters.

Lists and dicts are JSON (`ppo_config={"eval_every": 4}`); a list of strings may also be written
comma-separated (`ppo_variants=lora,hydra`). Values a stage config restricts to a few choices are
checked here, before anything runs.
"""

import json
import typing
from typing import get_args

from hydra_core.config import DATA_FORMATS, PPO_VARIANTS, EvalConfig, ModelInitConfig

CHOICES = {
    "data_format": DATA_FORMATS,
    "ppo_variants": PPO_VARIANTS,
    "judge": get_args(typing.get_type_hints(EvalConfig)["judge"]),
    "base_preset": get_args(typing.get_type_hints(ModelInitConfig)["preset"]),
}


class ArgumentError(ValueError):
    pass


def _parse(name: str, kind: str, text: str):
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind == "List":
            if text.lstrip().startswith("["):
                value = json.loads(text)
            else:
                value = [item.strip() for item in text.split(",") if item.strip()]
            if not isinstance(value, list):
                raise ValueError
            return value
        if kind == "Dict":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        raise ArgumentError(f"pipeline parameter {name} expects {kind.lower()}, got {text!r}") from None
    return text


def parse_arguments(pipeline, pairs: list[str]) -> dict:
    """{name: typed value} from `NAME=VALUE` strings; unknown names and bad values are errors."""
    inputs = pipeline.component_spec.inputs
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ArgumentError(f"expected NAME=VALUE, got {pair!r}")
        if name not in inputs:
            raise ArgumentError(f"unknown pipeline parameter {name!r}; the parameters are: {', '.join(sorted(inputs))}")
        # kfp spells types 'Integer', 'Dict', 'typing.List[str]', ...
        kind = inputs[name].type.removeprefix("typing.").split("[")[0].capitalize()
        out[name] = _parse(name, kind, text)
    check_choices(out)
    return out


def check_choices(arguments: dict) -> None:
    for name, allowed in CHOICES.items():
        if name not in arguments:
            continue
        values = arguments[name] if isinstance(arguments[name], list) else [arguments[name]]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ArgumentError(f"pipeline parameter {name}: {bad or 'an empty list'} is not allowed; "
                                f"choose from {list(allowed)}")

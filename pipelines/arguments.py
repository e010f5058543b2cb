"""Pipeline arguments from the command line (`NAME=VALUE`) and from recipe files, checked before
anything runs.

A value is typed by its pipeline parameter (lists and dicts are JSON; a list of strings may also be
comma-separated: `ppo_variants=lora,hydra`) through `hydra_core.config`'s one coercion path. Then
every stage's config is assembled from the arguments as the pipeline will assemble it, and
checked there, so a value a stage would refuse fails here with the parameter's name, not in the
fourth step of a run.
"""

from __future__ import annotations

from pathlib import Path

from hydra_core.config.fields import ConfigError, coerce, coerce_value
from hydra_core.config.files import RECIPE_NOTES, file_namer, is_recipe, read_config_file
from hydra_core.config.parameters import LABEL_FIELDS, check_parameters
from hydra_core.config.settings import MODEL_PRESETS, Placement, STAGE_CONFIGS, run_label
from pipelines.hydra_rlhf import (CONFIG_PARAMETERS, LABEL_PARAMETERS, PLACEMENTS, RULES, SHARED, STAGE_PARAMETERS,
                                  WIRED, parameters)

TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "List": list, "Dict": dict}


class ArgumentError(ValueError):
    pass


def _kind(name: str) -> type:
    # kfp spells types 'Integer', 'Dict', 'typing.List[str]', ...
    return TYPES[parameters()[name].type.removeprefix("typing.").split("[")[0].capitalize()]


def _typed(name: str, value):
    if name not in parameters():
        raise ArgumentError(f"unknown pipeline parameter {name!r}; the parameters are: "
                            f"{', '.join(sorted(parameters()))}")
    try:
        return coerce_value(value, _kind(name))
    except ValueError as e:
        raise ArgumentError(f"pipeline parameter {name}: {e}") from None


def parse_arguments(pairs: list[str]) -> dict:
    """{name: typed value} from `NAME=VALUE` strings; unknown names and bad values are errors."""
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ArgumentError(f"expected NAME=VALUE, got {pair!r}")
        name = name.strip().replace("-", "_")
        out[name] = _typed(name, text)
    return out


def recipe_arguments(path: str | Path) -> tuple[dict, list[str]]:
    """The pipeline arguments of a recipe file, and the settings in it that the pipeline sets itself.

    A recipe has a section per stage (`prepare`, `init-model`, `sft`, `ppo`, `eval`) of that stage's
    config fields, and `pipeline` for the pipeline's parameters, which win over the stage sections.
    A field with a pipeline parameter of its own goes there; any other goes in the stage's
    `*_config` parameter. The `ppo` section's variant and algorithm make one run label
    (`ppo: {variant: lora, algorithm: grpo}` is `ppo_variants: [lora-grpo]`).
    """
    data = read_config_file(path)
    if not is_recipe(data):
        raise ArgumentError(f"{path}: not a recipe; a recipe has a section per stage "
                            f"({', '.join(STAGE_CONFIGS)}) and 'pipeline'")
    by_field = {target: name for name, target in STAGE_PARAMETERS.items()}
    config_parameter = {stage: name for name, stage in CONFIG_PARAMETERS.items()}
    label_parameter = {STAGE_PARAMETERS[name][0]: name for name in LABEL_PARAMETERS}  # ppo: ppo_variants
    arguments: dict = {}
    wired: list[str] = []
    # the pipeline's own section last, whatever the file's order: a parameter set there wins
    for section in sorted((s for s in data if s not in RECIPE_NOTES), key=lambda name: name == "pipeline"):
        for field, value in (data[section] or {}).items():
            if section == "pipeline":
                arguments[field] = _typed(field, value)
                continue
            value = coerce(STAGE_CONFIGS[section], field, value, file_namer(path, section))
            if field in WIRED.get(section, ()):
                wired.append(f"{section}.{field}")
            elif section in SHARED.get(field, ()):
                if arguments.setdefault(field, value) != value:
                    raise ArgumentError(f"{path}: {section}.{field} is {value!r} but another stage's is "
                                        f"{arguments[field]!r}; the pipeline gives every stage one {field}")
            elif field in LABEL_FIELDS and section in label_parameter:
                settings = {f: data[section].get(f, getattr(STAGE_CONFIGS[section], f)) for f in LABEL_FIELDS}
                arguments[label_parameter[section]] = [run_label(settings["variant"], settings["algorithm"])]
            elif (section, field) in by_field:
                name = by_field[(section, field)]
                arguments[name] = [value] if _kind(name) is list else value
            elif section in config_parameter:
                arguments.setdefault(config_parameter[section], {})[field] = value
            else:
                raise ArgumentError(f"{path}: {section}.{field}: the pipeline does not take this setting")
    return arguments, wired


# `--stand-in`: every stage runs, on a handful of records (a quarter of their prompts held out, so that eval has
# several), for a step or two
STAND_IN_BUDGET = {"max_records": 0, "eval_fraction": 0.25, "sft_steps": 2, "sft_demo_batch_size": 4,
                   "sft_pair_batch_size": 2, "ppo_steps": 2, "ppo_rollout_batch_size": 4, "ppo_mini_batch_size": 4,
                   "eval_max_prompts": 4}


def stand_in_arguments(path: str | Path) -> dict:
    """The arguments that run a recipe on its stand-in (its `stand_in` section): a random-init model of the
    recipe's architecture in place of its hub model, the dataset file in place of its hub dataset, and
    STAND_IN_BUDGET, so that every step of the recipe runs on a laptop in a minute or two."""
    data = read_config_file(path)
    stand_in = data.get("stand_in") if is_recipe(data) else None
    if not stand_in or "preset" not in stand_in:
        raise ArgumentError(f"{path}: --stand-in needs the recipe's stand_in section, with its preset (a random-init "
                            f"model of the recipe's architecture: {', '.join(MODEL_PRESETS)}) and, unless the task "
                            "is the embedded one, a dataset file in its format")
    # a path relative to the recipe's folder, wherever the run starts; a file's rows are read as they are, so the
    # hub dataset's split, config and folder do not apply to it
    file = (Path(path).parent / stand_in["dataset"]).resolve() if stand_in.get("dataset") else None
    if file is not None and not file.is_file():
        raise ArgumentError(f"{path}: stand_in.dataset: {file}: no such file")
    dataset = {"dataset": str(file), "dataset_split": "train"} if file else {}
    return {"base_model": "", "base_preset": stand_in["preset"], **STAND_IN_BUDGET, **dataset}


def merge(*layers: dict) -> dict:
    """Later arguments win; a `*_config` dict is merged key by key (a per-label settings table replaces)."""
    out: dict = {}
    for layer in layers:
        for name, value in layer.items():
            out[name] = {**out.get(name, {}), **value} if name in CONFIG_PARAMETERS else value
    return out


def check(arguments: dict) -> None:
    """Every stage's config as the pipeline will build it from `arguments` (the rest at the
    pipeline's defaults), checked: the check the pipeline's first step makes, made before it runs."""
    values = {name: arguments.get(name, spec.default) for name, spec in parameters().items()}
    check_parameters(values, RULES)
    ui = values.get("kfp_ui_url", "")
    if ui and not ui.startswith(("http://", "https://")):  # the parent run's link to the KFP run is built from it
        raise ConfigError(f"pipeline parameter kfp_ui_url {ui!r}: expected the KFP UI's http(s) address")


def check_shared_storage(arguments: dict, shared: bool, remedy: str) -> None:
    """A training step on more than one node or GPU trains in a Kubeflow Trainer TrainJob, whose nodes need storage
    they share with the step (`shared`: whether the run has it); without it, a one-line error naming the parameter
    and `remedy`, before anything runs."""
    if shared:
        return
    for stage, fields in PLACEMENTS.items():
        values = {field: arguments.get(name, parameters()[name].default) for field, name in fields.items()}
        if Placement(**values).distributed:
            field = "num_nodes" if values["num_nodes"] > 1 else "gpus_per_node"
            raise ArgumentError(f"pipeline parameter {fields[field]}={values[field]}: the {stage} steps on more than "
                                f"one node or GPU train in a Kubeflow Trainer TrainJob, whose nodes need storage "
                                f"they share with the step; {remedy}")


def pipeline_arguments(pairs: list[str], recipe: str | None = None, stand_in: bool = False) -> tuple[dict, list[str]]:
    """The checked arguments of a recipe file (if any; on its stand-in with `stand_in`) with `NAME=VALUE` pairs
    on top, and the recipe's settings the pipeline sets itself (left out)."""
    if stand_in and not recipe:
        raise ArgumentError("--stand-in runs a recipe on its stand-in: give the recipe with --config")
    from_recipe, wired = recipe_arguments(recipe) if recipe else ({}, [])
    arguments = merge(from_recipe, stand_in_arguments(recipe) if stand_in else {}, parse_arguments(pairs))
    check(arguments)
    return arguments, wired

"""A Kubeflow component's and a pipeline's parameters as stage configs: a component's parameters and its
`config` dict (`from_parameters`), a run label with its per-label settings table (`label_config`), and the
check of a whole pipeline's parameters before any step runs (`check_parameters`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from hydra_core.config.fields import ConfigError, Namer, build, coerce
from hydra_core.config.settings import ALGORITHMS, PPO_VARIANTS, STAGE_CONFIGS, Placement, parse_run_label, run_label


def from_parameters(cls, overrides: Mapping[str, Any] | None = None, **parameters):
    """A config from a Kubeflow component's parameters (None keeps a field's default) and its
    `config` dict of any other fields; a field given both ways is an error."""
    given = {k: v for k, v in parameters.items() if v is not None}
    overrides = dict(overrides or {})
    twice = sorted(set(given) & set(overrides))
    if twice:
        raise ConfigError(f"{', '.join(twice)}: given both as a component parameter and in its `config`")
    return build(cls, (given, lambda n: f"parameter {n}"), (overrides, lambda n: f"config[{n!r}]"),
                 unset=lambda n: f"config[{n!r}]")



# The layouts that, in the paper's experiment, start from a separately trained SFT model and reward model:
# they hold the reward model apart from the policy (ppo/roles.py; a test checks the two agree). j-hydra
# and hydra start from Hydra-SFT, whose one backbone is policy, reference and reward model at once.
SEPARATE_MODEL_VARIANTS = ("full", "lora", "lora-dynamic")
# what a run label sets; a per-label settings table may set any other field of the stage but the wired ones
LABEL_FIELDS = ("variant", "algorithm")


def uses_separate_models(label: str) -> bool:
    """Whether the run label's layout starts from a separate SFT model and reward model (see above)."""
    return parse_run_label(label)["variant"] in SEPARATE_MODEL_VARIANTS


def _table_key(key: str) -> tuple[int, str]:
    """A per-label settings table's key: its rank (an algorithm's entry 0, a layout's 1, a label's 2: the
    most specific wins) and its normal form; ValueError for anything else."""
    if key in ALGORITHMS:
        return 0, key
    if key in PPO_VARIANTS:
        return 1, key
    parsed = parse_run_label(key)  # raises for text that is not a label
    return 2, run_label(parsed["variant"], parsed["algorithm"])


def check_label_table(cls, table: Any, name: str, refused: Iterable[str] = ()) -> None:
    """A per-label settings table: {key: {field: value}}, a key being an algorithm (`grpo`: every layout),
    a layout (`full`: every algorithm on it) or a run label (`lora-grpo`); the values coerced to `cls`'s
    fields. `name` is how an error names the table; `refused` are fields it may not set."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: expected an object of run labels, got {table!r}")
    refused = {*LABEL_FIELDS, *refused}
    for key, settings in table.items():
        try:
            _table_key(key)
        except ValueError:
            raise ConfigError(f"{name}: {key!r} is not an algorithm ({', '.join(ALGORITHMS)}), a layout "
                              f"({', '.join(PPO_VARIANTS)}) or a run label such as hydra-grpo") from None
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{name}[{key!r}]: expected an object of {cls.STAGE} settings, got {settings!r}")
        for field, value in settings.items():
            if field in refused:
                why = "the run label sets it" if field in LABEL_FIELDS else "the pipeline sets it"
                raise ConfigError(f"{name}[{key!r}][{field!r}]: a label's settings cannot hold it; {why}")
            coerce(cls, field, value, lambda f: f"{name}[{key!r}][{f!r}]")


def label_layers(label: str, table: Mapping[str, Mapping], label_name: str, table_name: str) -> list:
    """The `build` layers a run label gives a config: its variant and algorithm, then the entries of
    the per-label settings `table` that apply to it, its algorithm's, then its layout's, then its own
    (the most specific wins). Errors name the label by `label_name`, an entry by `table_name`."""
    try:
        parsed = parse_run_label(label)
    except ValueError as e:
        raise ConfigError(f"{label_name}: {e}") from None
    own = run_label(parsed["variant"], parsed["algorithm"])
    applies = {0: parsed["algorithm"], 1: parsed["variant"], 2: own}
    entries = sorted((rank, key) for key in table for rank, normal in [_table_key(key)] if applies[rank] == normal)
    return [(parsed, lambda _: label_name)] + [
        (table[key], lambda f, key=key: f"{table_name}[{key!r}][{f!r}]") for _, key in entries]


def label_config(cls, label: str, table: Mapping[str, Mapping] | None = None,
                 overrides: Mapping[str, Any] | None = None, refused: Iterable[str] = (), **parameters):
    """`from_parameters` for a run label (a Kubeflow component's `variant` parameter): its parameters
    (None keeps a field's default), then the label's layers (`label_layers`: the entries of `table`,
    the component's per-label settings, that apply to it; they may not set the `refused` fields), then
    its `config` dict of other fields."""
    table = dict(table or {})
    check_label_table(cls, table, "parameter variant_config", refused)
    given = {k: v for k, v in parameters.items() if v is not None}
    overrides = dict(overrides or {})
    twice = sorted(set(given) & set(overrides))
    if twice:
        raise ConfigError(f"{', '.join(twice)}: given both as a component parameter and in its `config`")
    for field in set(overrides) & set(LABEL_FIELDS):
        raise ConfigError(f"config[{field!r}]: the run label (parameter variant, e.g. hydra-grpo) sets it")
    return build(cls, (given, lambda n: f"parameter {n}"),
                 *label_layers(label, table, f"parameter variant {label!r}", "parameter variant_config"),
                 (overrides, lambda n: f"config[{n!r}]"), unset=lambda n: f"config[{n!r}]")


def check_parameters(values: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
    """Build every stage's config from a pipeline's parameter `values` as the pipeline assembles
    them, and check it; an error names the parameter that set the bad value.

    `rules` says how (plain JSON, so a pipeline step can receive it): `fields` maps a parameter to
    the (stage, field) it sets, `configs` a `*_config` parameter to its stage, `wired` each stage's
    fields the pipeline sets itself, `shared` the parameters that set the field of their name in several
    stages (`seed`: every stage's) with those stages, `labels` a
    list parameter of run labels (`hydra`, `hydra-grpo`; it sets the stage's variant and algorithm)
    to the per-label settings table that goes with it (`check_label_table`), and `placements` each
    training stage's `Placement` fields to the parameters that set them. A stage's config is
    built from its own parameters, then a label's table entries, then its `*_config` parameter.
    """
    fields = {name: tuple(target) for name, target in rules["fields"].items()}
    configs, wired, shared = rules["configs"], rules["wired"], rules["shared"]

    def sets(stage: str) -> list[str]:  # the shared parameters that set a field of `stage`
        return [name for name, stages in shared.items() if stage in stages]
    labels = dict(rules.get("labels", {}))

    def named(parameter: str) -> Namer:
        return lambda _: f"pipeline parameter {parameter}"

    for name, stage in configs.items():
        for field in values[name]:
            if field in wired[stage]:
                raise ConfigError(f"pipeline parameter {name}: {field!r} is set by the pipeline itself")
            own = field if field in sets(stage) else next(
                (p for p, target in fields.items() if target == (stage, field)), None)
            label = next((p for p in labels if fields[p][0] == stage), None) if field in LABEL_FIELDS else None
            if label:
                raise ConfigError(f"pipeline parameter {name}: set {field!r} with the pipeline parameter {label}, "
                                  "whose run labels name a variant and an algorithm (hydra, hydra-grpo, lora-rloo)")
            if own:
                raise ConfigError(f"pipeline parameter {name}: set {field!r} with the pipeline parameter {own}")
    for name, table in labels.items():
        stage = fields[name][0]
        check_label_table(STAGE_CONFIGS[stage], values[table], f"pipeline parameter {table}",
                          refused=[*wired[stage], *sets(stage)])
    for config_name, stage in configs.items():
        owners = {field: n for n, (target, field) in fields.items() if target == stage}

        def unset(field: str, config_name=config_name, owners=owners) -> str:  # a field left at its default
            return f"pipeline parameter {owners[field] if field in owners else f'{config_name}[{field!r}]'}"

        layers = [({name: values[name]}, named(name)) for name in sets(stage)]
        builds: list[tuple[str, list]] = [("", [])]  # one config, or one per item of a list parameter
        for field, name in owners.items():
            value = values[name]
            if name == "base_model" and not value:  # "": a fresh random-init base_preset model
                continue
            if isinstance(value, list):
                if not value:
                    raise ConfigError(f"pipeline parameter {name}: the list is empty")
                if name in labels:  # run labels: each sets the variant and algorithm, and has its table entries
                    builds = [(f" (for the {name} item {item!r})", label_layers(
                        item, values[labels[name]], f"pipeline parameter {name}", f"pipeline parameter {labels[name]}"))
                        for item in value]
                else:
                    builds = [("", [({field: item}, named(name))]) for item in value]
            else:
                layers.append(({field: value}, named(name)))
        overrides = (values[config_name], lambda f, c=config_name: f"pipeline parameter {c}[{f!r}]")
        for item, extra in builds:
            try:
                build(STAGE_CONFIGS[stage], *layers, *extra, overrides, unset=unset)
            except ConfigError as e:
                raise ConfigError(f"{e}{item}") from None
    for name, (stage, field) in fields.items():
        if stage not in configs.values():  # a stage whose config the pipeline builds from this one parameter
            coerce(STAGE_CONFIGS[stage], field, values[name], named(name))
    for parameters in rules.get("placements", {}).values():  # {field: parameter} of each training step
        build(Placement, *(({field: values[name]}, named(name)) for field, name in parameters.items()))

"""Config files and recipes: the config a stage ran with (`save_config`), a JSON or YAML file read back
(`read_config_file`), a recipe's section per stage and its notes (`hub`, `stand_in`), and a stage's
config from a file with later layers on top (`load_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from hydra_core.config.fields import ConfigError, Namer, build, to_dict
from hydra_core.config.settings import MODEL_PRESETS, STAGE_CONFIGS



def config_file_name(cls) -> str:
    """Where a stage writes the config it ran with, in its output directory."""
    return f"{cls.STAGE.replace('-', '_')}_config.json"


def save_config(cfg, directory: str | Path) -> Path:
    """Write `cfg` as `<stage>_config.json`; `hydra-rlhf <stage> --config` reads it back."""
    path = Path(directory) / config_file_name(type(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": type(cfg).__name__, **to_dict(cfg)}, indent=2) + "\n", encoding="utf-8")
    return path


def read_config_file(path: str | Path) -> dict:
    """A JSON or YAML config file as a dict; a ConfigError naming the file if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a directory, not a' if path.is_dir() else 'no such'} config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:line {e.lineno}: malformed JSON ({e.msg})") from None
    except Exception as e:  # noqa: BLE001 - yaml's errors; their first line names the line
        raise ConfigError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if is_recipe(data):
        for section, settings in data.items():
            if not isinstance(settings, dict | None):
                raise ConfigError(f"{path}: section '{section}' must be a mapping of settings, "
                                  f"got {type(settings).__name__}")
        _check_recipe_notes(data, path)
    return data


# A recipe's sections that are no stage's settings: `hub` lists the hub ids the recipe downloads ({models: [...],
# datasets: [...]}); `stand_in` says what stands in for them on a machine without the hub or a GPU (`hydra-rlhf run
# --stand-in`): `preset`, a random-init model of the same architecture, and `dataset`, a file of a few records in
# the recipe's format, its path relative to the recipe's folder (the embedded default's arithmetic task needs none).
RECIPE_NOTES = {"hub": {"models": list, "datasets": list}, "stand_in": {"preset": str, "dataset": str}}


def _check_recipe_notes(data: Mapping, path) -> None:
    for section, fields in RECIPE_NOTES.items():
        for key, value in (data.get(section) or {}).items():
            if key not in fields:
                raise ConfigError(f"{path}: {section}.{key}: not a key of '{section}' (its keys: {', '.join(fields)})")
            wrong = not isinstance(value, fields[key]) or (fields[key] is list and
                                                           not all(isinstance(v, str) for v in value))
            if wrong:
                kind = "a list of hub ids" if fields[key] is list else "a string"
                raise ConfigError(f"{path}: {section}.{key}: expected {kind}, got {value!r}")
    preset = (data.get("stand_in") or {}).get("preset")
    if preset is not None and preset not in MODEL_PRESETS:
        raise ConfigError(f"{path}: stand_in.preset: {preset!r} is not one of {', '.join(MODEL_PRESETS)}")


def is_recipe(data: Mapping) -> bool:
    """A recipe has one section per stage (and `pipeline`, `hub`, `stand_in`); a stage's config file is flat."""
    return bool(data) and set(data) <= {*STAGE_CONFIGS, "pipeline", *RECIPE_NOTES}


def stage_settings(cls, data: Mapping, path: str | Path) -> dict:
    """The settings for `cls` in a config file's `data`: a saved `<stage>_config.json`, a flat
    mapping of fields, or a recipe's section for the stage."""
    if is_recipe(data):
        if cls.STAGE not in data:
            raise ConfigError(f"{path}: the recipe has no '{cls.STAGE}' section (it has: {', '.join(data)})")
        return dict(data[cls.STAGE] or {})
    data = dict(data)
    kind = data.pop("type", cls.__name__)
    if kind != cls.__name__:
        raise ConfigError(f"{path}: holds a {kind}, not the {cls.__name__} of 'hydra-rlhf {cls.STAGE}'")
    return data


def file_namer(path: str | Path, section: str = "") -> Namer:
    where = f"{path}: {section}." if section else f"{path}: "
    return lambda name: f"{where}{name}"


def load_config(cls, path: str | Path, overrides: Iterable[tuple[Mapping[str, Any], Namer]] = (),
                unset: Namer | None = None):
    """The `cls` config of file `path`, with later layers (e.g. command-line flags) on top."""
    data = read_config_file(path)
    section = cls.STAGE if is_recipe(data) else ""
    return build(cls, (stage_settings(cls, data, path), file_namer(path, section)), *overrides, unset=unset)

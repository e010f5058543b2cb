"""How settings become a config: a field's declaration (`setting`), its type and choices, text or a
value coerced to that type (`coerce`), layers of settings built into a config (`build`) and the checks of a
built config (`validate`).

Settings arrive as text (command-line flags, `NAME=VALUE` pipeline arguments) or as values (JSON or YAML
config files, Kubeflow component parameters). An error is one line that names the setting the way its
source does (a `Namer`): the flag, the file and key, or the pipeline parameter. Nothing here knows a stage:
the stages' configs are in `config.settings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any, Callable, Literal, Mapping, get_args, get_origin

Namer = Callable[[str], str]  # how an error names a field: "--steps", "recipe.yaml: sft.steps", ...


class ConfigError(ValueError):
    """A setting with a wrong type or value; the message names it as its source does."""


def setting(default, *, ge=None, gt=None, le=None, lt=None):
    """A field with its allowed range (`ge` <= value, `gt` < value, value <= `le`, value < `lt`),
    checked by `validate`."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def field_type(cls, name: str):
    """The field's type, and its choices when it is a Literal (else None)."""
    hint = typing.get_type_hints(cls)[name]
    if get_origin(hint) is Literal:
        return str, list(get_args(hint))
    return hint, None


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# --- coercion: text or value -> a field's type ------------------------------------------------

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_text(text: str, tp) -> Any:
    """A setting written as text (a flag, a NAME=VALUE argument, a YAML string) as a `tp`.

    Lists are JSON or comma-separated, dicts JSON. Raises ValueError saying what was expected.
    """
    if tp is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text.strip())
        except ValueError:
            raise ValueError(f"expected {'an integer' if tp is int else 'a number'}, got {text!r}") from None
    if tp in (list, dict):
        if tp is list and not text.lstrip().startswith("["):
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, tp):
            raise ValueError(f"expected a JSON {'list' if tp is list else 'object'}, got {text!r}")
        return value
    return text


def coerce_value(value: Any, tp, choices: list | None = None) -> Any:
    """`value` as a `tp` (a whole float passes for an int: JSON and Kubeflow send numbers as floats;
    text is parsed, since YAML reads `5e-4` as a string). Raises ValueError saying what was expected."""
    if isinstance(value, str) and tp is not str:
        value = parse_text(value, tp)
    elif tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, tp.__name__)
        raise ValueError(f"expected {expected}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, choices))}")
    return value


def coerce(cls, name: str, value: Any, namer: Namer) -> Any:
    """`value` for field `name` of `cls`; a ConfigError naming it by `namer` if it does not fit."""
    if name not in field_names(cls):
        near = difflib.get_close_matches(name, field_names(cls), n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"its settings: {', '.join(field_names(cls))}"
        raise ConfigError(f"{namer(name)}: 'hydra-rlhf {cls.STAGE}' has no such setting; {hint}")
    tp, choices = field_type(cls, name)
    try:
        return coerce_value(value, tp, choices)
    except ValueError as e:
        raise ConfigError(f"{namer(name)}: {e}") from None


def build(cls, *layers: tuple[Mapping[str, Any], Namer], unset: Namer | None = None):
    """A `cls` config from layers of settings, each `(values, namer)`; a later layer wins.

    Each value is coerced as its layer names it; the whole config is then validated, an error
    naming a field as the layer that set it does, and a field left at its default by `unset`.
    """
    values: dict[str, Any] = {}
    namers: dict[str, Namer] = {}
    for given, namer in layers:
        for name, value in given.items():
            values[name] = coerce(cls, name, value, namer)
            namers[name] = namer
    cfg = cls(**values)
    unset = unset or (lambda name: f"{cls.__name__}.{name}")
    validate(cfg, lambda name: namers.get(name, unset)(name))
    return cfg


_BOUNDS = {"ge": (lambda v, b: v >= b, "at least"), "gt": (lambda v, b: v > b, "more than"),
           "le": (lambda v, b: v <= b, "at most"), "lt": (lambda v, b: v < b, "less than")}


def bounds(cls, name: str) -> dict:
    """The range `setting` declared for field `name` ({} when it has none)."""
    return next(f.metadata.get("bounds", {}) for f in dataclasses.fields(cls) if f.name == name)


def describe_range(cls, name: str) -> str:
    """Field `name`'s range in words ("at least 1 and at most 4"; "" when it has none)."""
    return " and ".join(f"{_BOUNDS[kind][1]} {limit:g}" for kind, limit in bounds(cls, name).items())


def validate(cfg, namer: Namer) -> None:
    """Every field's choices and range, then the relations between fields (a config's `relations`);
    the first problem is a ConfigError naming the field by `namer`."""
    cls = type(cfg)
    for name in field_names(cls):
        value = getattr(cfg, name)
        _, choices = field_type(cls, name)
        if choices is not None and value not in choices:  # a config built directly, not through coerce
            raise ConfigError(f"{namer(name)}: {value!r} is not one of {', '.join(choices)}")
        allowed = bounds(cls, name)
        if allowed and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ConfigError(f"{namer(name)}: {value!r} is not a finite number")
        for kind, limit in allowed.items():
            if not _BOUNDS[kind][0](value, limit):
                raise ConfigError(f"{namer(name)}: {value:g} is out of range; it must be {describe_range(cls, name)}")
    for name, problem in getattr(cfg, "relations", lambda _: ())(namer):
        raise ConfigError(f"{namer(name)}: {problem}")


def field_help(cls) -> dict[str, str]:
    """What each field of `cls` means, read from the comments its class writes beside or above it, so the
    help of `hydra-rlhf <stage>`, the pipeline's parameters and the docs' reference say it once, in the code.
    A comment above a field belongs to it; a field without a comment has none ("")."""
    import inspect
    import io
    import tokenize

    names = set(field_names(cls))
    meanings: dict[str, str] = {}
    above, line = [], None  # the comment lines waiting for a field; the last field's name and line
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if line is not None and tok.start[0] == line[1]:  # beside the field: after its comment above
                meanings[line[0]] = " ".join(filter(None, [meanings[line[0]], text]))
            else:
                above.append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            meanings[tok.string] = " ".join(above)
            above, line = [], (tok.string, tok.start[0])
        elif tok.type == tokenize.NL and tok.line.strip() == "":
            above = []  # a blank line ends a comment block that belonged to no field
    return {name: meanings.get(name, "") for name in field_names(cls)}


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One field as its command's help and the docs' reference show it."""

    name: str
    flag: str
    kind: str  # "integer", "one of a, b", ...
    allowed: str  # its range or choices in words ("" for none)
    default: Any
    meaning: str


_KINDS = {bool: "true or false", int: "integer", float: "number", str: "text", list: "list", dict: "object"}


def field_docs(cls) -> list[FieldDoc]:
    """Every field of `cls` with its flag, type, allowed values, default and meaning, in the class's order."""
    defaults, meanings = cls(), field_help(cls)
    docs = []
    for name in field_names(cls):
        tp, choices = field_type(cls, name)
        allowed = f"one of {', '.join(choices)}" if choices else describe_range(cls, name)
        docs.append(FieldDoc(name, flag(name), "choice" if choices else _KINDS.get(tp, tp.__name__), allowed,
                             getattr(defaults, name), meanings[name]))
    return docs

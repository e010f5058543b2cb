"""Integer parameters that keep the config's default.

A component's integer parameter defaults to KEEP (-1; every integer setting is at least 0), not None:
kfp 2.17's local runner casts every integer input with int(), so an optional integer left unset fails
(`int() argument must be ... not 'NoneType'`) when a DAG loads the component from its YAML and omits it.
The literal -1 stands in the signatures because kfp embeds a component's source without its module.
"""

KEEP = -1


def unless_kept(**integers: int) -> dict[str, int | None]:
    """The integer parameters, each left at KEEP as None (hydra_core.config.from_parameters keeps its default)."""
    return {name: None if value == KEEP else value for name, value in integers.items()}

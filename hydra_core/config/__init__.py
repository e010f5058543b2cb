"""Typed configs, one per stage, and the one path by which settings become a config.

    settings    each stage's config (`SFTConfig`, `PPOConfig`, ...), its fields' choices and relations,
                the run labels (`hydra`, `hydra-grpo`)
    fields      declaring a field, coercing text or values to its type, `build` and `validate`
    files       config files and recipes (`load_config`, `save_config`)
    parameters  a component's or a pipeline's parameters as configs, and their checks

The library's own modules import from those; this package's names are the same objects, for users.
"""

from hydra_core.config.fields import ConfigError, build, coerce, flag, field_names, to_dict, validate
from hydra_core.config.files import load_config, read_config_file, save_config
from hydra_core.config.parameters import check_parameters, from_parameters, label_config
from hydra_core.config.settings import (ALGORITHMS, PPO_VARIANTS, RUN_LABELS, STAGE_CONFIGS, DataConfig, EvalConfig,
                                        ExportConfig, ModelInitConfig, Placement, PPOConfig, SFTConfig,
                                        parse_run_label, run_label)

__all__ = [
    "ALGORITHMS", "PPO_VARIANTS", "RUN_LABELS", "STAGE_CONFIGS",
    "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "ModelInitConfig", "PPOConfig", "Placement", "SFTConfig",
    "build", "check_parameters", "coerce", "field_names", "flag", "from_parameters", "label_config", "load_config",
    "parse_run_label", "read_config_file", "run_label", "save_config", "to_dict", "validate",
]

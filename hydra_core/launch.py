"""How this process was launched: how many data-parallel processes `torchrun` or `accelerate launch` started,
and whether accelerate was configured for FSDP. Read from the launcher's environment, without torch, so that
the settings' checks (`config.settings`) cost nothing in pipeline steps that never train.
"""

from __future__ import annotations

import os


def launched_world() -> int:
    """How many processes the launcher started (1 outside torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accelerate_fsdp_launch() -> bool:
    """Whether `accelerate launch` ran with a config of distributed_type FSDP (it exports ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"

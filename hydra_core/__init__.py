"""Hydra-RLHF: memory-efficient RLHF (Hydra-SFT, dynamic LoRA, Hydra-PPO)."""

import atexit
import gc
import os

# OpenMP reads its wait policy when torch loads, so this must run before any torch import. With
# OpenMP's default spinning on a loaded 2-core machine a training step took 9 s instead of 0.24 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The interpreter's last garbage collection walks every object torch, transformers and mlflow made: 2-4 s at
# the exit of every process on 2 cores (each pipeline step, each launched process). Frozen at exit, they are
# freed with the process. Exit handlers still run (this only skips that collection); what it skips is the
# __del__ of objects in reference cycles, which Python does not promise to run at exit anyway.
atexit.register(gc.freeze)

__version__ = "0.1.0"

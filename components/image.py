"""What the steps run on. Every component runs in the project's image, in its CPU or CUDA flavour;
a GPU step (compiled with `use_gpu`) also gets one accelerator of ACCELERATOR type by default.

The image is the one setting, read when the components are defined (at compile time):
HYDRA_RLHF_IMAGE names it without the flavour suffix. The checked-in component specs use the default.
"""

import os

BASE = os.environ.get("HYDRA_RLHF_IMAGE", "ghcr.io/hydra-rlhf/hydra-rlhf:0.1.0")
IMAGE = f"{BASE}-cpu"
CUDA_IMAGE = f"{BASE}-cuda"

ACCELERATOR = "nvidia.com/gpu"

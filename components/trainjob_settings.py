"""The settings of a training step's TrainJob that are read without loading the Kubeflow SDK.

In a module of their own, apart from components.trainjob (which loads the SDK and hydra_core's stages, seconds
of imports): defining the components and starting a local run need only these.
"""

from kfp.dsl.component_task_config import TaskConfigField, TaskConfigPassthrough

# which TrainerClient backend a step's TrainJob runs on: kubernetes (the default) or container (this machine's
# Docker or Podman, for a local run)
BACKEND_VARIABLE = "HYDRA_RLHF_TRAINJOB_BACKEND"

# What kfp hands the step's body of its pod's settings (`task_config`), each still applied to the pod itself: all
# of them, as kfp's compiler refuses a task setting (resources, env, tolerations, ...) that a component with
# passthroughs does not list. The job's nodes get the volumes, tolerations and node selector
# (components.trainjob.Cluster). From their own kfp module: in a step (_KFP_RUNTIME) kfp.dsl leaves these
# compile-time names out.
PASSTHROUGHS = [TaskConfigPassthrough(field=kind, apply_to_task=True) for kind in TaskConfigField]

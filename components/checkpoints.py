"""Where a training step keeps its checkpoints (hydra_core.checkpoint_store): a location of its own under the
pipeline's `checkpoint_uri`, else under the workspace when the pipeline has one, else none (the output folder,
which dies with the pod)."""

from hydra_core.checkpoint_store import step_location

# a task's pod settings, which kfp fills per attempt: not what the step computes from
POD_SETTINGS = ("task_config",)


def step_checkpoints(checkpoint_uri: str, workspace: str, label: str, given: dict, outputs: tuple[str, ...]) -> str:
    """The checkpoint location of the step labelled `label` whose parameters are `given` (its `locals()` as its
    body starts: input artifacts count by their URI, its `outputs` not at all); "" for none."""
    base = checkpoint_uri or (f"{workspace.rstrip('/')}/checkpoints" if workspace else "")
    if not base:
        return ""
    inputs = {name: getattr(value, "uri", value) for name, value in given.items()
              if name not in (*outputs, *POD_SETTINGS)}
    return step_location(base, label, inputs)

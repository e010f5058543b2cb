"""A training step on several nodes or GPUs: the stage's own `hydra-rlhf sft|ppo` command, run by Kubeflow
Trainer as a TrainJob on the `torch-distributed` runtime (torchrun on every node), through the `kubeflow`
SDK's TrainerClient. Both training components use it; one node with at most one GPU never gets here.

The step's pod stays the step: it copies the stage's inputs to storage the job's nodes share, writes the
resolved config there, creates the job, streams node 0's log into its own, fails with the job's reason,
then copies the output back to the step's output artifact, and its MLflow run records the job's metrics
(hydra_core.stages: the job itself runs untracked).

Where the job runs is a backend (`Backend`): `Cluster`, Kubernetes, in a pipeline run; `Containers`, Docker
or Podman on the step's machine (one container per node on a private network), which a test and a local
`hydra-rlhf run` use when HYDRA_RLHF_TRAINJOB_BACKEND=container. The code path is the same apart from the
backend object: the same TrainerClient calls, the same function on the nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from kubeflow.trainer import (ContainerBackendConfig, CustomTrainer, KubernetesBackendConfig, TrainerClient,
                              TrainingRuntimeSource)
from kubeflow.trainer.backends.container.utils import create_workdir
from kubeflow.trainer.constants import constants
from kubeflow.trainer.options import (ContainerPatch, JobSetSpecPatch, JobSetTemplatePatch, JobSpecPatch,
                                      JobTemplatePatch, Name, PodSpecPatch, PodTemplatePatch, ReplicatedJobPatch,
                                      RuntimePatch, TrainingRuntimeSpecPatch)

from components.image import IMAGE
from components.trainjob_settings import BACKEND_VARIABLE
from hydra_core.config.files import save_config
from hydra_core.config.parameters import from_parameters
from hydra_core.config.settings import Placement
from hydra_core.stages import LEFT_OUT
from hydra_core.tracking.runs import IMAGE_VARIABLE

RUNTIME = "torch-distributed"
JOBS_FOLDER = "hydra-rlhf-trainjobs"  # under the workspace: one folder per job
# the settings of each stage that name its inputs: copied to the shared folder when they are local paths
INPUTS = {"sft": ("model", "data", "chat_template"), "ppo": ("model", "reward_model", "data", "chat_template")}
# a step has no deadline of its own (the pipeline run's bounds it); the SDK's default is 10 minutes
WAIT_SECONDS = 30 * 24 * 3600
POLL_SECONDS = 5
ENDED = {constants.TRAINJOB_COMPLETE, constants.TRAINJOB_FAILED}


class TrainJobFailed(RuntimeError):
    """The job ended Failed; the message is one line naming the job and why."""


def run_stage(argv: list) -> None:
    """What every process on the job's nodes runs (torchrun starts it; the SDK embeds this function's source,
    hence the imports inside): the `hydra-rlhf` command line `argv`, exiting with its status."""
    import sys

    from hydra_core.cli import main

    sys.exit(main(argv))


class Backend(Protocol):
    config: object

    def folder(self, job: str) -> tuple[Path, str]:
        """The job's shared folder: where this step writes it, and its path on the job's nodes."""

    def options(self) -> list:
        """TrainerClient.train options that give the nodes that folder (and what else they need)."""

    def failure(self, client: TrainerClient, job: str) -> str:
        """Why the job failed, as the backend says it ("" when it says nothing more than Failed)."""


@dataclass
class Cluster:
    """Kubernetes, from a pipeline step: the shared folder is under `workspace`, on a PersistentVolumeClaim the
    step mounts (the pipeline's workspace, `hydra-rlhf compile --workspace`); the job's nodes mount the step's
    claims at the same paths, and tolerate and select nodes as the step does. `task_config` is the step's
    (kfp's TaskConfig: its volumes, mounts, tolerations, node selector)."""

    workspace: str
    task_config: object = None
    config: KubernetesBackendConfig = field(default_factory=KubernetesBackendConfig)

    def __post_init__(self):
        if not self.workspace:
            raise ValueError("a TrainJob's nodes need storage they share with this step: compile the pipeline with "
                             "a workspace (hydra-rlhf compile --workspace SIZE) or give the step parameter workspace "
                             "a folder on a ReadWriteMany volume it mounts")
        if not self._mounts():
            raise ValueError(f"parameter workspace {self.workspace!r}: on no PersistentVolumeClaim this step mounts, "
                             "so a TrainJob's nodes could not see it")

    def _claims(self) -> dict[str, dict]:
        volumes = getattr(self.task_config, "volumes", None) or []
        return {v["name"]: v for v in volumes if "persistentVolumeClaim" in v}

    def _mounts(self) -> list[dict]:
        claims = self._claims()
        return [m for m in getattr(self.task_config, "volume_mounts", None) or [] if m["name"] in claims
                and Path(self.workspace).is_relative_to(m["mountPath"])]

    def folder(self, job: str) -> tuple[Path, str]:
        path = Path(self.workspace) / JOBS_FOLDER / job
        return path, str(path)

    def options(self) -> list:
        mounts = self._mounts()
        claims = self._claims()
        pod = PodSpecPatch(volumes=[claims[m["name"]] for m in mounts],
                           containers=[ContainerPatch(name=constants.NODE, volume_mounts=mounts)],
                           tolerations=getattr(self.task_config, "tolerations", None),
                           node_selector=getattr(self.task_config, "node_selector", None))
        node = ReplicatedJobPatch(name=constants.NODE, template=JobTemplatePatch(
            spec=JobSpecPatch(template=PodTemplatePatch(spec=pod))))
        return [RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[node]))))]

    def failure(self, client: TrainerClient, job: str) -> str:
        # the SDK's TrainJob keeps only the status, not the condition that says why
        cr = client.backend.custom_api.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, client.backend.namespace, constants.TRAINJOB_PLURAL, job)
        return "; ".join(f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
                         for c in (cr.get("status") or {}).get("conditions") or []
                         if c.get("type") == constants.TRAINJOB_FAILED and c.get("status") == "True")


@dataclass
class Containers:
    """Docker or Podman on this machine: the SDK mounts the job's work folder (~/.kubeflow/trainer/containers/
    <job>) at /workspace in every node's container; the SDK's built-in torch-distributed runtime, not one
    fetched from GitHub (a step may have no internet)."""

    config: ContainerBackendConfig = field(default_factory=lambda: ContainerBackendConfig(
        runtime_source=TrainingRuntimeSource(sources=[])))

    def folder(self, job: str) -> tuple[Path, str]:
        return Path(create_workdir(job)), constants.WORKSPACE_PATH

    def options(self) -> list:
        return []

    def failure(self, client: TrainerClient, job: str) -> str:
        return ""


def backend(workspace: str = "", task_config=None) -> Backend:
    """The backend a step creates its job on: Kubernetes, unless HYDRA_RLHF_TRAINJOB_BACKEND says `container`."""
    chosen = os.environ.get(BACKEND_VARIABLE, "kubernetes")
    if chosen == "container":
        return Containers()
    if chosen != "kubernetes":
        raise ValueError(f"{BACKEND_VARIABLE}={chosen!r}: expected kubernetes or container")
    return Cluster(workspace, task_config)


def image() -> str:
    """The image the step runs in (it records its own name when built: containers/Dockerfile), else the
    components' CPU image."""
    own = os.environ.get(IMAGE_VARIABLE, "")
    return own if own and own != "unknown" else IMAGE


def _shared_config(stage: str, cfg, host: Path, remote: str):
    """`cfg` as the job's nodes see it: its local inputs copied under `host` (`remote` on the nodes), its output
    there, in a folder any UID can write (the image's user need not be this step's)."""
    changes = {}
    for name in INPUTS[stage]:
        value = getattr(cfg, name)
        source = Path(value) if value else None
        if source is None or not source.exists():  # unset, or a hub id the nodes download themselves
            continue
        target = host / "inputs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(*LEFT_OUT))  # no part of a model
        else:
            shutil.copy2(source, target)
        for path in (target, *target.rglob("*")):  # copies keep their modes, a private temporary folder's too
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        changes[name] = f"{remote}/inputs/{name}"
    output = host / "output"
    output.mkdir(parents=True)
    output.chmod(0o777)
    return replace(cfg, **changes, output_dir=f"{remote}/output")


# a line that says why a process stopped: the CLI's one-line error, or a Python exception's last line (not torchrun's
# own ChildFailedError, which only says that a process failed)
ERROR_LINE = re.compile(r"^(hydra-rlhf \S+: error|(?!.*ChildFailedError)[A-Za-z_][\w.]*(Error|Exception)): \S")


def _stream(client: TrainerClient, job: str) -> str:
    """Node 0's log (the container backend: each node's in turn) into this step's as it comes; returns the last
    line that says why a process stopped, else the last line."""
    last = error = ""
    try:
        for text in client.get_job_logs(job, follow=True):
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
            for line in filter(str.strip, text.splitlines()):
                last = line.strip()
                error = last if ERROR_LINE.match(last) else error
    except RuntimeError as e:  # a log cut short says nothing about the job: its status does
        print(f"TrainJob {job}: the log stream stopped ({e}); waiting for the job's status")
    return error or last


class Launcher:
    """Runs `hydra-rlhf <stage>` as a TrainJob of `placement`'s nodes on `backend`: what a training component
    hands hydra_core.stages as `train`. Made before any work, so that a backend it cannot reach fails first."""

    def __init__(self, stage: str, placement: Placement, backend: Backend, image_name: str = ""):
        self.stage, self.placement, self.backend = stage, placement, backend
        self.image = image_name or image()
        self.client = TrainerClient(backend.config)

    def __call__(self, cfg) -> None:
        """Train `cfg` in a new job, wait for it and put its output in `cfg.output_dir` (a TrainJobFailed naming
        the job and why if it fails). The job is deleted once it has ended: its log is in this step's by then."""
        job = f"{self.stage}-{uuid.uuid4().hex[:8]}"
        host, remote = self.backend.folder(job)
        try:
            config_file = save_config(_shared_config(self.stage, cfg, host, remote), host)
            gpus = self.placement.gpus_per_node
            trainer = CustomTrainer(func=run_stage, image=self.image, num_nodes=self.placement.num_nodes,
                                    func_args={"argv": [self.stage, "--config", f"{remote}/{config_file.name}"]},
                                    resources_per_node={"gpu": gpus} if gpus else None)
            self.client.train(runtime=RUNTIME, trainer=trainer, options=[Name(job), *self.backend.options()])
            print(f"TrainJob {job}: hydra-rlhf {self.stage} on {self.placement.num_nodes} node(s), "
                  f"{f'{gpus} GPU(s)' if gpus else 'CPU'} each, in {self.image}", flush=True)
            try:
                self._wait(job, host, cfg)
            finally:
                self.client.delete_job(job)
        finally:
            shutil.rmtree(host, ignore_errors=True)

    def _wait(self, job: str, host: Path, cfg) -> None:
        self.client.wait_for_job_status(job, {constants.TRAINJOB_RUNNING, *ENDED}, timeout=WAIT_SECONDS,
                                        polling_interval=POLL_SECONDS)
        last = _stream(self.client, job)
        ended = self.client.wait_for_job_status(job, ENDED, timeout=WAIT_SECONDS, polling_interval=POLL_SECONDS)
        if ended.status == constants.TRAINJOB_FAILED:
            why = " ".join((self.backend.failure(self.client, job) or "a node exited with an error").split())
            raise TrainJobFailed(f"TrainJob {job} failed: {why}" + (f" (its log: {last})" if last else ""))
        shutil.copytree(host / "output", cfg.output_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*LEFT_OUT))
        save_config(cfg, cfg.output_dir)  # the settings as this step has them, not with the nodes' paths


def stage_trainer(stage: str, num_nodes: int, gpus_per_node: int, workspace: str = "",
                  task_config=None) -> Launcher | None:
    """A training component's `train` for hydra_core.stages: None (train in this process) for one node with at
    most one GPU, else the stage's Launcher. Checks the parameters first."""
    placement = from_parameters(Placement, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    return Launcher(stage, placement, backend(workspace, task_config)) if placement.distributed else None

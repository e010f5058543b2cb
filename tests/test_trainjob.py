"""A training step on several nodes: the Kubeflow Trainer TrainJob it creates through the `kubeflow` SDK
(components/trainjob.py), handed to a stand-in Kubernetes API here and, with Docker, run for real through the
SDK's container backend in the project's image."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from kfp import dsl
from kubeflow.trainer import KubernetesBackendConfig
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes.client import Configuration
from mlflow import MlflowClient

from components import trainjob
from components.build import load
from components.image import IMAGE
from conftest import KfpArtifact
from hydra_core.config.fields import ConfigError
from hydra_core.config.settings import Placement, SFTConfig

TRAINER = "/apis/trainer.kubeflow.org/v1alpha1"
NAMESPACE = "team-a"
NODE_LABELS = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
# the torch-distributed ClusterTrainingRuntime as Kubeflow Trainer's manifests install it, less what the SDK
# does not read
RUNTIME = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
             "template": {"spec": {"replicatedJobs": [{"name": "node", "template": {
                 "metadata": {"labels": NODE_LABELS},
                 "spec": {"template": {"spec": {"containers": [
                     {"name": "node", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"}]}}}}}]}}},
}


class StandInAPI:
    """The calls TrainerClient's Kubernetes backend makes, answered on 127.0.0.1: the runtime, the TrainJob it
    creates (recorded, with the config file it names as it was then), its node pods, node 0's log and the
    deletion. The job runs while its log is read: then it ends, `ends` saying how (a Failed condition, or
    None: Complete), and `writes` (a file name) lands in its output folder, as a job's training would leave it."""

    def __init__(self, log: list[str], ends: dict | None = None, writes: str = ""):
        self.log, self.ends, self.writes = log, ends, writes
        self.created, self.config_files, self.deleted = [], [], []
        self.ended = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body, content_type: str = "application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                code, body, kind = api.get(urlparse(self.path))
                self._send(code, body, kind)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(201, api.create(body))

            def do_DELETE(self):
                api.deleted.append(self.path.rsplit("/", 1)[-1])
                self._send(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def create(self, body: dict) -> dict:
        self.created.append(body)
        [config] = re.findall(r"'--config', '([^']+)'", body["spec"]["trainer"]["command"][-1])
        self.config_files.append(json.loads(Path(config).read_text()))
        body["metadata"].update(namespace=NAMESPACE, creationTimestamp="2026-12-01T00:00:00Z")
        return body

    def job(self) -> dict:
        job = self.created[-1]
        if self.ended:
            condition = self.ends or {"type": "Complete", "reason": "JobSetCompleted", "message": "all nodes done"}
            job = {**job, "status": {"conditions": [
                {"status": "True", "lastTransitionTime": "2026-12-01T00:05:00Z", **condition}]}}
        return job

    def pods(self) -> dict:
        job = self.created[-1]
        phase = "Running" if not self.ended else "Failed" if self.ends else "Succeeded"
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
            "metadata": {"name": f"{job['metadata']['name']}-node-0-{i}-x", "namespace": NAMESPACE,
                         "creationTimestamp": "2026-12-01T00:00:01Z",
                         "labels": {"jobset.sigs.k8s.io/replicatedjob-name": "node",
                                    "batch.kubernetes.io/job-completion-index": str(i)}},
            "spec": {"containers": [{"name": "node", "image": job["spec"]["trainer"]["image"]}]},
            "status": {"phase": phase}} for i in range(job["spec"]["trainer"]["numNodes"])]}

    def get(self, url):
        path = url.path
        if path == f"{TRAINER}/clustertrainingruntimes/torch-distributed":
            return 200, RUNTIME, "application/json"
        if path.startswith(f"{TRAINER}/namespaces/{NAMESPACE}/trainjobs/"):
            return 200, self.job(), "application/json"
        if path == f"/api/v1/namespaces/{NAMESPACE}/pods":
            return 200, self.pods(), "application/json"
        if path.startswith(f"/api/v1/namespaces/{NAMESPACE}/pods/") and path.endswith("/log"):
            assert parse_qs(url.query)["container"] == ["node"]
            if self.writes:
                folder = Path(self.config_files[-1]["output_dir"])
                (folder / self.writes).write_text("weights")
            self.ended = True
            return 200, "".join(line + "\n" for line in self.log), "text/plain"
        # the namespaced TrainingRuntime (the cluster's is used instead) and the Trainer's version ConfigMap
        return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}, "application/json"


@pytest.fixture
def step(tmp_path):
    """A Hydra-SFT step's config (a base model and data folder, its output folder) and its pod's workspace: a
    PersistentVolumeClaim mounted at `workspace`, besides a scratch emptyDir, as kfp's TaskConfig gives them."""
    for folder in ("base", "data"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "file").write_text(folder)
    cfg = SFTConfig(model=str(tmp_path / "base"), data=str(tmp_path / "data"), output_dir=str(tmp_path / "out"))
    workspace = tmp_path / "kfp-ws"
    workspace.mkdir()
    claim = {"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": "run-7-kfp-workspace"}}
    task_config = dsl.TaskConfig(
        volumes=[claim, {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}}],
        volume_mounts=[{"name": "kfp-workspace", "mountPath": str(workspace)}, {"name": "scratch", "mountPath": "/s"}],
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"pool": "gpu"})
    return cfg, str(workspace), task_config


def cluster(api: StandInAPI, workspace: str, task_config) -> trainjob.Cluster:
    return trainjob.Cluster(workspace, task_config, KubernetesBackendConfig(
        namespace=NAMESPACE, client_configuration=Configuration(host=api.url)))


def test_the_kubernetes_backend_is_handed_the_trainjob_of_the_stages_command_on_shared_storage(step, capsys):
    cfg, workspace, task_config = step
    api = StandInAPI(["[rank0] sft training: 50%", "held-out greedy gold accuracy: 0.6125"], writes="model.safetensors")
    try:
        trainjob.Launcher("sft", Placement(num_nodes=2, gpus_per_node=4), cluster(api, workspace, task_config))(cfg)
    finally:
        api.close()

    [body] = api.created
    job = TrainerV1alpha1TrainJob.from_dict(body)  # a TrainJob as kubeflow-trainer-api's models define it
    name = job.metadata.name
    folder = f"{workspace}/{trainjob.JOBS_FOLDER}/{name}"
    assert job.kind == "TrainJob" and job.spec.runtime_ref.name == "torch-distributed"
    assert job.spec.trainer.image == IMAGE and job.spec.trainer.num_nodes == 2
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 4}
    script = job.spec.trainer.command[-1]  # the runtime's torchrun, running the stage's command line
    assert "torchrun" in script and "from hydra_core.cli import main" in script
    assert f"run_stage(**{{'argv': ['sft', '--config', '{folder}/sft_config.json']}})" in script
    # the config the nodes read: the step's settings, its inputs copied to the shared folder
    [shared] = api.config_files
    assert shared["type"] == "SFTConfig" and shared["steps"] == cfg.steps
    assert (shared["model"], shared["data"], shared["output_dir"]) == (
        f"{folder}/inputs/model", f"{folder}/inputs/data", f"{folder}/output")
    # the nodes mount the workspace's claim where the step does (not its scratch), and go where it may
    [patch] = body["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["volumes"] == [task_config.volumes[0]]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [task_config.volume_mounts[0]]}]
    assert pod["tolerations"] == task_config.tolerations and pod["nodeSelector"] == {"pool": "gpu"}

    out = Path(cfg.output_dir)
    assert (out / "model.safetensors").read_text() == "weights"  # the job's output, handed on
    assert json.loads((out / "sft_config.json").read_text())["model"] == cfg.model  # the step's own paths
    assert api.deleted == [name] and not Path(folder).exists()
    printed = capsys.readouterr().out
    assert f"TrainJob {name}: hydra-rlhf sft on 2 node(s), 4 GPU(s) each" in printed
    assert "[rank0] sft training: 50%\nheld-out greedy gold accuracy: 0.6125\n" in printed  # its log, streamed


def test_a_failed_trainjob_fails_the_step_in_one_line_naming_the_job_and_why(step, capsys):
    cfg, workspace, task_config = step
    api = StandInAPI(["loading", "hydra-rlhf sft: error: /data: no prepared split demos_train",
                      "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=" * 60],
                     ends={"type": "Failed", "reason": "JobSetFailed", "message": "jobset failed:\n node-1 exited 2"})
    try:
        with pytest.raises(trainjob.TrainJobFailed) as failed:
            trainjob.Launcher("sft", Placement(num_nodes=2, gpus_per_node=0), cluster(api, workspace, task_config))(cfg)
    finally:
        api.close()
    [body] = api.created
    name = body["metadata"]["name"]
    # the line that says why, not torchrun's report after it
    assert str(failed.value) == (f"TrainJob {name} failed: JobSetFailed: jobset failed: node-1 exited 2 (its log: "
                                 "hydra-rlhf sft: error: /data: no prepared split demos_train)")
    assert "resourcesPerNode" not in body["spec"]["trainer"]  # CPU nodes: the runtime's own resources
    assert api.deleted == [name] and not Path(cfg.output_dir).exists()
    assert "loading\n" in capsys.readouterr().out


def test_one_node_with_at_most_one_gpu_trains_in_the_steps_own_process_and_bad_counts_are_named():
    assert trainjob.stage_trainer("sft", 1, 1) is None and trainjob.stage_trainer("ppo", 1, 0) is None
    with pytest.raises(ConfigError, match=r"^parameter num_nodes: 0 is out of range; it must be at least 1$"):
        trainjob.stage_trainer("sft", 0, 1)
    with pytest.raises(ConfigError, match=r"^parameter gpus_per_node: -1 is out of range; it must be at least 0$"):
        trainjob.stage_trainer("ppo", 2, -1)


def test_the_launcher_loads_in_a_step_where_kfp_leaves_out_its_compile_time_names():
    subprocess.run([sys.executable, "-c", "import components.trainjob"], check=True, timeout=120,
                   env={**os.environ, "_KFP_RUNTIME": "true"})


def test_a_trainjob_on_kubernetes_needs_storage_the_step_shares_with_its_nodes(step, monkeypatch):
    _, workspace, task_config = step
    monkeypatch.delenv(trainjob.BACKEND_VARIABLE, raising=False)
    with pytest.raises(ValueError, match="compile the pipeline with a workspace"):
        trainjob.stage_trainer("sft", 2, 1)
    scratch_only = dsl.TaskConfig(volumes=task_config.volumes[1:], volume_mounts=task_config.volume_mounts[1:])
    with pytest.raises(ValueError, match="on no PersistentVolumeClaim this step mounts"):
        trainjob.Cluster(workspace, scratch_only)
    monkeypatch.setenv(trainjob.BACKEND_VARIABLE, "slurm")
    with pytest.raises(ValueError, match="HYDRA_RLHF_TRAINJOB_BACKEND='slurm': expected kubernetes or container"):
        trainjob.stage_trainer("sft", 2, 1)


def _no_jobs_left() -> bool:
    import docker

    client = docker.from_env()
    try:
        return not client.containers.list(all=True, filters={"label": "trainer.kubeflow.org/trainjob-name"})
    finally:
        client.close()


def _two_node_step(name: str, tmp_path: Path, monkeypatch, **inputs) -> tuple[Path, str, MlflowClient, float]:
    """Component `name` as a pipeline runs it, on two CPU nodes, its TrainJob on Docker instead of Kubernetes: the
    SDK's container backend starts a container of the project's image per node on a private network and torchrun
    --nnodes 2 across them. Returns the step's output folder, its MLflow run, the client and the seconds taken."""
    monkeypatch.setenv(trainjob.BACKEND_VARIABLE, "container")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = KfpArtifact(tmp_path / "kfp" / "output")
    started = time.perf_counter()
    outputs = {"hydra_sft": "model", "hydra_ppo": "policy"}
    run_id = load(name).python_func(**{outputs[name]: output}, metrics=KfpArtifact(tmp_path / "kfp" / "metrics"),
                                    seed=0, tracking_uri=uri, experiment="trainjob", num_nodes=2, gpus_per_node=0,
                                    **inputs)
    seconds = time.perf_counter() - started
    assert output.metadata["mlflow"]["run_id"] == run_id
    assert _no_jobs_left()
    return Path(output.path), run_id, MlflowClient(uri), seconds


@pytest.mark.docker
def test_a_two_node_hydra_sft_step_trains_through_the_container_backend_in_the_project_image(
        image, arithmetic_dir, base_model_dir, tmp_path, monkeypatch, capsys):
    """The step records the job's training in its MLflow run and hands the model on."""
    out, run_id, client, seconds = _two_node_step(
        "hydra_sft", tmp_path, monkeypatch, data=KfpArtifact(arithmetic_dir), base_model=base_model_dir, steps=4,
        demo_batch_size=16, pair_batch_size=8,
        config={"eval_every": 2, "log_every": 2, "greedy_eval_prompts": 16, "warmup_steps": 1, "checkpoint_every": 0})
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["processes"] == 2  # one process group across the two nodes' containers
    assert (out / "config.json").exists()
    assert json.loads((out / "sft_config.json").read_text())["data"] == arithmetic_dir  # the step's paths
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "4"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4]
    assert "sft_curves.png" in {a.path for a in client.list_artifacts(run_id)}
    printed = capsys.readouterr().out
    assert "on 2 node(s), CPU each" in printed and "hydra training" in printed  # the nodes' log, in the step's
    print(f"2-node Hydra-SFT step through the container backend: {seconds:.0f} s")


@pytest.mark.docker
def test_a_two_node_hydra_ppo_step_trains_through_the_container_backend_in_the_project_image(
        image, arithmetic_dir, hydra_sft_dir, tmp_path, monkeypatch, capsys):
    """Data-parallel Hydra-PPO across two nodes: each samples and trains on half the rollout; the policy and the
    run come back to the step."""
    out, run_id, client, seconds = _two_node_step(
        "hydra_ppo", tmp_path, monkeypatch, data=KfpArtifact(arithmetic_dir), sft_model=KfpArtifact(hydra_sft_dir),
        variant="hydra", steps=2, rollout_batch_size=8, mini_batch_size=4,
        config={"greedy_eval_prompts": 8, "ppo_epochs": 1, "max_new_tokens": 3})
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["processes"] == 2 and summary["layout"] == "hydra"
    assert (out / "config.json").exists()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ppo-hydra"
    assert [m.step for m in client.get_metric_history(run_id, "objective/kl")] == [1, 2]
    assert client.get_metric_history(run_id, "objective/kl")[0].value == 0  # a fresh adapter is the reference
    assert "on 2 node(s), CPU each" in capsys.readouterr().out
    print(f"2-node Hydra-PPO step through the container backend: {seconds:.0f} s")

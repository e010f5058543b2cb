"""Another team's DAG: the components loaded from their YAML and called with only their required inputs
(tiny settings through each one's `config` dict), and the README's reuse example as written."""

import json
import re
from pathlib import Path

import pytest
import yaml
from kfp import components as kfp_components
from kfp import dsl, local
from mlflow import MlflowClient

from components.build import NAMES, spec_path

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data_prep": {"max_records": 120, "arithmetic_eval_prompts": 8},
    "hydra_sft": {"steps": 2, "demo_batch_size": 8, "pair_batch_size": 4, "eval_every": 2, "log_every": 1,
                  "greedy_eval_prompts": 4, "warmup_steps": 1},
    "hydra_ppo": {"steps": 1, "rollout_batch_size": 4, "mini_batch_size": 4, "ppo_epochs": 1, "lora_rank": 4,
                  "greedy_eval_prompts": 4, "max_new_tokens": 3},
    "pairwise_eval": {"max_prompts": 4, "max_new_tokens": 3},
}


def run_locally(tmp_path: Path) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "workspace"))


@pytest.mark.parametrize("name", NAMES)
def test_no_spec_leaves_an_optional_integer_without_a_default(name):
    """kfp 2.17's local runner casts an omitted integer input's default with int(): None fails."""
    spec = yaml.safe_load(spec_path(name).read_text())
    [component] = spec["components"].values()
    unset = [param for param, definition in component["inputDefinitions"].get("parameters", {}).items()
             if definition["parameterType"] == "NUMBER_INTEGER" and definition.get("isOptional")
             and "defaultValue" not in definition]
    assert not unset, f"{name}: optional integers without a default: {unset}"


def test_the_training_components_run_from_their_yaml_with_only_the_required_inputs(tmp_path, monkeypatch):
    """Prepare, Hydra-SFT, Hydra-PPO and the pairwise eval in a DAG with no close step: tracked (by the
    environment, as a pod would be), nested under a parent run that the first step ends."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "their-team")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    loaded = {name: kfp_components.load_component_from_file(str(spec_path(name))) for name in TINY}

    @dsl.pipeline(name="their-dag")
    def their_dag():
        prep = loaded["data_prep"](config=TINY["data_prep"])
        sft = loaded["hydra_sft"](data=prep.outputs["data"], config=TINY["hydra_sft"])
        ppo = loaded["hydra_ppo"](data=prep.outputs["data"], sft_model=sft.outputs["model"], config=TINY["hydra_ppo"])
        loaded["pairwise_eval"](data=prep.outputs["data"], candidate=ppo.outputs["policy"],
                                baseline=sft.outputs["model"], config=TINY["pairwise_eval"])

    run_locally(tmp_path)
    their_dag()

    [task_root] = (tmp_path / "root").glob("their-dag-*")
    assert (task_root / "hydra-sft" / "model" / "sft_summary.json").exists()
    assert (task_root / "hydra-ppo" / "policy" / "config.json").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("their-team").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"  # not RUNNING forever: no step of this DAG would close it
    stages = {r.info.run_name: r for r in runs if r is not parent}
    assert {"data-prep", "hydra-sft", "ppo-hydra"} <= set(stages) and len(stages) == 4, set(stages)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())


def readme_reuse_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Reusing a component in your own DAG"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_reuse_example_runs_as_written(tmp_path, monkeypatch):
    """The README's code block unchanged, as `my_ppo.py` run from the repository root (here a folder that
    links to its components, so the outputs stay in the test's folder), untracked."""
    (tmp_path / "components").symlink_to(ROOT / "components")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exec(compile(readme_reuse_example(), "my_ppo.py", "exec"), {"__name__": "__main__"})
    [run_dir] = (tmp_path / "kfp-outputs").glob("my-ppo-*")
    assert (run_dir / "hydra-sft" / "model" / "sft_summary.json").exists()
    assert json.loads((run_dir / "hydra-ppo" / "policy" / "ppo_summary.json").read_text())["variant"] == "hydra"

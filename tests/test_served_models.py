"""Registered models that MLflow itself loads: the tracked SFT and PPO stages log the Hydra-SFT model
as a reward pyfunc and the policy with the transformers flavour, the register stage points the
aliases at them, and a fresh process loads both by alias, generates and scores."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.models import Model

from conftest import code_blocks, free_port, stop_process_group, tiny_ppo_config, tiny_sft_config
from hydra_core import registry, selection, stages
from hydra_core.data.encoding import pair_batch
from hydra_core.data.schema import PreferencePair
from hydra_core.eval.report import FILES as EVAL_FILES
from hydra_core.models import reward_pyfunc
from hydra_core.models.hydra import load_hydra, reward_scores
from hydra_core.tracking.mlflow_tracker import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PENDING_DIR, MlflowTracker,
                                                replay)
from hydra_core.tracking.runs import Tracking

PAIRS = [{"prompt": "12+7=", "response": "19"}, {"prompt": "3+4=", "response": "8 and some more words"}]
EVALUATION = {"win_rate": 0.75, "win_rate_low": 0.6, "win_rate_high": 0.9, "wins": 6, "ties": 0, "losses": 2,
              "errors": 0, "position_bias": 0.0, "prompts": "eval-prompts", "baseline": "hydra-sft",
              "judge": {"name": "gold"}}

LOAD_AND_USE = """
import json, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
policy = mlflow.pyfunc.load_model("models:/hydra-rlhf-policy@champion")
text = policy.predict(["1+1="], params={"max_new_tokens": 4, "do_sample": False})
pipeline = mlflow.transformers.load_model("models:/hydra-rlhf-policy@champion")
reward = mlflow.pyfunc.load_model("models:/hydra-rlhf-sft@candidate")
print(json.dumps({"text": text, "pipeline_task": pipeline.task, "rewards": reward.predict(json.loads(sys.argv[2]))}))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory, base_model_dir, arithmetic_dir):
    """A tracked Hydra-SFT run (registered), a tracked PPO run from it, and that policy registered."""
    root = tmp_path_factory.mktemp("served")
    tracking = Tracking(f"sqlite:///{root / 'mlflow.db'}", "served-test")
    sft = stages.sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(root / "sft")), tracking,
                     registered_model=registry.SFT_MODEL)
    ppo = stages.ppo(tiny_ppo_config(str(root / "sft"), arithmetic_dir, root / "ppo"), tracking)
    (root / "eval").mkdir()
    (root / "eval" / EVAL_FILES["summary"]).write_text(json.dumps(EVALUATION))
    decision = selection.register_policy(tracking, str(root / "eval"), ppo["tracking"]["run_id"], registry.POLICY_MODEL,
                                      0.5, "hydra", root / "register")
    return {"uri": tracking.resolved_uri, "sft": sft, "ppo": ppo, "decision": decision, "root": root}


@pytest.mark.slow
def test_a_fresh_process_generates_with_the_champion_and_scores_with_the_reward_model(registered):
    assert [registered[s]["tracking"]["state"] for s in ("sft", "ppo", "decision")] == ["sent"] * 3
    assert registered["decision"]["aliases"] == [registry.CANDIDATE, registry.CHAMPION]
    done = subprocess.run([sys.executable, "-c", LOAD_AND_USE, registered["uri"], json.dumps(PAIRS)],
                          capture_output=True, text=True, timeout=300, cwd=registered["root"])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["pipeline_task"] == "text-generation"
    assert len(got["text"]) == 1 and isinstance(got["text"][0], str)
    assert len(got["rewards"]) == 2 and all(math.isfinite(r) for r in got["rewards"])

    # the numbers hydra_core's own reward scoring gives (a chosen/rejected batch, as the judge scores)
    model = load_hydra(str(registered["root"] / "sft"), heads=("reward",)).eval()
    for pair, served in zip(PAIRS, got["rewards"]):
        batch = pair_batch(model.tokenizer, [PreferencePair(pair["prompt"], pair["response"], "x")], 512)
        own = model(**batch, lm=False, reward=True).rewards[0].item()
        assert served == pytest.approx(own, abs=1e-4)
    assert got["rewards"][0] != pytest.approx(got["rewards"][1], abs=1e-6)


def _listed_versions(logged) -> list[tuple[str, str]]:
    return [(v["name"], str(v["version"])) for v in json.loads(logged.tags.get("mlflow.modelVersions", "[]"))]


def test_registered_versions_point_at_logged_models_and_the_policy_carries_the_eval_metrics(registered):
    client = MlflowClient(registered["uri"])
    experiment = client.get_experiment_by_name("served-test")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    policy = client.get_model_version_by_alias(registry.POLICY_MODEL, registry.CHAMPION)
    assert policy.source.startswith("models:/m-")  # a LoggedModel, not a bare runs:/ artifact folder
    logged = client.get_logged_model(policy.source.removeprefix("models:/"))
    assert logged.name == registry.LM_MODEL and logged.source_run_id == registered["ppo"]["tracking"]["run_id"]
    metrics = {m.key: m.value for m in logged.metrics}  # under the eval run's names, as everywhere
    assert metrics["eval/win_rate"] == 0.75 and metrics["eval/win_rate_low"] == 0.6 and "win_rate" not in metrics
    assert policy.tags["eval/win_rate_low"] == "0.6" and "win_rate_low" not in policy.tags
    register = client.get_run(registered["decision"]["tracking"]["run_id"]).data.metrics
    assert register["eval/win_rate"] == 0.75 and "win_rate" not in register
    ppo = client.get_run(registered["ppo"]["tracking"]["run_id"]).data  # one-value figures as params, in MiB
    assert {"memory/trainable_params", "memory/optimizer_mib", "memory/stage_peak_mib"} <= set(ppo.params)
    assert "memory/peak_mib" in ppo.metrics and not {"memory/trainable_params", "memory/peak_bytes"} & set(ppo.metrics)
    assert str(logged.status) == "READY"
    # linked both ways, as mlflow.register_model links them: the model's page lists the version
    assert _listed_versions(logged) == [(registry.POLICY_MODEL, str(policy.version))]

    sft = client.get_model_version_by_alias(registry.SFT_MODEL, registry.CANDIDATE)
    assert str(sft.version) == registered["sft"]["tracking"]["model_version"]
    reward = client.get_logged_model(sft.source.removeprefix("models:/"))
    assert reward.name == registry.REWARD_MODEL and reward.source_run_id == registered["sft"]["tracking"]["run_id"]
    assert _listed_versions(reward) == [(registry.SFT_MODEL, str(sft.version))]
    # the raw folder stays listable beside the models (one of the same name would shadow it in MLflow 3)
    for stage, summary in (("sft", "sft_summary.json"), ("ppo", "ppo_summary.json")):
        listed = {a.path for a in client.list_artifacts(registered[stage]["tracking"]["run_id"], "model")}
        assert f"model/{summary}" in listed and "model/config.json" in listed
    # built from code: the logged model holds the code file and the Hydra directory, no pickle
    files = {a.path for a in client.list_logged_model_artifacts(reward.model_id)}
    assert "reward_pyfunc.py" in files and "python_model.pkl" not in files
    pins = Path(reward.artifact_location.removeprefix("file://"), "requirements.txt").read_text().split()
    assert {p.split("==")[0] for p in pins} == {"mlflow", *reward_pyfunc.REQUIREMENTS}


def test_a_model_logged_while_mlflow_is_unreachable_is_logged_and_registered_on_replay(tmp_path, base_model_dir,
                                                                                       monkeypatch):
    from transformers import AutoTokenizer

    policy = tmp_path / "ppo"
    shutil.copytree(base_model_dir, policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(policy)
    dead = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    run = MlflowTracker(dead, "offline-ppo", policy / PENDING_DIR, experiment="replayed", system_metrics=False)
    run.log_model(policy, registry.LM_MODEL, stages.POLICY_REQUIREMENTS)
    assert run.register_model("replayed-policy", registry.LM_MODEL, {}, [registry.CHAMPION],
                              model_metrics={"win_rate": 0.7}) == ""
    run.close()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # logging a model sets MLflow's global URI for a moment; where the next stages log must not change
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    replay(policy / PENDING_DIR, uri)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"
    version = MlflowClient(uri).get_model_version_by_alias("replayed-policy", registry.CHAMPION)
    logged = MlflowClient(uri).get_logged_model(version.source.removeprefix("models:/"))
    assert {m.key: m.value for m in logged.metrics} == {"win_rate": 0.7}
    files = Path(logged.artifact_location.removeprefix("file://"))
    meta = Model.load(files / "MLmodel")
    assert meta.metadata["chat_template"] == tokenizer.chat_template
    assert meta.flavors["transformers"]["task"] == "text-generation"
    pins = (files / "requirements.txt").read_text().split()
    assert {p.split("==")[0] for p in pins} == {"mlflow", *stages.POLICY_REQUIREMENTS}  # no torchvision


# What docs/mlflow.md sends to `mlflow models serve`, as written there: curl's -d '<request>', policy first
POLICY_REQUEST, REWARD_REQUEST = [json.loads(body) for block in code_blocks("mlflow.md", "bash")
                                  for body in re.findall(r"-d '([^']*)'", block)]
SERVE_TIMEOUT_S = 120


def _serve(uri: str, model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve -m <model>` as docs/mlflow.md gives it, on a free port; returns the process
    (the leader of a session of its own, so that its uvicorn child goes with it) and its address."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           # `serve` starts `uvicorn` by name: the one beside this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
                                   "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def _wait_until_up(server: subprocess.Popen, address: str, log: Path) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if requests.get(f"{address}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer on {address}/ping within {SERVE_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-4000:]}")


def _invoke(uri: str, model: str, request: dict, log: Path) -> dict:
    server, address = _serve(uri, model, log)
    try:
        _wait_until_up(server, address, log)
        answer = requests.post(f"{address}/invocations", json=request, timeout=120)
        assert answer.status_code == 200, f"{answer.status_code} {answer.text[:2000]}\n{log.read_text()[-3000:]}"
        return answer.json()
    finally:
        stop_process_group(server)


@pytest.mark.slow
def test_both_registered_models_serve_by_alias_as_the_docs_say(registered):
    root = registered["root"]
    generated = _invoke(registered["uri"], f"models:/{registry.POLICY_MODEL}@{registry.CHAMPION}", POLICY_REQUEST,
                        root / "serve-policy.log")
    assert list(generated) == ["predictions"]
    assert len(generated["predictions"]) == 1 and isinstance(generated["predictions"][0], str)

    scored = _invoke(registered["uri"], f"models:/{registry.SFT_MODEL}@{registry.CANDIDATE}", REWARD_REQUEST,
                     root / "serve-reward.log")
    pairs = REWARD_REQUEST["dataframe_records"]
    assert list(scored) == ["predictions"] and len(scored["predictions"]) == len(pairs)
    model = load_hydra(str(root / "sft"), heads=("reward",)).eval()
    own = reward_scores(model, [(p["prompt"], p["response"]) for p in pairs])
    assert scored["predictions"] == pytest.approx(own, abs=1e-4)

"""MLflow tracking: the tracker on a sqlite store, the tracked stages against a real `mlflow server`,
and a server that does not answer (the stage goes on, the records wait on disk and replay later)."""

import json
import math
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from conftest import KfpArtifact, free_port, stop_process_group, tiny_sft_config
from hydra_core import cli, registry, selection, stages
from hydra_core.config.settings import DataConfig
from hydra_core.tracking.mlflow_tracker import JOURNAL, PENDING_DIR, MlflowTracker, replay
from hydra_core.tracking.runs import (
    REUSED_TAG, Tracking, close_pipeline_run, kfp_run_tags, nest_reused_runs, open_pipeline_run, parent_from,
    pipeline_run, provenance)


def sqlite_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for entry in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return out


def journal_ops(pending: Path) -> list[str]:
    return [json.loads(line)["op"] for line in (pending / JOURNAL).read_text().splitlines()]


@pytest.fixture
def files(tmp_path):
    """A run's worth of things to log: a plot-like file and a JSONL table."""
    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+1=", "outcome": "win"}) + "\n" for i in range(3)))
    return tmp_path


def test_nested_run_with_metrics_artifacts_table_dataset_and_registered_version(tmp_path, files, monkeypatch):
    monkeypatch.chdir(files)
    uri = sqlite_uri(tmp_path)
    parent = MlflowTracker(uri, "pipeline", tmp_path / "p" / PENDING_DIR, system_metrics=False)
    run = MlflowTracker(uri, "stage", tmp_path / "s" / PENDING_DIR, parent_run_id=parent.run_id,
                        tags={"variant": "hydra"}, system_metrics=False)
    run.log_params({"steps": 3, "lr": 0.1})
    run.log_metrics({"train/loss": 2.0, "eval/win_rate": math.nan}, step=1)
    run.log_metrics({"train/loss": 1.0, "skipped": None}, step=2)
    run.log_artifact(files / "plot.png")
    run.log_table(files / "rows.jsonl", "eval/table.json")
    run.log_dataset(files / "rows.jsonl", "prompts_eval", "evaluation")
    version = run.register_model("policy", "plot.png", {"variant": "hydra"}, aliases=["candidate"])
    run.close()

    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["mlflow.parentRunId"] == parent.run_id
    assert got.data.params == {"steps": "3", "lr": "0.1"} and got.data.tags["variant"] == "hydra"
    assert [m.value for m in client.get_metric_history(run.run_id, "train/loss")] == [2.0, 1.0]
    assert math.isnan(got.data.metrics["eval/win_rate"]) and "skipped" not in got.data.metrics
    assert artifact_paths(client, run.run_id) == {"plot.png", "eval/table.json"}
    assert [(d.dataset.name, d.tags[0].value) for d in got.inputs.dataset_inputs] == [("prompts_eval", "evaluation")]
    assert version == "1" and client.get_model_version_by_alias("policy", "candidate").run_id == run.run_id
    # artifacts live beside the database, not in whatever directory the process ran from
    assert (tmp_path / "mlartifacts").is_dir() and not (files / "mlruns").exists()
    assert run.status() == {"state": "sent", "tracking_uri": uri, "run_id": run.run_id}


def test_the_experiment_opens_on_the_runs_table_not_the_genai_traces_page(tmp_path):
    uri = sqlite_uri(tmp_path)
    MlflowTracker(uri, "stage", tmp_path / "a" / PENDING_DIR, experiment="made-here", system_metrics=False).close()
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("made-here").tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before (by hand, or by an older version) gets the tag, and a kind a user chose is kept
    client.create_experiment("made-before")
    client.set_experiment_tag(client.create_experiment("chosen"), "mlflow.experimentKind", "genai_development")
    for name in ("made-before", "chosen"):
        MlflowTracker(uri, "stage", tmp_path / name / PENDING_DIR, experiment=name, system_metrics=False).close()
    assert client.get_experiment_by_name("made-before").tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment_by_name("chosen").tags["mlflow.experimentKind"] == "genai_development"


def test_no_tracking_uri_records_nothing(tmp_path, files, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = Tracking().tracker("stage", tmp_path)
    run.log_params({"a": 1})
    run.log_artifact(files / "plot.png")
    assert run.register_model("m", "x", {}) == "" and run.run_id == ""
    run.close()
    assert run.status()["state"] == "off" and not (tmp_path / PENDING_DIR).exists()


def test_the_exit_step_closes_what_a_failed_job_left_open(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = Tracking(sqlite_uri(tmp_path), "exit-test")
    tracking.parent_run_id = open_pipeline_run(tracking, "job-1", {}, {})
    finished = tracking.tracker("data-prep", tmp_path / "prep", system_metrics=False)
    finished.close("FINISHED")
    killed = tracking.tracker("hydra-sft", tmp_path / "sft", system_metrics=False)  # never closed: a killed step
    other_job = open_pipeline_run(tracking.top_level(), "job-2", {}, {})

    ended = close_pipeline_run(tracking, "job-1", "FAILED", "Task exit-handler-1 failed.")
    client = MlflowClient(sqlite_uri(tmp_path))
    assert set(ended) == {tracking.parent_run_id, killed.run_id}
    parent = client.get_run(tracking.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["hydra_rlhf.pipeline_state"] == "FAILED"
    assert parent.data.tags["hydra_rlhf.pipeline_error"] == "Task exit-handler-1 failed."
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert client.get_run(finished.run_id).info.status == "FINISHED"
    assert client.get_run(other_job).info.status == "RUNNING"  # another job's runs are not touched
    assert close_pipeline_run(tracking, "job-1", "FAILED") == []  # nothing left open

    assert close_pipeline_run(tracking, "job-2", "SUCCEEDED") == [other_job]
    assert client.get_run(other_job).info.status == "FINISHED"
    assert close_pipeline_run(Tracking("", "exit-test"), "job-1", "FAILED") == []  # tracking off


def test_a_parent_run_opened_by_a_step_ends_with_it(tmp_path, monkeypatch):
    """In a DAG with no step of its own for the parent run (data prep opens it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = Tracking(sqlite_uri(tmp_path), "parent-test")
    client = MlflowClient(sqlite_uri(tmp_path))
    with pipeline_run(tracking, "job-1") as done:
        assert client.get_run(done).info.status == "RUNNING"
    assert client.get_run(done).info.status == "FINISHED"
    with pytest.raises(ValueError), pipeline_run(tracking, "job-2") as broken:
        raise ValueError("the step failed")
    assert client.get_run(broken).info.status == "FAILED"
    handed_on = open_pipeline_run(tracking, "job-3", {}, {})
    assert client.get_run(handed_on).info.status == "RUNNING"  # the DAG's compare or exit step ends it
    with pipeline_run(Tracking(sqlite_uri(tmp_path), "parent-test", parent_run_id=done), "job-4") as given:
        assert given == done
    experiment = client.get_experiment_by_name("parent-test").experiment_id
    assert len(client.search_runs([experiment])) == 3  # a given parent is used, not a new one


def test_steps_nest_under_the_run_the_cluster_opened(tmp_path, monkeypatch):
    """Kubeflow's MLflow integration (KEP-12862) passes MLFLOW_TRACKING_URI and MLFLOW_RUN_ID to each task."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    cluster_run = client.create_run(client.create_experiment("cluster")).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", cluster_run)
    tracking = Tracking(experiment="cluster")
    with pipeline_run(tracking, "job-1") as tracking.parent_run_id:
        step = tracking.tracker("data-prep", tmp_path / "prep", system_metrics=False)
        step.close()
    assert tracking.parent_run_id == cluster_run
    # the pipeline's own step records its parameters on the cluster's run rather than opening a second parent
    assert open_pipeline_run(Tracking(experiment="cluster"), "job-1", {"sft_steps": 4}, {}) == cluster_run
    assert client.get_run(cluster_run).data.params["sft_steps"] == "4"
    assert client.get_run(step.run_id).data.tags["mlflow.parentRunId"] == cluster_run
    assert client.get_run(cluster_run).info.status == "RUNNING"  # the cluster's to end, not ours
    assert len(client.search_runs([client.get_experiment_by_name("cluster").experiment_id])) == 2
    elsewhere = Tracking(sqlite_uri(tmp_path / "other"), "cluster")  # a run on another server is not a parent
    (tmp_path / "other").mkdir()
    with pipeline_run(elsewhere, "job-2") as own:
        assert own not in ("", cluster_run)


def test_the_pipeline_run_records_its_parameters_what_ran_and_the_kfp_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HYDRA_RLHF_GIT_COMMIT", "0123abc")
    monkeypatch.setenv("HYDRA_RLHF_BUILT_IMAGE", "registry.example/hydra-rlhf:0.1.0-cpu")
    parameters = {"sft_steps": 20, "ppo_variants": ["hydra", "lora"], "ppo_config": {"top_p": 0.9}, "base_model": ""}
    parent = open_pipeline_run(Tracking(sqlite_uri(tmp_path), "records"), "job-1", parameters,
                               kfp_run_tags("4f2c", "https://kubeflow.example.com/pipeline/", ["img:cpu"]))
    run = MlflowClient(sqlite_uri(tmp_path)).get_run(parent)
    assert run.info.run_name == "job-1" and run.info.status == "RUNNING"
    assert run.data.params == {"sft_steps": "20", "ppo_variants": '["hydra", "lora"]', "ppo_config": '{"top_p": 0.9}',
                               "base_model": ""}
    assert {key: run.data.tags[key] for key in ("mlflow.source.git.commit", "hydra_rlhf.image", "hydra_rlhf.kfp_run_id",
                                                "hydra_rlhf.pipeline_job")} == {
        "mlflow.source.git.commit": "0123abc", "hydra_rlhf.image": "registry.example/hydra-rlhf:0.1.0-cpu",
        "hydra_rlhf.kfp_run_id": "4f2c", "hydra_rlhf.pipeline_job": "job-1"}
    assert run.data.tags["hydra_rlhf.version"] == metadata.version("hydra-rlhf")
    assert run.data.tags["hydra_rlhf.kfp_run_url"] == "https://kubeflow.example.com/pipeline/#/runs/details/4f2c"
    assert kfp_run_tags("4f2c") == {"hydra_rlhf.kfp_run_id": "4f2c"}  # no UI address given: no link
    assert open_pipeline_run(Tracking("", "records"), "job-2", parameters, {}) == ""  # tracking off


def test_outside_an_image_the_commit_is_the_checkouts(monkeypatch):
    monkeypatch.delenv("HYDRA_RLHF_GIT_COMMIT", raising=False)
    monkeypatch.delenv("HYDRA_RLHF_BUILT_IMAGE", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    tags = provenance()
    assert "hydra_rlhf.image" not in tags  # local processes run in no image
    if head.returncode == 0:  # a checkout (CI's clean clone is one); "+dirty" while tracked files are edited
        assert tags["mlflow.source.git.commit"].split("+")[0] == head.stdout.strip()


def test_a_cached_steps_run_is_nested_by_the_first_step_that_reads_its_output(tmp_path, monkeypatch):
    """Data prep and SFT log top-level runs (they take no parent id, so the cache can reuse them)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = Tracking(sqlite_uri(tmp_path), "cache")
    client = MlflowClient(sqlite_uri(tmp_path))
    prep = tracking.tracker("data-prep", tmp_path / "prep", system_metrics=False)
    prep.close()
    data = {"mlflow": {"run_id": prep.run_id}, "pipeline_run_id": ""}
    first = open_pipeline_run(tracking, "job-1", {}, {})
    assert parent_from("", None, data) == ""  # the cached step's output names no parent
    assert parent_from("", {"pipeline_run_id": first}, data) == first
    reader = Tracking(tracking.uri, "cache", first)
    assert nest_reused_runs(reader, data, None, {"mlflow": {"run_id": prep.run_id}}) == [prep.run_id]
    assert nest_reused_runs(reader, data) == []  # already nested
    assert client.get_run(prep.run_id).data.tags["mlflow.parentRunId"] == first
    # a retried pipeline run takes the output from the cache: the run stays where it was recorded, and the
    # new parent names it
    second = open_pipeline_run(tracking.top_level(), "job-2", {}, {})
    assert nest_reused_runs(Tracking(tracking.uri, "cache", second), data) == []
    assert client.get_run(prep.run_id).data.tags["mlflow.parentRunId"] == first
    assert client.get_run(second).data.tags[REUSED_TAG + "data-prep"] == prep.run_id
    assert nest_reused_runs(Tracking("", "cache", second), data) == []  # tracking off


def test_compare_settles_the_aliases_on_the_best_variant(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("policy")
    lows = {"lora": 0.62, "hydra": 0.31, "full": "None"}  # "None": every judgment failed
    versions = {variant: client.create_model_version("policy", str(tmp_path), tags={
                    "variant": variant, "eval/win_rate_low": str(low)}).version for variant, low in lows.items()}
    client.set_registered_model_alias("policy", "candidate", versions["hydra"])  # the last to register
    client.set_registered_model_alias("policy", "champion", versions["hydra"])
    tracking = Tracking(uri, "aliases-test")

    line = registry.settle_aliases(tracking, "policy", [*versions.values(), ""], 0.9)
    assert client.get_model_version_by_alias("policy", "candidate").version == versions["lora"]
    assert client.get_model_version_by_alias("policy", "champion").version == versions["hydra"]  # 0.62 < 0.9
    assert "unchanged" in line and f"version {versions['lora']} (lora" in line

    registry.settle_aliases(tracking, "policy", list(versions.values()), 0.5)
    assert client.get_model_version_by_alias("policy", "champion").version == versions["lora"]
    assert registry.settle_aliases(tracking, "policy", [""], 0.5) == ""  # nothing was registered
    assert "not settled" in registry.settle_aliases(tracking, "no-such-model", ["1"], 0.5)


def test_closing_and_settling_against_a_dead_server_warn_and_return_fast():
    dead = Tracking(f"http://127.0.0.1:{free_port()}", "dead")
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="could not be closed.*TrackingUnreachable"):
        assert close_pipeline_run(dead, "job-1", "SUCCEEDED") == []  # the exit step itself succeeds
    assert "not settled: TrackingUnreachable" in registry.settle_aliases(dead, "policy", ["1"], 0.5)
    assert time.perf_counter() - started < 30  # no minutes of retries


def test_failure_mid_run_journals_the_rest_and_replays_into_the_same_run(tmp_path, files):
    uri = sqlite_uri(tmp_path)
    run = MlflowTracker(uri, "stage", files / PENDING_DIR, system_metrics=False)
    run.log_metrics({"loss": 3.0}, step=1)

    def down(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    run._sender.client.log_batch = down
    with pytest.warns(RuntimeWarning, match="went away"):
        run.log_metrics({"loss": 2.0}, step=2)
    run.log_artifact(files / "plot.png", "plots")
    run.close()
    assert run.state == "pending" and journal_ops(files / PENDING_DIR) == ["start", "metrics", "artifact", "end"]

    assert replay(files / PENDING_DIR) == run.run_id  # the journal names the URI and the run
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [3.0, 2.0]
    assert artifact_paths(client, run.run_id) == {"plots/plot.png"}
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not (files / PENDING_DIR / JOURNAL).exists()  # sent once, never twice


def test_unreachable_server_the_stage_finishes_and_its_records_wait_on_disk(tmp_path, base_model_dir, arithmetic_dir,
                                                                            capsys):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "sft"
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(out))
    started = time.monotonic()
    with pytest.warns(RuntimeWarning, match="MLflow tracking at .* failed"):
        summary = stages.sft(cfg, Tracking(uri=dead), registered_model="hydra-sft-test")
    assert time.monotonic() - started < 120
    assert any(out.glob("*.safetensors"))  # trained and saved
    pending = out / PENDING_DIR
    assert summary["tracking"]["state"] == "pending" and summary["tracking"]["pending"] == str(pending / JOURNAL)
    assert json.loads((out / "sft_summary.json").read_text())["tracking"]["state"] == "pending"
    ops = journal_ops(pending)
    assert ops[0] == "start" and {"params", "metrics", "dataset", "artifact", "register"} <= set(ops)
    assert f"hydra-rlhf sync-tracking {pending}" in capsys.readouterr().out

    # later, with a store that answers
    uri = sqlite_uri(tmp_path)
    assert cli.main(["sync-tracking", str(pending), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])[0]
    assert run.info.run_name == "hydra-sft" and "train/loss" in run.data.metrics
    # every setting, and the finished stage's one-value figures, memory in MiB: params, not one-point charts
    one_off = {"memory/params", "memory/trainable_params", "memory/param_mib", "memory/trainable_param_mib",
               "memory/grad_mib", "memory/optimizer_mib", "memory/stage_peak_mib", "time/train_seconds",
               *(f"truncation/{split}/{n}" for split in ("demos_train", "pairs_train", "demos_eval", "pairs_eval")
                 for n in ("records", "prompts_cut", "responses_cut"))}
    assert set(run.data.params) == set(vars(cfg)) | one_off
    assert not one_off & set(run.data.metrics) and not any(k.endswith("_bytes") for k in run.data.metrics)
    assert 10 < float(run.data.params["memory/stage_peak_mib"]) < 2**20 and int(run.data.params["memory/params"]) > 0
    peak = client.get_metric_history(run.info.run_id, "memory/peak_mib")  # a curve, in MiB
    assert len(peak) >= 2 and all(10 < m.value < 2**20 for m in peak)
    [version] = client.search_model_versions("name='hydra-sft-test'")
    assert version.run_id == run.info.run_id and version.tags["variant"] == "hydra-sft"


def test_stage_cli_logs_to_mlflow_when_given_a_tracking_uri(tmp_path, hydra_sft_dir, arithmetic_dir):
    uri = sqlite_uri(tmp_path)
    out = tmp_path / "eval"
    assert cli.main(["eval", "--candidate", hydra_sft_dir, "--baseline", hydra_sft_dir, "--prompts", arithmetic_dir,
                     "--output-dir", str(out), "--max-prompts", "4", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])
    assert run.info.run_name == "pairwise-eval" and run.data.metrics["eval/win_rate"] == 0.5  # itself: all ties
    assert {"eval/report.html", "eval/judgments_table.json"} <= artifact_paths(client, run.info.run_id)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["prompts_eval"]
    assert json.loads((out / "eval_summary.json").read_text())["tracking"]["run_id"] == run.info.run_id
    # the settings of the judge it used (gold: none of its own), not the OpenAI or reward-model judge's
    params = run.data.params
    assert params["judge"] == "gold" and params["max_new_tokens"] == "6"
    assert not {"judge_model", "judge_base_url", "judge_api_key_env", "judge_cache", "reward_model"} & set(params)


def test_sync_tracking_refuses_a_folder_without_a_journal(tmp_path, capsys):
    assert cli.main(["sync-tracking", str(tmp_path)]) == 2
    assert "no such journal" in capsys.readouterr().err


# --- a real tracking server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: the workers go with it
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or too busy starting up to answer in 2 s
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server, timeout_s=20)
        log.close()


@pytest.mark.slow
def test_stages_log_to_a_live_server(mlflow_server, tmp_path, base_model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # what a pod gets from its platform
    tracking = Tracking(experiment="server-test")
    tracking.parent_run_id = open_pipeline_run(tracking, "pipeline-run", {}, {})  # compare_variants closes it
    data = stages.prepare_data(DataConfig(output_dir=str(tmp_path / "data"), max_records=200,
                                          arithmetic_eval_prompts=20), tracking)
    sft = stages.sft(tiny_sft_config(base_model_dir, str(tmp_path / "data"), str(tmp_path / "sft")), tracking,
                     registered_model="server-sft")
    selection.compare_variants(tracking, [{"variant": "none", "win_rate": 0.5, "win_rate_low": 0.4}], tmp_path / "cmp")

    client = MlflowClient(mlflow_server)
    parent = client.get_run(tracking.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["none/eval/win_rate"] == 0.5
    assert "none/win_rate" not in parent.data.metrics  # the eval run's names, under the variant's
    for summary, name in ((data, "data-prep"), (sft, "hydra-sft")):
        run = client.get_run(summary["tracking"]["run_id"])
        assert run.info.run_name == name and run.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
    assert {d.dataset.name for d in client.get_run(data["tracking"]["run_id"]).inputs.dataset_inputs} == {
        "pairs_train", "pairs_eval", "demos_train", "demos_eval", "prompts_train", "prompts_eval"}
    prep = client.get_run(data["tracking"]["run_id"]).data  # the counts, one value each: params
    assert int(prep.params["data/pairs_train"]) == data["data/pairs_train"] > 0
    assert "data/pairs_train" not in prep.metrics
    sft_run = sft["tracking"]["run_id"]
    assert len(client.get_metric_history(sft_run, "train/loss")) >= 2
    # the server stores the artifacts (--serve-artifacts): download one back through it
    assert "model/config.json" in artifact_paths(client, sft_run)
    config = client.download_artifacts(sft_run, "model/config.json", str(tmp_path))
    assert json.loads(Path(config).read_text())["model_type"] == "llama"
    version = client.get_model_version("server-sft", sft["tracking"]["model_version"])
    assert version.source.startswith("models:/") and version.tags["pipeline_run_id"] == tracking.parent_run_id


@pytest.mark.slow
def test_pending_records_replay_into_a_live_server(mlflow_server, tmp_path, files):
    run = MlflowTracker(f"http://127.0.0.1:{free_port()}", "offline", files / PENDING_DIR, experiment="server-test")
    run.log_params({"steps": 2})
    run.log_metrics({"objective/kl": 0.5}, step=1)
    run.log_artifact(files / "plot.png")
    run.close()
    assert run.state == "pending" and run.run_id == ""

    run_id = replay(files / PENDING_DIR, mlflow_server)
    got = MlflowClient(mlflow_server).get_run(run_id)
    assert got.data.params == {"steps": "2"} and got.data.metrics == {"objective/kl": 0.5}
    assert got.info.run_name == "offline" and got.info.status == "FINISHED"


def test_sync_to_a_server_still_down_is_one_line_and_keeps_the_records(tmp_path, files, capsys):
    with pytest.warns(RuntimeWarning, match="keeps its records"):
        run = MlflowTracker(f"http://127.0.0.1:{free_port()}", "offline", files / PENDING_DIR)
    run.log_metrics({"loss": 1.0}, step=1)
    run.close()
    journal = (files / PENDING_DIR / JOURNAL).read_text()
    assert cli.main(["sync-tracking", str(files / PENDING_DIR), "--tracking-uri",
                     f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "sending stopped at record 1 of 3" in err and err.count("\n") == 1 and "Traceback" not in err
    assert (files / PENDING_DIR / JOURNAL).read_text() == journal  # nothing sent, nothing lost


def test_a_sync_that_stops_part_way_sends_each_record_once_when_run_again(tmp_path, files, monkeypatch):
    from hydra_core.tracking import mlflow_tracker

    with pytest.warns(RuntimeWarning, match="keeps its records"):
        run = MlflowTracker(f"http://127.0.0.1:{free_port()}", "offline", files / PENDING_DIR)
    for step in range(4):
        run.log_metrics({"loss": float(step)}, step=step)
    run.close()
    original, calls = mlflow_tracker._Sender.apply, {"n": 0}

    def flaky(self, op, args):
        calls["n"] += 1
        if calls["n"] == 4:  # start and two metric rows go through, then the server drops
            raise ConnectionError("connection reset")
        return original(self, op, args)

    monkeypatch.setattr(mlflow_tracker._Sender, "apply", flaky)
    uri = sqlite_uri(tmp_path)
    with pytest.raises(mlflow_tracker.TrackingUnreachable, match="stopped at record 4 of 6"):
        replay(files / PENDING_DIR, uri)
    monkeypatch.setattr(mlflow_tracker._Sender, "apply", original)
    run_id = replay(files / PENDING_DIR, uri)
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.0, 1.0, 2.0, 3.0]
    assert len(client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])) == 1


@pytest.mark.slow
def test_a_pipelines_runs_name_their_inputs_as_typed_or_as_mlflow_references_not_local_paths(tmp_path, monkeypatch):
    from components.build import load

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = sqlite_uri(tmp_path)
    tracking = dict(tracking_uri=uri, experiment="lineage")
    data = KfpArtifact(tmp_path / "kfp" / "data")
    prep = stages.prepare_data(DataConfig(output_dir=data.path, max_records=200, arithmetic_eval_prompts=8),
                               Tracking(uri, "lineage"), sources={data.path: stages.OWN_OUTPUT["data"]})
    data.metadata["mlflow"] = prep["tracking"]
    prep_id = prep["tracking"]["run_id"]
    sft = KfpArtifact(tmp_path / "kfp" / "sft")
    settings = dict(steps=2, demo_batch_size=8, pair_batch_size=4)
    sft_id = load("hydra_sft").python_func(
        data=data, model=sft, metrics=KfpArtifact(tmp_path / "m1"), base_preset="tiny-llama", registered_model="sft",
        config={"eval_every": 2, "log_every": 1, "greedy_eval_prompts": 4, "checkpoint_every": 0}, **settings,
        **tracking)
    report = KfpArtifact(tmp_path / "kfp" / "report.html")
    evaluation = KfpArtifact(tmp_path / "kfp" / "eval")
    eval_id = load("pairwise_eval").python_func(
        data=data, candidate=sft, baseline=sft, evaluation=evaluation, report=report,
        metrics=KfpArtifact(tmp_path / "m2"), max_prompts=4, **tracking)
    (tmp_path / "kfp" / "decision").mkdir()  # kfp makes an output's folder
    decision = KfpArtifact(tmp_path / "kfp" / "decision" / "decision.md")
    load("register_model").python_func(evaluation=evaluation, decision=decision, policy_run_id=sft_id,
                                       registered_model="policy", champion_threshold=-1.0, **tracking)

    client = MlflowClient(uri, registry_uri=uri)
    trained = client.get_run(sft_id)
    assert trained.data.params["model"] == "preset:tiny-llama"  # as typed, not the folder it was built in
    assert trained.data.params["data"] == f"runs:/{prep_id}/data"
    assert trained.data.params["output_dir"] == f"runs:/{sft_id}/model"
    sources = {json.loads(d.dataset.source)["uri"] for d in trained.inputs.dataset_inputs}
    assert sources == {f"runs:/{prep_id}/data/demos_train.jsonl", f"runs:/{prep_id}/data/pairs_train.jsonl"}
    assert {"data/demos_train.jsonl", "data/manifest.json"} <= artifact_paths(client, prep_id)  # what they name
    judged = client.get_run(eval_id).data.params
    assert judged["candidate"] == judged["baseline"] == f"runs:/{sft_id}/model"
    assert judged["prompts"] == f"runs:/{prep_id}/data" and judged["output_dir"] == f"runs:/{eval_id}/eval"
    [sft_version] = client.search_model_versions("name='sft'")
    assert (sft_version.tags["data"], sft_version.tags["base_model"]) == (f"runs:/{prep_id}/data", "preset:tiny-llama")
    [policy] = client.search_model_versions("name='policy'")
    assert (policy.tags["data"], policy.tags["baseline"]) == (f"runs:/{prep_id}/data", f"runs:/{sft_id}/model")
    assert client.get_run(prep_id).data.params["output_dir"] == f"runs:/{prep_id}/data"
    for run_id in (prep_id, sft_id, eval_id):
        assert not [v for v in client.get_run(run_id).data.params.values() if str(tmp_path) in v]

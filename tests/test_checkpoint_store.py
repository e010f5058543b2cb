"""Checkpoints in durable storage (`checkpoint_uri`): a stage that dies after a checkpoint and is started again
with the same location, in a fresh output folder as a retried pod is, resumes exactly, in the same MLflow run."""

import json
from pathlib import Path

import fsspec
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from conftest import logged_rows, tiny_ppo_config
from hydra_core import checkpoint, cli, stages
from hydra_core.checkpoint_store import RESUMED_PARAM, RESUMED_TAG, RUN_RECORD, CheckpointStore, step_location, \
    uri_problem
from hydra_core.ppo import trainer
from hydra_core.tracking.runs import Tracking


def test_a_location_that_cannot_hold_checkpoints_is_named_with_the_reason(tmp_path):
    assert "Protocol not known: foo" in uri_problem("foo://bucket/x")
    assert "s3fs" in uri_problem("s3://bucket/x")  # fsspec names the driver to install
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert uri_problem(str(blocker / "checkpoints")).startswith("cannot be written (")
    assert uri_problem(str(tmp_path / "new" / "folder")) == "" and not (tmp_path / "new" / "folder" / ".hydra-rlhf"
                                                                        "-write-test").exists()
    assert uri_problem("memory://hydra-test/probe") == ""


@pytest.mark.parametrize("uri,says", [("foo://bucket/x", "Protocol not known: foo"), ("s3://bucket/x", "s3fs")])
def test_a_bad_checkpoint_uri_is_one_line_naming_the_flag_before_any_work(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                         capsys, uri, says):
    out = tmp_path / "ppo"
    assert cli.main(["ppo", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--output-dir", str(out),
                     "--checkpoint-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--checkpoint-uri" in err and says in err, err
    assert not out.exists()


def test_an_unwritable_checkpoint_uri_stops_the_stage_before_any_work(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                      monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    calls = []
    monkeypatch.setattr(stages, "run_ppo", lambda *a, **k: calls.append(a))
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / "ppo", checkpoint_uri=str(blocker / "x"))
    with pytest.raises(ValueError, match=r"^checkpoint_uri .*a-file/x: cannot be written \(") as e:
        stages.ppo(cfg, Tracking())
    assert "\n" not in str(e.value) and calls == [] and not (tmp_path / "ppo").exists()


def test_a_step_location_is_the_same_for_the_same_inputs_and_differs_for_others():
    inputs = {"variant": "hydra", "steps": 4, "pipeline_run": "/root/hydra-rlhf-2026-12-06-10/open-pipeline-run/x"}
    here = step_location("s3://bucket/ckpt/", "hydra-ppo-hydra", inputs)
    assert here == step_location("s3://bucket/ckpt", "hydra-ppo-hydra", dict(reversed(inputs.items())))
    assert here.startswith("s3://bucket/ckpt/hydra-ppo-hydra-")
    other_run = {**inputs, "pipeline_run": "/root/hydra-rlhf-2026-12-06-11/open-pipeline-run/x"}
    assert step_location("s3://bucket/ckpt", "hydra-ppo-hydra", other_run) != here
    assert step_location("s3://bucket/ckpt", "hydra-ppo-lora", inputs) != here


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way out treats it as a stage error."""


@pytest.mark.parametrize("where", ["memory", "folder"])
def test_a_ppo_stage_killed_after_a_checkpoint_resumes_from_durable_storage_exactly(
        tmp_path, hydra_sft_dir, arithmetic_dir, monkeypatch, where):
    """A remote store (fsspec's in-memory one: copied out after each checkpoint and back in before the retry) and
    a folder (a mounted volume: written in place). The retry runs in a new output folder, as a retried pod does."""
    uri = f"memory://ckpt-{tmp_path.name}" if where == "memory" else str(tmp_path / "volume")
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume-test")
    settings = dict(steps=4, checkpoint_every=2, eval_every=2)
    reference = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / "uninterrupted", **settings)
    stages.ppo(reference, Tracking())

    iteration = trainer.ppo_iteration

    def dies_at_step_3(cfg, stack, prompts, optimizer, scheduler, step, *args):
        if step == 3:
            raise Killed
        return iteration(cfg, stack, prompts, optimizer, scheduler, step, *args)

    monkeypatch.setattr(trainer, "ppo_iteration", dies_at_step_3)
    first = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / "attempt-1", checkpoint_uri=uri, **settings)
    with pytest.raises(Killed):
        stages.ppo(first, tracking)
    store = CheckpointStore(uri, first.output_dir)
    fs, root = fsspec.core.url_to_fs(uri)
    assert fs.exists(f"{root}/{checkpoint.DIRECTORY}/step-000002/{checkpoint.STATE}")
    run_id = store.recorded_run()
    assert run_id

    monkeypatch.setattr(trainer, "ppo_iteration", iteration)
    second = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / "attempt-2", checkpoint_uri=uri, **settings)
    summary = stages.ppo(second, tracking)

    assert summary["tracking"]["run_id"] == run_id  # the same MLflow run, continued
    mine, theirs = (load_file(Path(c.output_dir) / "model.safetensors") for c in (second, reference))
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    assert logged_rows(Path(second.output_dir) / "metrics.jsonl") == logged_rows(
        Path(reference.output_dir) / "metrics.jsonl")
    client = MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[RESUMED_TAG] == "2" and run.data.params[RESUMED_PARAM] == "2"
    for key in ("objective/kl", "loss/policy", "eval/gold_accuracy"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == sorted(set(steps)), (key, steps)  # no point twice
    assert sorted(m.step for m in client.get_metric_history(run_id, "objective/kl")) == [1, 2, 3, 4]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert not fs.exists(root)  # the finished stage removed its checkpoints and its run record


def test_the_run_record_and_the_checkpoints_go_where_the_uri_says(tmp_path):
    store = CheckpointStore(str(tmp_path / "volume"), tmp_path / "out")
    assert store.local == tmp_path / "volume" and store.durable and not store.remote
    store.record_run("abc")
    assert json.loads((tmp_path / "volume" / RUN_RECORD).read_text()) == {"run_id": "abc"}
    remote = CheckpointStore("memory://records/x", tmp_path / "out")
    assert remote.local == tmp_path / "out" and remote.remote and remote.recorded_run() == ""
    plain = CheckpointStore("", tmp_path / "out")
    assert plain.local == tmp_path / "out" and not plain.durable and plain.recorded_run() == ""

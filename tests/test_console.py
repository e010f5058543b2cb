"""The console of `hydra-rlhf run` (pipelines/console.py), fed lines recorded from kfp's local runner
(colour codes, executor inputs, tqdm updates, a failed task): what reaches the terminal, what each
step's log file holds."""

import builtins
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelines.console import ROOT, TASK_TQDM_MININTERVAL_S, Console, console_for, key_figure

# `hydra-rlhf run`'s default pipeline, from its start to the data-prep step's end; {out} the output
# folder, {run} the pipeline run's folder under it
DATA_PREP = """\
04:20:58.226 - INFO - Running pipeline: \x1b[95m'hydra-rlhf'\x1b[0m
--------------------------------------------------------------------------------
04:20:58.230 - INFO - Executing task \x1b[96m'data-prep'\x1b[0m
04:20:58.230 - INFO - Streamed logs:

    [KFP Executor 2026-11-22 04:20:58,288 INFO]: Looking for component `data_prep` in --component_module_path `/tmp/tmp.MvySAbsapx/ephemeral_component.py`
    [KFP Executor 2026-11-22 04:20:58,288 INFO]: Loading KFP component "data_prep" from /tmp/tmp.MvySAbsapx/ephemeral_component.py (directory "/tmp/tmp.MvySAbsapx" and module name "ephemeral_component")
    [KFP Executor 2026-11-22 04:20:58,289 INFO]: Got executor_input:
    {
        "inputs": {
            "parameterValues": {
                "data_format": "arithmetic",
                "experiment": "hydra-rlhf",
                "seed": 0,
                "parent_run_id": "",
                "config": {},
                "eval_fraction": 0.05,
                "pipeline_run_name": "hydra-rlhf-2026-11-22-04-20-58-225981",
                "tracking_uri": "sqlite:///{out}/mlflow.db",
                "dataset": "",
                "dataset_split": "train",
                "max_records": 0
            }
        },
        "outputs": {
            "parameters": {
                "parent_run_id": {
                    "outputFile": "{run}/data-prep/parent_run_id"
                },
                "run_id": {
                    "outputFile": "{run}/data-prep/run_id"
                }
            },
            "artifacts": {
                "metrics": {
                    "artifacts": [
                        {
                            "name": "metrics",
                            "type": {
                                "schemaTitle": "system.Metrics",
                                "schemaVersion": "0.0.1"
                            },
                            "uri": "{run}/data-prep/metrics",
                            "metadata": {}
                        }
                    ]
                },
                "data": {
                    "artifacts": [
                        {
                            "name": "data",
                            "type": {
                                "schemaTitle": "system.Dataset",
                                "schemaVersion": "0.0.1"
                            },
                            "uri": "{run}/data-prep/data",
                            "metadata": {}
                        }
                    ]
                }
            },
            "outputFile": "{run}/data-prep/executor_output.json"
        }
    }
    2026/11/22 04:21:00 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
    2026/11/22 04:21:00 INFO mlflow.store.db.utils: Updating database tables
    2026/11/22 04:21:01 INFO mlflow.system_metrics.system_metrics_monitor: Skip logging GPU metrics. Set logger level to DEBUG for more details.
    2026/11/22 04:21:01 INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring system metrics.
    2026/11/22 04:21:02 INFO mlflow.system_metrics.system_metrics_monitor: Stopping system metrics monitoring...
    2026/11/22 04:21:02 INFO mlflow.system_metrics.system_metrics_monitor: Successfully terminated system metrics monitoring!
    [KFP Executor 2026-11-22 04:21:02,368 INFO]: Wrote executor output file to {run}/data-prep/executor_output.json.
    

04:21:03.023 - INFO - Task \x1b[96m'data-prep'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
04:21:03.024 - INFO - Task \x1b[96m'data-prep'\x1b[0m outputs:
    parent_run_id: 'c6f92f5f125c442e873454fe5832eda5'
    run_id: '170a3e6e633341e0bdd2fb5dea40cd43'
    metrics: Metrics( name='metrics',
                      uri='{run}/data-prep/metrics',
                      metadata={'data/demos_train': 7700.0, 'data/pairs_train': 15400.0, 'data/pairs_eval': 800.0, 'data/prompts_train': 7700.0, 'data/prompts_eval': 400.0, 'data/demos_eval': 400.0} )
    data: Dataset( name='data',
                   uri='{run}/data-prep/data',
                   metadata={'data/demos_train': 7700.0, 'data/pairs_train': 15400.0, 'data/pairs_eval': 800.0, 'data/prompts_train': 7700.0, 'data/prompts_eval': 400.0, 'mlflow': {'tracking_uri': 'sqlite:///{out}/mlflow.db', 'state': 'sent', 'run_id': '170a3e6e633341e0bdd2fb5dea40cd43'}, 'data/demos_eval': 400.0} )
--------------------------------------------------------------------------------
"""
DATA_PREP_OUTPUT = {"parameterValues": {"parent_run_id": "c6f92f5f125c442e873454fe5832eda5"},
                    "artifacts": {"metrics": {"artifacts": [{"name": "metrics", "metadata": {
                        "data/pairs_train": 15400.0, "data/pairs_eval": 800.0, "data/demos_train": 7700.0,
                        "data/demos_eval": 400.0, "data/prompts_train": 7700.0, "data/prompts_eval": 400.0}}]}}}

# a Hydra-SFT step that fails on a base model that is not there; {executor_input} its JSON
FAILED_SFT = """\
04:46:56.959 - INFO - Executing task \x1b[96m'hydra-sft'\x1b[0m
04:46:56.959 - INFO - Streamed logs:

    [KFP Executor 2026-11-22 04:46:57,019 INFO]: Looking for component `hydra_sft` in --component_module_path `/tmp/tmp.8g6LnllBF8/ephemeral_component.py`
    [KFP Executor 2026-11-22 04:46:57,019 INFO]: Loading KFP component "hydra_sft" from /tmp/tmp.8g6LnllBF8/ephemeral_component.py (directory "/tmp/tmp.8g6LnllBF8" and module name "ephemeral_component")
    [KFP Executor 2026-11-22 04:46:57,020 INFO]: Got executor_input:
{executor_input}
    2026/11/22 04:47:04 INFO mlflow.system_metrics.system_metrics_monitor: Skip logging GPU metrics. Set logger level to DEBUG for more details.
    2026/11/22 04:47:04 INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring system metrics.
    2026/11/22 04:47:04 INFO mlflow.system_metrics.system_metrics_monitor: Stopping system metrics monitoring...
    2026/11/22 04:47:04 INFO mlflow.system_metrics.system_metrics_monitor: Successfully terminated system metrics monitoring!
    Traceback (most recent call last):
      File "<frozen runpy>", line 198, in _run_module_as_main
      File "<frozen runpy>", line 88, in _run_code
      File "/work/main/.venv/lib/python3.11/site-packages/kfp/dsl/executor_main.py", line 109, in <module>
        executor_main()
      File "/work/main/.venv/lib/python3.11/site-packages/kfp/dsl/executor_main.py", line 101, in executor_main
        output_file = executor.execute()
                      ^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/kfp/dsl/executor.py", line 453, in execute
        result = self.func(**func_kwargs)
                 ^^^^^^^^^^^^^^^^^^^^^^^^
      File "/tmp/tmp.8g6LnllBF8/ephemeral_component.py", line 39, in hydra_sft
        summary = stages.sft(cfg, Tracking(tracking_uri, experiment, parent), registered_model)
                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/hydra_core/stages.py", line 110, in sft
        summary = run_sft(cfg, run)
                  ^^^^^^^^^^^^^^^^^
      File "/work/main/hydra_core/sft/trainer.py", line 134, in run_sft
        model = load_hydra(cfg.model, heads=heads, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/hydra_core/models/hydra.py", line 183, in load_hydra
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/models/auto/tokenization_auto.py", line 810, in from_pretrained
        config = PreTrainedConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/configuration_utils.py", line 886, in from_pretrained
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
                              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/configuration_utils.py", line 936, in get_config_dict
        config_dict, kwargs = cls._get_config_dict(pretrained_model_name_or_path, **kwargs)
                              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/configuration_utils.py", line 988, in _get_config_dict
        resolved_config_file = cached_file(
                               ^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 370, in cached_file
        file = cached_files(path_or_repo_id=path_or_repo_id, filenames=[filename], **kwargs)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 595, in cached_files
        raise OSError(f"{e}") from e
    OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/tmp/no-such-model'. Use `repo_type` argument if needed.
    

04:47:05.895 - ERROR - Task \x1b[96m'hydra-sft'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
--------------------------------------------------------------------------------
"""

START = "04:21:03.025 - INFO - Executing task \x1b[96m'{name}'\x1b[0m\n04:21:03.025 - INFO - Streamed logs:\n\n"
GOT_INPUT = "    [KFP Executor 2026-11-22 04:21:03,082 INFO]: Got executor_input:\n"
END = "04:26:11.666 - INFO - Task \x1b[96m'{name}'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
SFT_PROGRESS = """\
    hydra training:   0%|          | 0/1500 [00:00<?, ?it/s]
    hydra training:  16%|█▌        | 233/1500 [00:41<03:35,  5.89it/s, acc=0.78, loss=1.191]
    hydra training:  17%|█▋        | 250/1500 [00:44<03:29,  5.95it/s, acc=0.78, loss=1.158]
"""
PPO_LINES = """\
    Loading weights: 100%|██████████| 38/38 [00:00<00:00, 5584.57it/s]
    /work/main/.venv/lib/python3.11/site-packages/transformers/modeling_utils.py:3303: FutureWarning: `is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead.
      warnings.warn(
    
    PPO ({variant}):   8%|▊         | 1/12 [00:03<00:37,  3.36s/it]
                                                               
    step 1/12 | score +0.470 | kl 0.0000 | clipfrac 0.100 | eos 1.00 | gen 0.2s score 0.4s train 2.8s | 13.0 ms/sample | peak 764 MiB
"""
KL_WARNING = (f"    {ROOT}/hydra_core/ppo/trainer.py:220: UserWarning: PPO step {{step}}: KL 0.470 is past the ceiling "
              "0.4; the policy is drifting from the reference (raise --kl-coef?)\n      warnings.warn(\n")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(console: Console, text: str) -> None:
    """Write `text` as kfp does: a task's line in two writes, kfp's indent and then the line."""
    for line in text.splitlines(keepends=True):
        if line.startswith("    "):
            console.write("    ")
        console.write(line.removeprefix("    "))


def executor_input(folder, **parameters) -> str:
    """A task's executor input as kfp's executor logs it: JSON, indented by kfp."""
    spec = {"inputs": {"parameterValues": parameters}, "outputs": {"outputFile": f"{folder}/executor_output.json"}}
    return "".join(f"    {line}\n" for line in json.dumps(spec, indent=4).splitlines())


def data_prep(tmp_path) -> tuple[str, str]:
    """The recorded data-prep step, up to its end and from it, its outputs written where it said."""
    run = tmp_path / "pipeline" / "hydra-rlhf-2026-11-22-04-20-58-225981"
    (run / "data-prep").mkdir(parents=True)
    (run / "data-prep" / "executor_output.json").write_text(json.dumps(DATA_PREP_OUTPUT))
    text = DATA_PREP.replace("{run}", str(run)).replace("{out}", str(tmp_path))
    end = text.index("04:21:03.023 - INFO - Task")
    return text[:end], text[end:]


def test_a_step_is_a_line_as_it_starts_and_one_as_it_ends_with_its_figure_and_its_log_holds_all(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    console = Console(terminal, tmp_path / "logs", clock=clock)
    running, ended = data_prep(tmp_path)
    feed(console, running)
    clock.now = 4.8
    feed(console, ended)
    console.finish()
    printed = terminal.getvalue()
    pipeline, started, done = printed.splitlines()
    assert pipeline.endswith(f"pipeline               started; a log per step in {tmp_path / 'logs'}")
    assert started.endswith("data-prep              started")
    assert done.endswith("data-prep              done in 5 s: pairs 15400/800, demos 7700/400, prompts 7700/400 "
                         "(train/eval)")
    assert not [s for s in ("executor", "{", "\x1b", "mlflow", "KFP") if s in printed]
    log = (tmp_path / "logs" / "data-prep.log").read_text()
    assert log.startswith("04:20:58.230 - INFO - Executing task 'data-prep'\n")
    assert '\n[KFP Executor 2026-11-22 04:20:58,289 INFO]: Got executor_input:\n{\n    "inputs": {' in log
    assert "\n2026/11/22 04:21:00 INFO mlflow.store.db.utils: Creating initial MLflow database tables...\n" in log
    assert "Task 'data-prep' finished with status SUCCESS\n" in log and "metadata={'data/demos_train': 7700.0" in log
    assert "\x1b" not in log and log.endswith("-" * 80 + "\n")
    assert "Running pipeline: 'hydra-rlhf'" in (tmp_path / "logs" / "pipeline.log").read_text()


def test_on_a_terminal_the_running_step_has_one_progress_line_redrawn_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    terminal = Terminal()
    console = Console(terminal, tmp_path / "logs")
    sft = tmp_path / "pipeline" / "run" / "hydra-sft"
    feed(console, START.format(name="hydra-sft") + GOT_INPUT + executor_input(sft) + SFT_PROGRESS)
    started, progress = terminal.getvalue().split("\n")
    feed(console, END.format(name="hydra-sft"))
    console.finish()
    assert started.endswith("hydra-sft              started")
    redraws = terminal.getvalue().split("\n")[1].split("\r\x1b[K")
    assert len(redraws) == 5  # three bars, each over the last, then cleared for the step's end
    assert redraws[3].endswith("hydra-sft              hydra training:  17%|█▋        | 250/1500 [00:44<03:29,  "
                               "5.95it/s, acc=0.78, loss=1.158]")
    assert redraws[4].endswith("hydra-sft              done in 0 s")
    assert (tmp_path / "logs" / "hydra-sft.log").read_text().count("hydra training:") == 3


def test_off_a_terminal_progress_is_a_line_only_after_a_quiet_while(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    console = Console(terminal, tmp_path / "logs", clock=clock)
    feed(console, START.format(name="hydra-sft") + GOT_INPUT + executor_input(tmp_path / "hydra-sft"))
    for now, bar in zip((10, 29, 31, 40), SFT_PROGRESS.splitlines(keepends=True) + [SFT_PROGRESS.splitlines()[-1]]):
        clock.now = now
        feed(console, bar)
    clock.now = 65
    feed(console, END.format(name="hydra-sft"))
    console.finish()
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in terminal.getvalue()
    assert lines[1].endswith("hydra-sft              hydra training:  17%|█▋        | 250/1500 [00:44<03:29,  "
                             "5.95it/s, acc=0.78, loss=1.158]")
    assert lines[2].endswith("hydra-sft              done in 1 min 05 s")


def test_the_warnings_of_this_projects_code_are_shown_once_and_library_chatter_is_not(tmp_path):
    terminal = io.StringIO()
    console = Console(terminal, tmp_path / "logs")
    feed(console, START.format(name="hydra-ppo") + GOT_INPUT + executor_input(tmp_path / "hydra-ppo", variant="hydra")
         + PPO_LINES.format(variant="hydra") + KL_WARNING.format(step=3) + KL_WARNING.format(step=4)
         + "    MLflow: pending: ConnectionError: refused; the records are in /x/mlflow_pending/journal.jsonl; "
           "replay them with: hydra-rlhf sync-tracking /x/mlflow_pending\n"
         + END.format(name="hydra-ppo"))
    console.finish()
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[1].endswith("hydra-ppo              warning: UserWarning: PPO step 3: KL 0.470 is past the ceiling 0.4; "
                             "the policy is drifting from the reference (raise --kl-coef?)")
    assert lines[2].endswith("replay them with: hydra-rlhf sync-tracking /x/mlflow_pending")
    log = (tmp_path / "logs" / "hydra-ppo.log").read_text()
    assert "FutureWarning: `is_gradient_checkpointing`" in log and "PPO step 4: KL" in log and "step 1/12 |" in log


def test_a_failed_step_names_its_log_and_keeps_its_last_lines(tmp_path):
    terminal, clock = io.StringIO(), Clock()
    console = Console(terminal, tmp_path / "logs", clock=clock)
    failing = FAILED_SFT.replace("{executor_input}", executor_input(tmp_path / "hydra-sft").rstrip("\n"))
    end = failing.index("04:47:05.895")
    feed(console, failing[:end])
    clock.now = 8.9
    feed(console, failing[end:])
    console.finish()
    [failed] = console.failed
    assert failed.log == tmp_path / "logs" / "hydra-sft.log"
    assert terminal.getvalue().splitlines()[-1].endswith(f"hydra-sft              FAILED after 9 s; its log: {failed.log}")
    tail = list(failed.tail)
    assert len(tail) == 20 and tail[-2] == "    raise OSError(f\"{e}\") from e"
    assert tail[-1] == ("OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/tmp/no-such-model'. "
                        "Use `repo_type` argument if needed.")
    assert "Traceback (most recent call last):\n  File" in failed.log.read_text()


def test_the_variants_loop_runs_at_once_in_threads_and_each_variant_has_its_own_log(tmp_path):
    """kfp runs the loop's iterations in two threads; each step's lines come from its thread."""
    terminal = io.StringIO()
    console = Console(terminal, tmp_path / "logs")
    run = tmp_path / "pipeline" / "run"
    threads = {"lora": ThreadPoolExecutor(1), "hydra": ThreadPoolExecutor(1)}
    steps = [(variant, START.format(name="hydra-ppo") + GOT_INPUT
              + executor_input(run / f"for-loop-2-iteration-{i}" / "hydra-ppo", variant=variant))
             for i, variant in enumerate(threads)]
    steps += [(variant, PPO_LINES.format(variant=variant)) for variant in threads]
    steps += [(variant, END.format(name="hydra-ppo")) for variant in reversed(threads)]
    for variant, text in steps:  # interleaved, line by line
        for line in text.splitlines(keepends=True):
            threads[variant].submit(feed, console, line).result()
    console.finish()
    assert [line.split(maxsplit=1)[1] for line in terminal.getvalue().splitlines()] == [
        "hydra-ppo [lora]       started", "hydra-ppo [hydra]      started",
        "hydra-ppo [hydra]      done in 0 s", "hydra-ppo [lora]       done in 0 s"]
    for variant in threads:
        log = (tmp_path / "logs" / f"hydra-ppo-{variant}.log").read_text()
        assert f"PPO ({variant})" in log and f'"variant": "{variant}"' in log
        assert log.count("Executing task") == 1 and log.count("PPO (") == 1


def test_a_step_is_named_by_its_component_and_the_sft_steps_by_what_they_train(tmp_path):
    """kfp numbers a component's later tasks (hydra-sft-2, the second variants loop's hydra-ppo-2); the
    console names the step, the SFT component's other modes by what they train, and the judging of
    Hydra-SFT outside the loop by its candidate."""
    terminal = io.StringIO()
    console = Console(terminal, tmp_path / "logs")
    run = tmp_path / "pipeline" / "run"
    def judged(candidate: str, folder) -> str:  # a pairwise-eval step's input: its baseline comes first
        artifacts = {name: {"artifacts": [{"name": "model", "metadata": {"variant": variant}}]}
                     for name, variant in (("baseline", "sft"), ("candidate", candidate))}
        spec = {"inputs": {"parameterValues": {}, "artifacts": artifacts},
                "outputs": {"outputFile": f"{folder}/executor_output.json"}}
        return "".join(f"    {line}\n" for line in json.dumps(spec, indent=4).splitlines())

    steps = [("hydra-sft-2", executor_input(run / "hydra-sft-2", mode="sft")),
             ("hydra-sft-3", executor_input(run / "hydra-sft-3", mode="rm")),
             ("pairwise-eval", judged("hydra-sft", run / "pairwise-eval")),
             ("hydra-ppo-2", executor_input(run / "for-loop-6-iteration-0" / "hydra-ppo-2", variant="hydra-grpo")),
             ("pairwise-eval-2", judged("lora", run / "for-loop-3-iteration-1" / "pairwise-eval-2"))]
    for name, given in steps:
        feed(console, START.format(name=name) + GOT_INPUT + given + END.format(name=name))
    console.finish()
    assert [line.split(maxsplit=1)[1] for line in terminal.getvalue().splitlines()][::2] == [
        "sft                    started", "reward-model           started", "pairwise-eval [hydra-sft] started",
        "hydra-ppo [hydra-grpo] started", "pairwise-eval [lora]   started"]
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {
        "sft.log", "reward-model.log", "pairwise-eval-hydra-sft.log", "hydra-ppo-hydra-grpo.log",
        "pairwise-eval-lora.log"}


def test_verbose_passes_every_line_through_and_still_writes_the_logs(tmp_path):
    terminal = io.StringIO()
    console = Console(terminal, tmp_path / "logs", verbose=True)
    running, ended = data_prep(tmp_path)
    feed(console, running + ended)
    console.finish()
    assert terminal.getvalue() == running + ended
    assert "Task 'data-prep' finished with status SUCCESS" in (tmp_path / "logs" / "data-prep.log").read_text()


DECISION = ("# Policy hydra\n\nRegistered **hydra-rlhf-policy** version **1** with aliases `candidate`, `champion`.\n\n"
            "Judged win-rate 0.677; its lower confidence bound 0.610 beats the champion threshold 0.5.\n")


@pytest.mark.parametrize("name, metrics, figure", [
    ("hydra-sft", {"eval/reward_accuracy": 0.99875, "eval/gold_accuracy": 0.6125, "train/loss": 0.11},
     "reward accuracy 0.999, gold accuracy 0.613"),
    ("hydra-ppo", {"eval/gold_accuracy_before": 0.6125, "eval/gold_accuracy": 0.9575, "objective/kl": 0.54},
     "gold accuracy 0.613 -> 0.958"),
    ("pairwise-eval", {"eval/win_rate": 0.6775, "eval/win_rate_low": 0.6098994072659945,
                       "eval/win_rate_high": 0.738410501870076},
     "win-rate 0.677 [0.610, 0.738]"),
    ("register-model", None, "Registered hydra-rlhf-policy version 1 with aliases candidate, champion."),
    ("compare-variants", None, ""),
    ("hydra-sft", {"train/loss": 0.11}, ""),  # a figure it did not report: none rather than a wrong one
    ("sft", {"eval/gold_accuracy": 0.675, "train/loss": 0.2}, "gold accuracy 0.675"),  # no reward head
    ("reward-model", {"eval/reward_accuracy": 0.92, "eval/gold_accuracy": 0.0}, "reward accuracy 0.920"),
])
def test_each_step_has_its_key_figure_from_its_outputs(tmp_path, name, metrics, figure):
    artifacts = {"decision": {"artifacts": [{"name": "decision", "uri": str(tmp_path / "decision")}]}}
    if metrics:
        artifacts = {"metrics": {"artifacts": [{"name": "metrics", "metadata": metrics}]}}
    (tmp_path / "executor_output.json").write_text(json.dumps({"artifacts": artifacts}))
    (tmp_path / "decision").write_text(DECISION)
    assert key_figure(name, tmp_path) == figure
    assert key_figure(name, tmp_path / "no-such-step") == ""


def test_while_a_run_prints_stdout_is_the_console_and_the_tasks_tqdm_updates_seldom(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    stdout, print_ = sys.stdout, builtins.print
    with console_for(tmp_path / "logs") as console:
        assert sys.stdout is console
        task = "import os, tqdm; print(tqdm.tqdm(total=1, file=open(os.devnull, 'w')).mininterval)"
        mininterval = subprocess.run([sys.executable, "-c", task], capture_output=True, text=True, check=True).stdout
        builtins.print = lambda *args, **kwargs: None  # as kfp's indented_print can leave it with two tasks at once
    assert float(mininterval) == float(TASK_TQDM_MININTERVAL_S)
    assert sys.stdout is stdout and builtins.print is print_ and "TQDM_MININTERVAL" not in os.environ


@pytest.mark.parametrize("command", ["run", "submit"])
def test_help_lists_every_pipeline_parameter_with_its_default_and_meaning(command, capsys):
    from hydra_core import cli
    from hydra_core.config.settings import SFTConfig
    from pipelines.hydra_rlhf import build

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "pipeline parameters (-p NAME=VALUE)" in out
    for name in build().component_spec.inputs:
        assert f"\n  {name} = " in out, name
    assert (f"  sft_steps = {SFTConfig().steps}\n      optimizer steps (the sft stage's steps: hydra-rlhf sft --steps)"
            in out)  # its meaning is the comment of the field it sets
    assert '  hf_secret = "hydra-rlhf-hf"\n      optional Kubernetes secret' in out

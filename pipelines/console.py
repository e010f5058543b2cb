"""What `hydra-rlhf run` prints while kfp's local runner works, and the log file of each step.

kfp's SubprocessRunner prints every line of every task (its executor input as JSON, each tqdm update
as a line) and its own "Executing task" / "finished with status" lines, all to `sys.stdout`. The
`Console` stands in for `sys.stdout` during the run: every line goes to its step's log file,
`<logs>/<task>.log` (`<step>-<variant>.log` in the PPO variants loop), and the terminal gets a line
per step as it starts and ends (with its duration and key figure), the warnings of this project's
code, and the running step's progress bar: redrawn in place on a terminal, else a line when nothing
was printed for PROGRESS_EVERY_S. With `verbose` the terminal gets every line as kfp prints it.

kfp runs the iterations of a ParallelFor in threads at once, each task in one thread from its
"Executing task" line to its end, so the Console follows a step per thread. A step is named by its
component, not by kfp's task name (`hydra-ppo-2` is the PPO step of the pipeline's second variants
loop), and the SFT component's other modes by what they train (`sft`, `reward-model`).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

PROGRESS_EVERY_S = 30
# tqdm in a task writes to a pipe, where each update becomes a line: one every few seconds is enough
TASK_TQDM_MININTERVAL_S = "3"
TAIL_LINES = 20

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own lines, their colours stripped
KFP_LINE = re.compile(r"^[\d:.]+ - (?P<level>[A-Z]+) - (?P<message>.*)$")
TASK_START = re.compile(r" - INFO - Executing task '(?P<name>[^']+)'$")
TASK_END = re.compile(r" - \w+ - Task '(?P<name>[^']+)' finished with status (?P<status>\w+)$")
PIPELINE = re.compile(r" - \w+ - (Running pipeline: |Pipeline )'")
EXECUTOR_INPUT = "Got executor_input:"
TASK_COPY = re.compile(r"-\d+$")  # kfp numbers the second and later tasks of one component: hydra-ppo-2
SFT_MODES = {"sft": "sft", "rm": "reward-model"}  # the hydra-sft step in another SFTConfig.mode
KFP_INDENT = "    "  # kfp indents a task's streamed lines by these four spaces
# tqdm's "[elapsed<remaining, " or "[elapsed, " bracket
PROGRESS = re.compile(r"\[[\d:]+(<[\d:?]+)?, ")
WARNING = re.compile(r"^(?P<where>\S+\.py):\d+: (?P<category>\w*Warning): (?P<message>.+)$")
ROOT = Path(__file__).resolve().parents[1]
OUR_CODE = tuple(f"{ROOT / package}/" for package in ("hydra_core", "components", "pipelines"))
# the executors load each component from a temporary copy of its function
COMPONENT_COPY = "ephemeral_component.py"
TRACKING_FALLBACK = "MLflow: "  # hydra_core's MLflow tracker, when records wait on disk to be replayed


@dataclass
class Step:
    """One task of the pipeline, from kfp's "Executing task" line to its "finished" line."""

    name: str
    started: float
    variant: str = ""
    log: Path | None = None
    file: TextIO | None = None
    pending: list[str] = field(default_factory=list)  # its lines before its log file is named
    executor_input: list[str] | None = None  # the JSON lines while they come
    folder: Path | None = None
    status: str = ""
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    warned: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.variant}]" if self.variant else self.name


class Console(io.TextIOBase):
    """A stand-in for `sys.stdout` during a pipeline run; see the module's docstring."""

    def __init__(self, terminal: TextIO, log_dir: Path, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.terminal, self.log_dir, self.verbose, self.clock = terminal, Path(log_dir), verbose, clock
        self.live = terminal.isatty()
        self.failed: list[Step] = []
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}
        self._steps: dict[int, Step] = {}
        self._opened: set[str] = set()
        self._pipeline_log: TextIO | None = None
        self._drawn = False
        self._quiet_since = clock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            thread = threading.get_ident()
            *lines, self._partial[thread] = (self._partial.get(thread, "") + text).split("\n")
            for line in lines:
                self._line(thread, line)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()

    def finish(self) -> None:
        """End what the run left: unfinished lines, open log files, the progress line."""
        with self._lock:
            for thread, rest in self._partial.items():
                if rest:
                    self._line(thread, rest)
            for step in self._steps.values():
                self._close(step)
            if self._pipeline_log:
                self._pipeline_log.close()
            self._undraw()
            self.terminal.flush()

    # --- a line -----------------------------------------------------------------------------------
    def _line(self, thread: int, raw: str) -> None:
        if self.verbose:
            self.terminal.write(raw + "\n")
        line = ANSI.sub("", raw)
        start = TASK_START.search(line)
        if start:
            self._begin(thread, start["name"])
        elif PIPELINE.search(line):  # it comes from the thread of the last step outside the loop
            self._close(self._steps.pop(thread, None))
        step = self._steps.get(thread)
        if step is None:
            self._pipeline_line(line)
        elif step.status:  # its outputs, as kfp lists them after its end
            self._log(step, line)
        else:
            self._step_line(step, line.removeprefix(KFP_INDENT))

    def _step_line(self, step: Step, line: str) -> None:
        self._log(step, line)
        end = TASK_END.search(line)
        if end:
            self._finish(step, end["status"])
        elif step.executor_input is not None:
            self._read_executor_input(step, line)
        elif EXECUTOR_INPUT in line:
            step.executor_input = []
        elif not KFP_LINE.match(line):  # the task's own output
            if line.strip():
                step.tail.append(line)
            if not self.verbose:
                self._show(step, line.strip())

    def _pipeline_line(self, line: str) -> None:
        if self._pipeline_log is None:
            self._pipeline_log = self._open("pipeline.log")
        self._pipeline_log.write(line + "\n")
        kfp = KFP_LINE.match(line)
        if self.verbose or not kfp:
            return
        if kfp["message"].startswith("Running pipeline: "):
            self._say("pipeline", f"started; a log per step in {self.log_dir}")
        elif kfp["level"] == "ERROR":
            self._say("kfp", kfp["message"])

    # --- a step -----------------------------------------------------------------------------------
    def _begin(self, thread: int, name: str) -> None:
        self._close(self._steps.get(thread))
        self._steps[thread] = Step(name, self.clock())

    def _read_executor_input(self, step: Step, line: str) -> None:
        step.executor_input.append(line)
        if line.strip() != "}":
            return
        try:
            executor_input = json.loads("\n".join(step.executor_input))
        except ValueError:  # a nested object closed, not the whole
            return
        step.executor_input = None
        self._announce(step, executor_input)

    def _announce(self, step: Step, executor_input: dict | None = None) -> None:
        """Name the step's log file (in the loop, by its variant) now that its input is known."""
        step.folder = task_folder(executor_input or {})
        step.name = step_name(step.name, executor_input or {})
        step.variant = loop_variant(executor_input or {}, step.folder)
        name = f"{step.name}-{step.variant}.log" if step.variant else f"{step.name}.log"
        step.log = self.log_dir / name
        step.file = self._open(name)
        step.file.write("".join(line + "\n" for line in step.pending))
        step.pending.clear()
        if not self.verbose:
            self._say(step.label, "started")

    def _finish(self, step: Step, status: str) -> None:
        step.status = status
        if step.file is None:  # its executor input never came: kfp printed it otherwise
            self._announce(step)
        step.file.flush()
        took = duration(self.clock() - step.started)
        if status != "SUCCESS":
            self.failed.append(step)
            if not self.verbose:
                self._say(step.label, f"FAILED after {took}; its log: {step.log}")
            return
        if not self.verbose:
            figure = key_figure(step.name, step.folder)
            self._say(step.label, f"done in {took}" + (f": {figure}" if figure else ""))

    def _close(self, step: Step | None) -> None:
        if step is None:
            return
        if step.file is None:
            self._announce(step)
        step.file.close()

    def _log(self, step: Step, line: str) -> None:
        if step.file is None:
            step.pending.append(line)
        else:
            step.file.write(line + "\n")

    def _open(self, name: str) -> TextIO:
        # a name opened again in the same run is a retried task: keep the failed attempt's lines
        mode = "a" if name in self._opened else "w"
        self._opened.add(name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / name, mode, encoding="utf-8")

    # --- the terminal -----------------------------------------------------------------------------
    def _show(self, step: Step, text: str) -> None:
        warning = WARNING.match(text)
        if PROGRESS.search(text):
            self._progress(step, text)
        elif warning and is_ours(warning["where"]) and warning["where"] not in step.warned:
            step.warned.add(warning["where"])
            self._say(step.label, f"warning: {warning['category']}: {warning['message']}")
        elif text.startswith(TRACKING_FALLBACK):
            self._say(step.label, text)

    def _progress(self, step: Step, text: str) -> None:
        if self.live:
            line = f"{stamp()} {step.label:<22} {text}"[:shutil.get_terminal_size().columns - 1]
            self.terminal.write(f"\r\x1b[K{line}")  # back to the line's start, then clear it
            self.terminal.flush()
            self._drawn = True
        elif self.clock() - self._quiet_since >= PROGRESS_EVERY_S:
            self._say(step.label, text)

    def _say(self, label: str, message: str) -> None:
        self._undraw()
        self.terminal.write(f"{stamp()} {label:<22} {message}\n")
        self.terminal.flush()
        self._quiet_since = self.clock()

    def _undraw(self) -> None:
        if self._drawn:
            self.terminal.write("\r\x1b[K")
            self._drawn = False


@contextlib.contextmanager
def console_for(log_dir: Path, verbose: bool = False) -> Iterator[Console]:
    """`sys.stdout` is a Console while the block runs; the task processes' tqdm bars update seldom."""
    console = Console(sys.stdout, log_dir, verbose)
    print_ = builtins.print
    own_interval = "TQDM_MININTERVAL" not in os.environ  # a person's own setting stands
    if own_interval:
        os.environ["TQDM_MININTERVAL"] = TASK_TQDM_MININTERVAL_S
    sys.stdout = console
    try:
        yield console
    finally:
        sys.stdout = console.terminal
        # kfp's indented_print, entered by two loop iterations at once, can leave its wrapper installed
        builtins.print = print_
        if own_interval:
            os.environ.pop("TQDM_MININTERVAL", None)
        console.finish()


# --- what a step's executor input and outputs say ----------------------------------------------------
def task_folder(executor_input: dict) -> Path | None:
    output_file = executor_input.get("outputs", {}).get("outputFile")
    return Path(output_file).parent if output_file else None


def step_name(task: str, executor_input: dict) -> str:
    """The step a kfp task runs: its component's name, or for the SFT component in another mode what it trains."""
    name = TASK_COPY.sub("", task)
    mode = executor_input.get("inputs", {}).get("parameterValues", {}).get("mode")
    return SFT_MODES.get(mode, name) if name == "hydra-sft" else name


def loop_variant(executor_input: dict, folder: Path | None) -> str:
    """The PPO variant (run label) of a task in the variants loop: the PPO step's parameter, or the
    metadata of the artifact a later step takes from it (the judged candidate's, not its baseline's);
    else the iteration's number. Outside the loop, the variant of a judged candidate (`hydra-sft`,
    judged against the SFT model); else ""."""
    inputs = executor_input.get("inputs", {})
    artifacts = inputs.get("artifacts", {})
    names = ["candidate", *(name for name in artifacts if name not in ("candidate", "baseline"))]
    in_loop = folder is not None and "-iteration-" in folder.parent.name
    found = [inputs.get("parameterValues", {}).get("variant")] if in_loop else []
    found += [artifact.get("metadata", {}).get("variant") for name in (names if in_loop else names[:1])
              for artifact in artifacts.get(name, {}).get("artifacts", [])]
    fallback = folder.parent.name.rsplit("-", 1)[-1] if in_loop else ""
    return next((v for v in found if isinstance(v, str) and v), fallback)


def key_figure(name: str, folder: Path | None) -> str:
    """The figure of a finished step a person looks for first, from its outputs ("" when it has none)."""
    if name not in FIGURES or folder is None:
        return ""
    try:
        outputs = json.loads((folder / "executor_output.json").read_text(encoding="utf-8"))
        artifacts = {key: spec["artifacts"][0] for key, spec in outputs.get("artifacts", {}).items()}
        return FIGURES[name](artifacts)
    except (OSError, ValueError, KeyError, IndexError, TypeError):  # the step's own outputs hold its figures
        return ""


def _records(artifacts: dict) -> str:
    m = artifacts["metrics"]["metadata"]
    counts = ", ".join(f"{kind} {m[f'data/{kind}_train']:.0f}/{m[f'data/{kind}_eval']:.0f}"
                       for kind in ("pairs", "demos", "prompts"))
    return f"{counts} (train/eval)"


SFT_FIGURES = (("reward accuracy", "eval/reward_accuracy"), ("gold accuracy", "eval/gold_accuracy"))


def _sft(artifacts: dict, figures=SFT_FIGURES) -> str:
    m = artifacts["metrics"]["metadata"]
    return ", ".join(f"{title} {m[key]:.3f}" for title, key in figures if key in m)


def _reward_model(artifacts: dict) -> str:
    """A reward model's figure: its training moves the backbone under an LM head it does not train, so
    the gold accuracy of its greedy answers says nothing."""
    return _sft(artifacts, SFT_FIGURES[:1])


def _ppo(artifacts: dict) -> str:
    m = artifacts["metrics"]["metadata"]
    return f"gold accuracy {m['eval/gold_accuracy_before']:.3f} -> {m['eval/gold_accuracy']:.3f}"


def _win_rate(artifacts: dict) -> str:
    m = artifacts["metrics"]["metadata"]
    return f"win-rate {m['eval/win_rate']:.3f} [{m['eval/win_rate_low']:.3f}, {m['eval/win_rate_high']:.3f}]"


def _decision(artifacts: dict) -> str:
    """The register step's outcome: its decision's second paragraph, without the Markdown."""
    decision = Path(artifacts["decision"]["uri"]).read_text(encoding="utf-8")
    return re.sub(r"[*`]", "", decision.split("\n\n")[1].strip())


FIGURES = {"data-prep": _records, "hydra-sft": _sft, "sft": _sft, "reward-model": _reward_model, "hydra-ppo": _ppo,
           "pairwise-eval": _win_rate, "register-model": _decision}


def is_ours(path: str) -> bool:
    return path.startswith(OUR_CODE) or path.endswith(COMPONENT_COPY)


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def stamp() -> str:
    return time.strftime("%H:%M:%S")

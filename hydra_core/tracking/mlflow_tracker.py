"""MLflow behind the Tracker interface: one MLflow run per stage, nested under a pipeline run.

Every record goes through one of the operations of `_Sender` (start, params, metrics, artifact,
table, dataset, tags, model, register, end). While the tracking server answers, an operation is sent at
once. From the first one that fails, the tracker stops trying and appends the operations to
`<stage output>/mlflow_pending/journal.jsonl` instead, which `hydra-rlhf sync-tracking` replays
later: an outage never stops training, and what it would have recorded is kept, not lost.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hydra_core.tracking.base import Tracker, in_mib

DEFAULT_EXPERIMENT = "hydra-rlhf"
PENDING_DIR = "mlflow_pending"
JOURNAL = "journal.jsonl"
SYSTEM_METRICS_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0
PARENT_TAG = "mlflow.parentRunId"
SOURCE_TYPE = "mlflow_artifact"  # a dataset input's source type when it names an MLflow reference
RUN_ID = "{run_id}"  # in a recorded source: the id of the run recording it
_BATCH = 100  # MLflow's log_batch limit on params and tags (metrics allow 1000)


class TrackingUnreachable(ConnectionError):
    pass


# A logged policy's generation settings and their defaults: a caller may change them per request
GENERATION_PARAMS = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                     "return_full_text": False}

# MLflow 3's UI opens an experiment on its GenAI traces page unless this tag says it trains models
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def redact(uri: str) -> str:
    """The URI without user:password, for summaries and journals."""
    parts = urlsplit(uri)
    if not parts.password and not parts.username:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def recorded_input(path: str | Path | None, metadata: dict | None, artifact: str) -> dict[str, str]:
    """{path: `runs:/<run>/<artifact>`} for a pipeline input that a stage's MLflow run recorded (the `mlflow`
    entry of its artifact's metadata, which the components write), {} when none did: what
    `MlflowTracker.name_sources` records in place of the local path a step reads it from."""
    run_id = ((metadata or {}).get("mlflow") or {}).get("run_id")
    return {str(path): f"runs:/{run_id}/{artifact}"} if path and run_id else {}


def _probe(uri: str) -> None:
    """Fail fast on a server that does not answer at all; any HTTP answer counts as reachable."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri, timeout=PROBE_TIMEOUT_S)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise TrackingUnreachable(f"no answer from {redact(uri)}: {type(e).__name__}") from None


def _client(uri: str):
    # A stage must not stall on a dead server: MLflow's default is 7 retries with exponential
    # backoff, minutes per call. An explicit setting in the environment still wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def connect(uri: str):
    """An MlflowClient for `uri`, after checking that a server there answers (TrackingUnreachable if not)."""
    _probe(uri)
    return _client(uri)


@contextmanager
def _global_tracking_uri(uri: str):
    """`uri` as MLflow's global tracking URI, which Model.log and the registry's models:/ lookup read
    instead of a client's. MLflow's own setter also rewrites or unsets $MLFLOW_TRACKING_URI, which
    says where the next stages log, so both are put back as they were."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a sqlite database, not MLflow's default `./mlruns` under whatever the cwd happens to be."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.resolve().parent / "mlartifacts" / experiment).as_uri()


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)


class _Sender:
    """Applies tracking operations to an MLflow server or database; one method per operation."""

    OPERATIONS = ("start", "params", "metrics", "artifact", "table", "dataset", "tags", "model", "register", "end")

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri
        self.client = _client(tracking_uri)
        self.run_id = ""
        self.reopened = False
        # a reopened run's params, and per metric the last step it holds: a resumed stage logs again what it
        # redoes after its checkpoint, and MLflow keeps every point it is sent (and refuses a changed param)
        self._params: set[str] = set()
        self._last_step: dict[str, int] = {}

    def apply(self, op: str, args: dict):
        if op not in self.OPERATIONS:
            raise ValueError(f"unknown tracking operation {op!r}")
        return getattr(self, op)(**args)

    def start(self, experiment: str, run_name: str, parent_run_id: str = "", tags: dict | None = None,
              run_id: str = "") -> None:
        _probe(self.uri)
        if run_id and self._exists(run_id):
            self.run_id, self.reopened = run_id, True
            run = self.client.get_run(run_id)
            self._params = set(run.data.params)
            self._last_step = {key: max(m.step for m in self.client.get_metric_history(run_id, key))
                               for key in run.data.metrics}
            if run.info.status != "RUNNING":  # e.g. KILLED by the exit step of the pipeline run it failed in
                self.client.update_run(run_id, status="RUNNING")
            return
        tags = {**(tags or {}), **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        self.run_id = self.client.create_run(self._experiment_id(experiment), run_name=run_name,
                                             tags=tags).info.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found:
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by hand or by an older version: open it on the runs
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri, name),
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # a parallel task created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _own(self, value: str) -> str:
        """`value` with `{run_id}` (a reference to this run's artifacts, see `name_sources`) as this run's id,
        which a journaled record learns only when it is replayed."""
        return value.replace(RUN_ID, self.run_id)

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, self._own(v)) for k, v in params.items() if k not in self._params]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def metrics(self, metrics: dict, step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, timestamp, step) for k, v in metrics.items() if step > self._last_step.get(k, -1)]
        for i in range(0, len(items), 10 * _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + 10 * _BATCH])

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def table(self, path: str, artifact_file: str) -> None:
        self.client.log_table(self.run_id, _read_table(Path(path)), artifact_file)

    def dataset(self, path: str, name: str, context: str, source: str = "") -> None:
        """The file as a dataset input; `source`, when given, is where the record says it comes from (an
        MLflow reference such as `runs:/<run>/data/pairs_train.jsonl`) instead of the local file."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with warnings.catch_warnings():
            # MLflow registers its local-file source twice, and hints about integer columns in model
            # schemas: neither matters for a dataset record.
            warnings.simplefilter("ignore", UserWarning)
            data = mlflow.data.from_pandas(_read_table(Path(path)), source=Path(path).resolve().as_uri(), name=name)
            entity = data._to_mlflow_entity()
        if source:
            entity = Dataset(entity.name, entity.digest, SOURCE_TYPE, json.dumps({"uri": self._own(source)}),
                             entity.schema, entity.profile)
        self.client.log_inputs(self.run_id, [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, self._own(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i:i + _BATCH])

    def model(self, path: str, name: str, requirements: list[str], python_model: str = "", artifact: str = "",
              code_paths: list[str] = (), leave_out: list[str] = (), signature: dict | None = None) -> str:
        """Directory `path` as an MLflow LoggedModel `name` of this run; returns its model id. A causal
        LM goes in with the transformers flavour; given `python_model` (a models-from-code file), the
        directory (less `leave_out`) is that pyfunc's artifact `artifact`, and `signature` (MLflow's
        `ModelSignature.to_dict()`) says what it takes and returns."""
        import mlflow.pyfunc
        import mlflow.transformers
        from mlflow.models import Model, ModelSignature, infer_signature

        # Explicit requirements: MLflow's inference pins whatever the logging process imported (torchvision).
        pins = [f"{package}=={installed_version(package).split('+')[0]}" for package in requirements]
        # Made here, in the run's experiment: Model.log would make it in the active experiment
        run = self.client.get_run(self.run_id)
        model_id = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=self.run_id,
                                                   params=run.data.params).model_id
        # Model.log, not the flavours' log_model: it takes the run to log to, which they do not all pass on
        with _global_tracking_uri(self.uri), tempfile.TemporaryDirectory() as staging:
            if python_model:
                copy = Path(staging) / artifact
                shutil.copytree(path, copy, ignore=lambda _, names: [n for n in names if n in leave_out])
                info = Model.log(None, name=name, flavor=mlflow.pyfunc, run_id=self.run_id, model_id=model_id,
                                 python_model=python_model, artifacts={artifact: str(copy)},
                                 code_paths=list(code_paths), pip_requirements=pins,
                                 signature=ModelSignature.from_dict(signature) if signature else None)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
                template = getattr(tokenizer, "chat_template", None)
                info = Model.log(None, name=name, flavor=mlflow.transformers, run_id=self.run_id, model_id=model_id,
                                 transformers_model={"model": AutoModelForCausalLM.from_pretrained(path),
                                                     "tokenizer": tokenizer},
                                 task="text-generation", pip_requirements=pins,
                                 signature=infer_signature(["a prompt"], ["a response"], params=GENERATION_PARAMS),
                                 metadata={"chat_template": template} if template else None)
        return info.model_id

    def _logged_model(self, run_id: str, name: str):
        """The LoggedModel `name` that run `run_id` logged last in full, or None (a log that broke off
        part way leaves one that is not READY)."""
        from mlflow.entities import LoggedModelStatus

        experiment = self.client.get_run(run_id).info.experiment_id
        found = self.client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}' AND "
                                                 f"name = '{name}'", order_by=[{"field_name": "creation_time",
                                                                                 "ascending": False}])
        return next((m for m in found if m.status == LoggedModelStatus.READY), None)

    def register(self, name: str, artifact_path: str, tags: dict, aliases: list[str],
                 source_run_id: str = "", model_metrics: dict | None = None) -> str:
        """A version of `name` from the run's LoggedModel `artifact_path` (with `model_metrics` attached
        to that model), or from its artifact folder `artifact_path` when it logged no such model."""
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        run_id = source_run_id or self.run_id
        tags = {k: self._own(v) for k, v in tags.items()}
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        logged = self._logged_model(run_id, artifact_path)
        if logged is None:
            version = self.client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                                                       tags=tags).version
        else:
            if model_metrics:
                stamp = int(time.time() * 1000)
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, 0, model_id=logged.model_id)
                                                            for k, v in model_metrics.items()])
            # the registry store resolves a models:/ source through the global tracking URI
            with _global_tracking_uri(self.uri):
                version = self.client.create_model_version(name, f"models:/{logged.model_id}", run_id=run_id,
                                                           tags=tags, model_id=logged.model_id).version
            self._list_version(logged, name, version)
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, version)
        return str(version)

    def _list_version(self, logged, name: str, version) -> None:
        """Name the new version on its LoggedModel, as `mlflow.register_model` does (the client's
        create_model_version does not): MLflow's model page lists its registered versions from this tag."""
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        listed = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        self.client.set_logged_model_tags(logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*listed, {"name": name, "version": version}])})

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class MlflowTracker(Tracker):
    """One MLflow run. With an empty `tracking_uri` it records nothing (tracking is off).

    `run_id` attaches to an existing run instead of creating one; `parent_run_id` nests the new
    run under a pipeline run. Paths logged from inside `pending_dir`'s parent are journaled
    relative to it, so a stage output copied elsewhere still replays.
    """

    def __init__(self, tracking_uri: str, run_name: str, pending_dir: str | Path, *,
                 experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str = "", run_id: str = "",
                 tags: dict | None = None, system_metrics: bool = True):
        self.tracking_uri = tracking_uri
        self.pending_dir = Path(pending_dir)
        self.error = ""
        self.closed = False
        self._sender: _Sender | None = None
        self._monitor = None
        self.sources: dict[str, str] = {}
        self._start = dict(experiment=experiment or DEFAULT_EXPERIMENT, run_name=run_name,
                           parent_run_id=parent_run_id, tags={k: str(v) for k, v in (tags or {}).items()},
                           run_id=run_id)
        if not tracking_uri:
            return
        try:
            self._sender = _Sender(tracking_uri)
            self._sender.start(**self._start)
        except Exception as e:  # noqa: BLE001 - whatever fails, the stage goes on and the record is kept
            self._fall_back(e)
            return
        if system_metrics:
            self._start_monitor()

    @property
    def run_id(self) -> str:
        return self._sender.run_id if self._sender else ""

    @property
    def state(self) -> str:
        """off (no tracking URI), sent (everything reached MLflow) or pending (some of it is on disk)."""
        return "off" if not self.tracking_uri else "pending" if self.error else "sent"

    def status(self) -> dict:
        out = {"state": self.state, "tracking_uri": redact(self.tracking_uri), "run_id": self.run_id}
        if self.error:
            out.update(error=self.error, pending=str(self.pending_dir / JOURNAL),
                       replay=f"hydra-rlhf sync-tracking {self.pending_dir}")
        return out

    def name_sources(self, sources: dict[str, str]) -> None:
        """Record `sources` ({local path: what it stands for}) in place of those paths, and of the files
        under them, wherever this run would log one (params, tags, dataset inputs, a registered version's
        tags): what a user typed (a preset, a hub id) or an MLflow reference (`runs:/<run>/model`) rather
        than a folder of the machine the step ran on. RUN_ID (`{run_id}`) in a reference is this run's id."""
        for path, source in sources.items():
            if path and source:
                self.sources[str(path).rstrip("/")] = source
                self.sources[str(Path(path).resolve())] = source

    def _named(self, value):
        """`value` with a recorded source in place of a local path (see `name_sources`)."""
        if not isinstance(value, str) or not self.sources:
            return value
        for path in sorted(self.sources, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return self.sources[path] + value[len(path):]
        return value

    # --- the Tracker interface -------------------------------------------------------------------
    # Byte counts go to MLflow in MiB (`memory/peak_bytes` is `memory/peak_mib` there), as a person reads them
    def log_params(self, params: dict) -> None:
        self._do("params", params={k: str(self._named(v)) for k, v in in_mib(params, digits=1).items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in in_mib(metrics).items() if v is not None}
        self._do("metrics", metrics=values, step=int(step), timestamp=int(time.time() * 1000))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._do("artifact", path=str(path), artifact_path=artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_monitor()
        self._do("end", status=status)
        if self.error:
            print(f"MLflow: {self.state}: {self.error}; the records are in {self.pending_dir / JOURNAL}; "
                  f"replay them with: hydra-rlhf sync-tracking {self.pending_dir}")

    # --- what only MLflow has --------------------------------------------------------------------
    def log_table(self, path: str | Path, artifact_file: str) -> None:
        """A JSONL or Parquet file as an MLflow table (browsable in the UI's evaluation view)."""
        self._do("table", path=str(path), artifact_file=artifact_file)

    def log_dataset(self, path: str | Path, name: str, context: str, source: str = "") -> None:
        """A JSONL or Parquet file as an MLflow dataset input of this run, its source `source` when given,
        else the file's (a recorded source, see `name_sources`). MLflow keeps one record of a dataset per
        experiment (by name and content): the first run to log it names its source for every later one."""
        local = str(Path(path).resolve())
        source = source or self._named(local)
        self._do("dataset", path=str(path), name=name, context=context, source="" if source == local else source)

    def set_tags(self, tags: dict) -> None:
        self._do("tags", tags={k: str(self._named(v)) for k, v in tags.items()})

    def log_model(self, path: str | Path, name: str, requirements=(), *, python_model: str | Path = "",
                  artifact: str = "", code_paths=(), leave_out=(), signature=None) -> None:
        """Directory `path` as this run's MLflow model `name`: a Hugging Face causal LM with the
        transformers flavour (task text-generation, GENERATION_PARAMS as request parameters), or with
        `python_model` a pyfunc from that code file whose artifact `artifact` is the directory less
        `leave_out`, taking and returning what `signature` (an MLflow ModelSignature) says.
        `requirements` are the packages it needs, pinned to the versions installed here."""
        self._do("model", path=str(path), name=name, requirements=list(requirements), python_model=str(python_model),
                 artifact=artifact, code_paths=[str(p) for p in code_paths], leave_out=list(leave_out),
                 signature=signature.to_dict() if signature else None)

    def register_model(self, name: str, artifact_path: str, tags: dict, aliases=(), source_run_id: str = "",
                       model_metrics: dict | None = None) -> str:
        """A new version of registered model `name` from the MLflow model `artifact_path` that run
        `source_run_id` (this run by default) logged, with `model_metrics` attached to that model; from
        `runs:/<run>/<artifact_path>` when the run logged no such model. Returns the version, or ""
        when the registration waits in the journal."""
        version = self._do("register", name=name, artifact_path=artifact_path,
                           tags={k: str(self._named(v)) for k, v in tags.items()}, aliases=list(aliases),
                           source_run_id=source_run_id,
                           model_metrics={k: float(v) for k, v in (model_metrics or {}).items()
                                          if v is not None and math.isfinite(v)})
        return version or ""

    # --- sending, or keeping on disk -------------------------------------------------------------
    def _do(self, op: str, **args):
        if not self.tracking_uri:
            return None
        if not self.error:
            try:
                return self._sender.apply(op, args)
            except Exception as e:  # noqa: BLE001 - whatever fails, the stage goes on and the record is kept
                self._fall_back(e)
        self._journal(op, args)
        return None

    def _fall_back(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
        self._stop_monitor()
        # The journal opens with how to reopen this run: attach to it if it was created, else create it.
        self._journal("start", {**self._start, "run_id": self.run_id})
        warnings.warn(f"MLflow tracking at {redact(self.tracking_uri)} failed ({self.error}); the stage goes on "
                      f"and keeps its records in {self.pending_dir / JOURNAL}", RuntimeWarning, stacklevel=3)

    def _journal(self, op: str, args: dict) -> None:
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        base = self.pending_dir.parent.resolve()
        if "path" in args:
            path = Path(args["path"]).resolve()
            args = {**args, "path": str(path.relative_to(base)) if path.is_relative_to(base) else str(path)}
        if op == "metrics":  # JSON has no NaN; the journal keeps what the stage logged as null
            args = {**args, "metrics": {k: (v if math.isfinite(v) else None) for k, v in args["metrics"].items()}}
        entry = {"op": op, "args": args}
        if op == "start":
            entry["tracking_uri"] = redact(self.tracking_uri)
        with (self.pending_dir / JOURNAL).open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _start_monitor(self) -> None:
        try:
            import psutil  # noqa: F401 - MLflow's system metrics need it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return
        # a reopened run's samples go on from its last step, not again from 0
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                             resume_logging=self._sender.reopened, tracking_uri=self.tracking_uri)
        self._monitor.start()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None


def _keep_unsent(journal: Path, entries: list[dict], sent: int, run_id: str) -> None:
    if sent == 0:
        return
    start = {**entries[0], "args": {**entries[0]["args"], "run_id": run_id}}  # reopen the run already made
    tmp = journal.with_name(journal.name + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in [start, *entries[sent:]]), encoding="utf-8")
    os.replace(tmp, journal)


def replay(pending_dir: str | Path, tracking_uri: str = "") -> str:
    """Send a stage's journal to MLflow (the URI it was meant for, or `tracking_uri`); returns the
    run id. The journal is renamed once sent, so it is never replayed twice; if sending stops part
    way, the journal keeps only what was not sent (reattaching to the run it created), so running
    the command again sends each record once."""
    journal = Path(pending_dir) / JOURNAL
    if not journal.exists():
        raise FileNotFoundError(f"{journal}: no such journal; pass a '{PENDING_DIR}' directory of a stage output")
    entries = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not entries or entries[0]["op"] != "start":
        raise ValueError(f"{journal}: not a tracking journal (it must open with a 'start' record)")
    uri = tracking_uri or entries[0]["tracking_uri"]
    sender = _Sender(uri)
    base = journal.parent.parent
    for done, entry in enumerate(entries):
        args = entry["args"]
        if "path" in args:
            args = {**args, "path": str(base / args["path"])}
        if entry["op"] == "metrics":
            args = {**args, "metrics": {k: (math.nan if v is None else v) for k, v in args["metrics"].items()}}
        try:
            sender.apply(entry["op"], args)
        except Exception as e:  # noqa: BLE001 - whatever stopped it, keep what is left and say so in one line
            _keep_unsent(journal, entries, done, sender.run_id)
            raise TrackingUnreachable(f"MLflow at {redact(uri)}: sending stopped at record {done + 1} of "
                                      f"{len(entries)} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                      f"); the rest stays in {journal}: run the command again later") from None
    journal.rename(journal.with_name(f"journal.sent-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
    return sender.run_id

"""`hydra-rlhf submit`: compile the pipeline (or take a compiled one) and start a run on a KFP endpoint.

Authentication is kfp.Client's own: an in-cluster service-account token, or the token file named by
KF_PIPELINES_SA_TOKEN_PATH.

The run must log to an MLflow server its pods can reach: with no tracking URI the steps record nothing
and register no model, silently, and a file store or this machine's localhost is not there in a pod. So
submit refuses those, unless it is told the run goes untracked.
"""

import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import kfp
import yaml
from urllib3.exceptions import MaxRetryError

from pipelines.arguments import check_shared_storage
from pipelines.hydra_rlhf import compile_pipeline

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def submit(host: str, arguments: dict | None = None, package: str | None = None, run_name: str | None = None,
           experiment_name: str | None = None, namespace: str | None = None, tracked: bool = True,
           settings: dict | None = None, service_account: str | None = None) -> str:
    """Returns the new run's id. `tracked`: refuse a tracking URI the pods cannot reach (False: an untracked
    run, no tracking URI allowed). `settings` are hydra_rlhf.build's, for when there is no `package`.
    `service_account`: the one the run's pods run as (kfp sets it per run, not per task)."""
    arguments = arguments or {}
    if not host.startswith(("http://", "https://")):
        raise ValueError(f"--host must be the KFP endpoint's http(s) URL, got {host!r}")
    if package and not Path(package).is_file():
        raise FileNotFoundError(f"{package}: no such compiled pipeline file")
    uri = arguments.get("tracking_uri", _default_tracking_uri(package) if package else "")
    check_tracking_uri(uri, tracked)
    workspace = _has_workspace(package) if package else bool((settings or {}).get("workspace"))
    check_shared_storage(arguments, workspace, "compile the pipeline with --workspace SIZE")
    with tempfile.TemporaryDirectory() as tmp:
        package = package or compile_pipeline(str(Path(tmp) / "hydra_rlhf.yaml"), **(settings or {}))
        if "kfp_ui_url" in _parameters(package):  # the parent MLflow run links back to this run
            arguments = {"kfp_ui_url": host, **arguments}
        try:
            with warnings.catch_warnings():  # kfp warns on every Client that it needs a v2 backend: docs/pipeline/cluster.md says so
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, **({"namespace": namespace} if namespace else {}))
            result = client.create_run_from_pipeline_package(package, arguments=arguments, run_name=run_name,
                                                             experiment_name=experiment_name, namespace=namespace,
                                                             service_account=service_account)
        except MaxRetryError as e:  # urllib3 has already retried; its traceback runs to a hundred lines
            raise ConnectionError(f"--host {host}: the KFP API does not answer ({_reason(e)}); check the URL, "
                                  "and that this machine can reach it") from None
    return result.run_id


def _parameters(package: str) -> dict:
    """The pipeline parameters a compiled package declares (an older one may lack some)."""
    spec = next(yaml.safe_load_all(Path(package).read_text(encoding="utf-8"))) or {}
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def _has_workspace(package: str) -> bool:
    """Whether a compiled package gives its runs a workspace (its platform spec, the second document)."""
    platform = next(iter(list(yaml.safe_load_all(Path(package).read_text(encoding="utf-8")))[1:]), None) or {}
    return bool(platform.get("platforms", {}).get("kubernetes", {}).get("pipelineConfig", {}).get("workspace"))


def _reason(error: MaxRetryError) -> str:
    reason = str(error.reason or error)
    return reason.split("): ", 1)[-1].rstrip(")\"'") if "): " in reason else reason


def check_tracking_uri(uri: str, tracked: bool = True) -> None:
    """A one-line error unless `uri` is an MLflow server a pod can reach (or, not `tracked`, is empty)."""
    if not tracked:
        if uri:
            raise ValueError(f"--no-tracking, but pipeline parameter tracking_uri is {uri!r}: drop one of them")
        return
    if not uri:
        raise ValueError("pipeline parameter tracking_uri is empty: the run would record nothing and register "
                         "no model; give an MLflow server the pods can reach (-p tracking_uri=http://...) "
                         "or --no-tracking")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file", "sqlite") or len(parsed.scheme) == 1:  # one letter: a Windows drive
        raise ValueError(f"pipeline parameter tracking_uri {uri!r} is a file on this machine, not on the cluster: "
                         "give an MLflow server the pods can reach (-p tracking_uri=http://...)")
    if parsed.hostname in LOCAL_HOSTS:
        raise ValueError(f"pipeline parameter tracking_uri {uri!r}: in a pod, {parsed.hostname} is the pod itself; "
                         "give an MLflow server the pods can reach, e.g. http://mlflow.mlflow.svc:5000")


def _default_tracking_uri(package: str) -> str:
    """The tracking URI a compiled spec runs with when no argument sets it (a recipe's, compiled in)."""
    return _parameters(package).get("tracking_uri", {}).get("defaultValue", "")

"""`hydra-rlhf submit`: compile the pipeline (or take a compiled one) and start a run on a KFP endpoint.

Authentication is kfp.Client's own: an in-cluster service-account token, or the token file named by
KF_PIPELINES_SA_TOKEN_PATH.
"""

import tempfile
import warnings
from pathlib import Path

import kfp
from urllib3.exceptions import MaxRetryError

from components.image import ACCELERATOR
from pipelines.hydra_rlhf import compile_pipeline


def submit(host: str, arguments: dict | None = None, package: str | None = None, run_name: str | None = None,
           experiment_name: str | None = None, namespace: str | None = None, use_gpu: bool = False,
           accelerator: str = ACCELERATOR) -> str:
    """Returns the new run's id. `use_gpu` and `accelerator` apply when there is no `package` to submit."""
    if not host.startswith(("http://", "https://")):
        raise ValueError(f"--host must be the KFP endpoint's http(s) URL, got {host!r}")
    if package and not Path(package).is_file():
        raise FileNotFoundError(f"{package}: no such compiled pipeline file")
    with tempfile.TemporaryDirectory() as tmp:
        package = package or compile_pipeline(str(Path(tmp) / "hydra_rlhf.yaml"), use_gpu, accelerator)
        try:
            with warnings.catch_warnings():  # kfp warns on every Client that it needs a v2 backend: README says so
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, **({"namespace": namespace} if namespace else {}))
            result = client.create_run_from_pipeline_package(package, arguments=arguments or {}, run_name=run_name,
                                                             experiment_name=experiment_name, namespace=namespace)
        except MaxRetryError as e:  # urllib3 has already retried; its traceback runs to a hundred lines
            raise ConnectionError(f"--host {host}: the KFP API does not answer ({_reason(e)}); check the URL, "
                                  "and that this machine can reach it") from None
    return result.run_id


def _reason(error: MaxRetryError) -> str:
    reason = str(error.reason or error)
    return reason.split("): ", 1)[-1].rstrip(")\"'") if "): " in reason else reason

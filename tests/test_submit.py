"""`hydra-rlhf submit` against a stand-in KFP API on 127.0.0.1 that records what it is sent, against endpoints
that do not answer (one line, not urllib3's retries' traceback), and its refusals of tracking URIs no pod reaches."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hydra_core import cli

MLFLOW = "http://mlflow.mlflow.svc:5000"


@pytest.fixture
def kfp_api():
    """A KFP v2beta1 API that answers what kfp.Client asks on submit; `.requests`: (method, path, JSON body)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            requests.append((self.command, self.path.split("?")[0], json.loads(body) if body else None))
            if self.path.startswith("/apis/v2beta1/experiments"):
                reply = {"experiment_id": "exp-1", "display_name": "hydra"}
                reply = {"experiments": [reply], "total_size": 1} if self.command == "GET" else reply
            else:
                reply = {"run_id": "run-123"} if self.path.startswith("/apis/v2beta1/runs") else {}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args):  # the test reads the requests, not the server's log lines
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url, server.requests = f"http://127.0.0.1:{server.server_port}", requests
    yield server
    server.shutdown()
    server.server_close()


def sent_run(server) -> dict:
    [run] = [body for method, path, body in server.requests if (method, path) == ("POST", "/apis/v2beta1/runs")]
    return run


def test_submit_sends_the_pipeline_with_typed_arguments_and_the_cluster_settings(kfp_api, capsys):
    argv = ["submit", "--host", kfp_api.url, "--run-name", "r1", "--experiment-name", "hydra",
            "--toleration", "nvidia.com/gpu:NoSchedule", "--node-selector", "pool=training",
            "-p", "sft_steps=300", "-p", "ppo_variants=lora,hydra-grpo", "-p", 'ppo_config={"eval_every": 1}',
            "-p", f"tracking_uri={MLFLOW}", "-p", "mlflow_secret=team-mlflow"]
    assert cli.main(argv) == 0
    assert f"submitted: run run-123 on {kfp_api.url}" in capsys.readouterr().out
    run = sent_run(kfp_api)
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {
        "sft_steps": 300, "ppo_variants": ["lora", "hydra-grpo"], "ppo_config": {"eval_every": 1},
        "tracking_uri": MLFLOW, "mlflow_secret": "team-mlflow", "kfp_ui_url": kfp_api.url}
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "hydra-rlhf"
    ppo = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-hydra-ppo"]
    assert ppo["nodeSelector"] == {"labels": {"pool": "training"}}
    assert ppo["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_compiled_package_with_a_tracking_uri_in_it_needs_none_on_the_command_line(kfp_api, tmp_path):
    package = tmp_path / "hydra_rlhf.yaml"
    assert cli.main(["compile", "-o", str(package), "-p", f"tracking_uri={MLFLOW}"]) == 0
    assert cli.main(["submit", "--host", kfp_api.url, "--package", str(package)]) == 0
    assert sent_run(kfp_api)["runtime_config"]["parameters"] == {"kfp_ui_url": kfp_api.url}  # for the MLflow link


def test_no_tracking_submits_an_untracked_run(kfp_api):
    assert cli.main(["submit", "--host", kfp_api.url, "--no-tracking"]) == 0
    assert "tracking_uri" not in sent_run(kfp_api)["runtime_config"].get("parameters", {})


@pytest.mark.parametrize("argv, message", [
    ([], "pipeline parameter tracking_uri is empty: the run would record nothing and register no model"),
    (["-p", "tracking_uri=sqlite:///mlflow.db"], "tracking_uri 'sqlite:///mlflow.db' is a file on this machine"),
    (["-p", "tracking_uri=/home/me/mlruns"], "tracking_uri '/home/me/mlruns' is a file on this machine"),
    (["-p", "tracking_uri=file:///tmp/mlruns"], "is a file on this machine"),
    (["-p", "tracking_uri=http://localhost:5000"], "in a pod, localhost is the pod itself"),
    (["--no-tracking", "-p", f"tracking_uri={MLFLOW}"], "--no-tracking, but pipeline parameter tracking_uri is"),
])
def test_a_tracking_uri_no_pod_can_reach_is_refused_before_anything_is_sent(kfp_api, argv, message, capsys):
    assert cli.main(["submit", "--host", kfp_api.url, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert kfp_api.requests == []


def closed_port() -> int:
    with socket.socket() as s:  # bound, then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_is_one_line_naming_the_flag(capsys):
    host = f"http://127.0.0.1:{closed_port()}"
    assert cli.main(["submit", "--host", host, "-p", f"tracking_uri={MLFLOW}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"hydra-rlhf submit: error: --host {host}: the KFP API does not answer (")
    assert "Connection refused" in err


def test_a_host_that_is_not_a_url_is_refused_before_any_connection(capsys):
    assert cli.main(["submit", "--host", "kubeflow.example.com"]) == 2
    assert "--host must be the KFP endpoint's http(s) URL" in capsys.readouterr().err

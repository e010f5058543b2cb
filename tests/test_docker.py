"""`hydra-rlhf run --runner docker` and containers/build.sh: the flag, the one-line errors when Docker or the
image is missing (no Docker needed), and, marked `docker` (`pytest -m docker`, left out of the default run), the
image built (or reused) and a component run in it by kfp's DockerRunner with its outputs and MLflow store on
this machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.image import IMAGE
from hydra_core import cli

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "containers" / "build.sh"


def test_run_takes_a_runner_and_defaults_to_subprocess(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--runner {subprocess,docker}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--runner", "kubernetes"])
    assert e.value.code == 2 and "invalid choice: 'kubernetes'" in capsys.readouterr().err


class _FakeDocker:
    """The docker package's client as the runner check sees it: a daemon that answers or not, an image or not."""

    def __init__(self, daemon: bool, images: tuple[str, ...] = ()):
        self.daemon, self.image_names = daemon, images
        self.images = self

    def ping(self):
        import docker

        if not self.daemon:
            raise docker.errors.DockerException("Error while fetching server API version: "
                                                "('Connection aborted.', FileNotFoundError(2, 'No such file'))")
        return True

    def get(self, name):
        import docker

        if name not in self.image_names:
            raise docker.errors.ImageNotFound(f"No such image: {name}")

    def close(self):
        pass


@pytest.mark.parametrize("daemon, images, expected", [
    (False, (), "no Docker daemon answers (Error while fetching server API version"),
    (True, (), f"image {IMAGE} is not on this machine; build it with containers/build.sh"),
])
def test_a_missing_daemon_or_image_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, daemon, images,
                                                              expected):
    import docker

    monkeypatch.setattr(docker, "from_env", lambda: _FakeDocker(daemon, images))
    out = tmp_path / "out"
    assert cli.main(["run", "--runner", "docker", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hydra-rlhf run: error: --runner docker: ") and expected in err
    assert "containers/build.sh" in err and err.count("\n") == 1
    assert not out.exists()  # nothing made, no step started


def test_docker_runner_shares_the_store_and_runs_as_this_user(tmp_path, monkeypatch):
    import docker

    from pipelines.runners import docker_runner

    monkeypatch.setattr(docker, "from_env", lambda: _FakeDocker(True, (IMAGE,)))
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("HOME", "/home/someone")  # the host's own settings stay out of the container
    store = tmp_path / "store"
    runner = docker_runner(f"sqlite:///{store / 'mlflow.db'}")
    args = runner.container_run_args
    assert args["user"] == f"{os.getuid()}:{os.getgid()}"
    assert [(m["Source"], m["Target"]) for m in args["mounts"]] == [(str(store), str(store))]
    assert store.is_dir()  # a bind mount's source must exist
    assert args["environment"] == {"HF_TOKEN": "hf-secret"}
    assert args["network_mode"] == "host" and args["working_dir"] == str(store)
    served = docker_runner("http://localhost:5000").container_run_args
    assert served["mounts"] == [] and "working_dir" not in served


def _tool_dir(tmp_path: Path, docker_script: str | None) -> dict:
    """An environment whose PATH has the few tools build.sh uses before it needs docker, and maybe a fake docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "grep"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    if docker_script is not None:
        (bin_dir / "docker").write_text(f"#!/bin/sh\n{docker_script}\n")
        (bin_dir / "docker").chmod(0o755)
    return {"PATH": str(bin_dir), "PYTHON": sys.executable}


@pytest.mark.parametrize("docker_script, expected", [
    (None, "containers/build.sh: docker is not installed"),
    ("exit 1", "containers/build.sh: no Docker daemon answers (docker info failed)"),
])
def test_build_script_fails_in_one_line_without_docker(tmp_path, docker_script, expected):
    result = subprocess.run(["/bin/bash", str(BUILD)], env=_tool_dir(tmp_path, docker_script),
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_build_script_rejects_unknown_options(tmp_path):
    result = subprocess.run(["/bin/bash", str(BUILD), "--gpu"], env=_tool_dir(tmp_path, None),
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr == "containers/build.sh: unknown option --gpu (see --help)\n"


# ---- with a Docker daemon: `pytest -m docker` ----

@pytest.mark.docker
def test_image_records_itself_and_runs_as_any_uid(image):
    """A random UID with no passwd entry and no home (OpenShift): the caches it writes are writable."""
    script = ("import os, tempfile, matplotlib.pyplot, torch, transformers, huggingface_hub;"
              "assert os.environ['HYDRA_RLHF_GIT_COMMIT'] not in ('', 'unknown');"
              "assert os.environ['HYDRA_RLHF_BUILT_IMAGE'] == " + repr(image) + ";"
              "[os.makedirs(os.environ[v], exist_ok=True) for v in ('HF_HOME', 'MPLCONFIGDIR', 'TORCH_HOME', "
              "'TORCHINDUCTOR_CACHE_DIR', 'TRITON_CACHE_DIR')];"
              "tempfile.NamedTemporaryFile(dir=os.environ['HF_HOME']).close(); tempfile.TemporaryFile().close();"
              "print('ok', os.getuid(), os.environ.get('HOME'), torch.__version__)")
    result = subprocess.run(["docker", "run", "--rm", "--user", "54321:0", image, "python", "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    uid, home, torch_version = result.stdout.split()[1:]
    assert uid == "54321" and home == "/" and torch_version.endswith("+cpu")


@pytest.mark.docker
def test_a_component_runs_in_the_image_with_its_outputs_here(image, tmp_path):
    from kfp import local
    from mlflow import MlflowClient

    from components.data_prep.component import data_prep
    from pipelines.runners import docker_runner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "pipeline"
    root.mkdir()
    local.init(runner=docker_runner(uri), pipeline_root=str(root))
    task = data_prep(dataset="", data_format="arithmetic", dataset_split="train", max_records=200,
                     eval_fraction=0.1, seed=0, tracking_uri=uri, experiment="docker-test")
    data = Path(task.outputs["data"].path)
    assert data.is_relative_to(root) and any(data.iterdir())
    assert all(path.stat().st_uid == os.getuid() for path in data.rglob("*"))  # this user's files, not root's
    client = MlflowClient(uri)
    run = client.get_run(task.outputs["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    # MLflow's Default experiment too: no path that exists only in a container
    assert all(str(tmp_path) in experiment.artifact_location for experiment in client.search_experiments())

"""Where a local run's steps run (`hydra-rlhf run --runner`): in processes of this Python (kfp's
SubprocessRunner, the default) or in containers of the project's CPU image (kfp's DockerRunner), set up so
the containers see and own what the host sees. Light at import: `hydra-rlhf run --help` lists the runners
without loading kfp."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from components.image import IMAGE

if TYPE_CHECKING:
    from kfp import local

RUNNERS = ("subprocess", "docker")


class RunnerUnavailable(ConnectionError):
    """The chosen runner cannot run here (no Docker daemon, no image); found before any step runs. A
    ConnectionError, as a server that does not answer: the CLI prints it as one line and exits 1."""


def docker_runner(tracking_uri: str, image: str = IMAGE) -> local.DockerRunner:
    """kfp's DockerRunner, set up so the steps in containers see and own what the host sees. kfp mounts the
    pipeline root at its own path; the sqlite store's folder (its artifacts are beside it) is mounted likewise.
    The steps run as this user, so they can write where this user can and leave files this user owns."""
    try:
        import docker
    except ImportError:
        raise RunnerUnavailable("--runner docker needs the docker package: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunnerUnavailable(f"--runner docker: no Docker daemon answers ({reason}); start one, then build the "
                                f"image with containers/build.sh") from None
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        # kfp would try to pull it, which fails for an unpushed tag or takes minutes for a pushed one
        raise RunnerUnavailable(f"--runner docker: image {image} is not on this machine; build it with "
                                f"containers/build.sh") from None
    finally:
        client.close()
    from kfp import local

    from pipelines.hydra_rlhf import SECRETS

    folders = _store_folders(tracking_uri)
    for folder in folders:  # a bind mount's source must exist
        folder.mkdir(parents=True, exist_ok=True)
    mounts = [docker.types.Mount(target=str(folder), source=str(folder), type="bind") for folder in folders]
    # The subprocess runner's steps inherit this environment; here only the credentials the cluster's secrets
    # would give them, so a host's other settings cannot override the image's.
    passed = {name: os.environ[name] for _, keys, _ in SECRETS.values() for name in keys.values()
              if name in os.environ}
    # host networking: a tracking server or judge on localhost is reachable as from the subprocess runner.
    # The working folder: MLflow gives the Default experiment it makes in a new store `./mlruns`, which in the
    # image's folder would name a path that exists only in that container.
    where = {"working_dir": str(folders[0])} if folders else {}
    return local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}", network_mode="host", mounts=mounts,
                              environment=passed, **where)


def _store_folders(tracking_uri: str) -> list[Path]:
    """The host folders a step needs to reach the MLflow store: a sqlite database's folder (its journal is
    written beside it, and the artifacts root is there too: hydra_core.tracking)."""
    if tracking_uri.startswith("sqlite:///"):
        return [Path(tracking_uri[len("sqlite:///"):]).parent]
    return []

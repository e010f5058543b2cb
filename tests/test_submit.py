"""`hydra-rlhf submit` against endpoints that do not answer: one line, not urllib3's retries' traceback."""

import socket

from hydra_core import cli


def closed_port() -> int:
    with socket.socket() as s:  # bound, then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_is_one_line_naming_the_flag(tmp_path, capsys):
    host = f"http://127.0.0.1:{closed_port()}"
    package = tmp_path / "spec.yaml"  # never read: the client fails before it sends anything
    package.write_text("{}")
    assert cli.main(["submit", "--host", host, "--package", str(package)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"hydra-rlhf submit: error: --host {host}: the KFP API does not answer (")
    assert "Connection refused" in err


def test_a_host_that_is_not_a_url_is_refused_before_any_connection(capsys):
    assert cli.main(["submit", "--host", "kubeflow.example.com"]) == 2
    assert "--host must be the KFP endpoint's http(s) URL" in capsys.readouterr().err

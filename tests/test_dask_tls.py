"""Dask with TLS, without leaving glimpse: embedded (temporary credentials) and a cluster started
by the verbs with certificate files, all on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import helpers
from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

pytest.importorskip("distributed")
pytest.importorskip("cryptography")

from distributed import Client, Security  # noqa: E402

from glimpse.pools import ClusterConnectionError  # noqa: E402
from glimpse.pools.dask_cluster import MakePool  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glimpse.pools.cli", "--type", "dask", *args]


@pytest.fixture
def certificates(tmp_path):
    """A self-signed certificate (its own CA) and its key, as PEM files."""
    temporary = Security.temporary()
    files = {}
    for name, text in (
        ("ca", temporary.tls_ca_file),
        ("cert", temporary.tls_client_cert),
        ("key", temporary.tls_client_key),
    ):
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        path.chmod(0o600)
        files[name] = str(path)
    return files


def _tls_options(files: dict) -> list[str]:
    return ["--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"]]


def test_an_embedded_cluster_with_security_true_speaks_tls_only():
    with MakePool(security=True, n_workers=1) as pool:
        assert pool.address.startswith("tls://127.0.0.1:")
        assert pool.map(helpers.times_ten, range(4)) == [0, 10, 20, 30]


def test_a_cluster_launched_with_certificates_takes_only_clients_that_have_them(certificates, tmp_path):
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    scheduler = start_process(
        _cli("LaunchBroker", "--port", str(port), *_tls_options(certificates)), tmp_path / "scheduler.log"
    )
    workers = None
    try:
        wait_for_port(port, 60, scheduler, tmp_path / "scheduler.log")
        workers = start_process(
            _cli("LaunchWorker", "--address", address, "--nworkers", "1", *_tls_options(certificates)),
            tmp_path / "workers.log",
        )
        security = Security(
            tls_ca_file=certificates["ca"],
            tls_client_cert=certificates["cert"],
            tls_client_key=certificates["key"],
            require_encryption=True,
        )
        with Client(address, security=security, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        with MakePool(address, security=security) as pool:
            assert pool.map(helpers.times_ten, range(4)) == [0, 10, 20, 30]
        with pytest.raises(ClusterConnectionError, match="uses TLS"):
            MakePool(address)
        with pytest.raises(ValueError, match="embedded"):
            MakePool(address, security=True)
        listed = subprocess.run(
            _cli("PingWorkers", "--address", address, *_tls_options(certificates)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and "tls://127.0.0.1" in listed.stdout, listed.stderr
    finally:
        for process in (workers, scheduler):
            if process is not None:
                stop_process_group(process)

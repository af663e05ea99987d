"""TLS for worker jobs: credentials held in memory (``Security.temporary()``) written to files of the
pool's directory, which every node sees, so a job script names files, never secrets."""

from __future__ import annotations

import os
from pathlib import Path

from distributed import Security

_ROLES = ("client", "scheduler", "worker")


def on_files(security: Security, directory: Path) -> Security:
    """``security`` with every PEM held in memory written to a file of ``directory`` (mode 0600)."""
    fields: dict[str, object] = {"require_encryption": security.require_encryption}
    written: dict[str, str] = {}

    def as_file(name: str, value: str | None) -> str | None:
        if not value or "\n" not in value:
            return value
        if value not in written:
            path = directory / f"tls-{len(written)}-{name}.pem"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(value)
            written[value] = str(path)
        return written[value]

    fields["tls_ca_file"] = as_file("ca", getattr(security, "tls_ca_file"))  # noqa: B009 (set dynamically)
    for role in _ROLES:
        fields[f"tls_{role}_cert"] = as_file(f"{role}-cert", getattr(security, f"tls_{role}_cert"))
        fields[f"tls_{role}_key"] = as_file(f"{role}-key", getattr(security, f"tls_{role}_key"))
    return Security(**fields)


def worker_options(security: Security | None) -> list[str]:
    """``dask worker``'s TLS options for ``security`` (its files)."""
    if security is None:
        return []
    config = security.get_tls_config_for_role("worker")
    given = (("--tls-ca-file", "ca_file"), ("--tls-cert", "cert"), ("--tls-key", "key"))
    return [part for option, key in given if config.get(key) for part in (option, config[key])]

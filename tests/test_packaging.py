"""The wheel a user installs: its license, changelog, type marker, description and version."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import glimpse.pools

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("Dask", "Ray", "IPython parallel", "ZeroMQ", "gearman", "SLURM")


def test_the_wheel_ships_license_changelog_and_type_marker_and_names_every_engine(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("glimpse_pools-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    assert "glimpse/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    assert "License-Expression: MIT" in metadata
    assert "# Changelog" in metadata, "the changelog is not in the wheel's description"
    summary = next(line for line in metadata.splitlines() if line.startswith("Summary: "))
    assert all(engine in summary for engine in ENGINES), summary
    version = next(line for line in metadata.splitlines() if line.startswith("Version: ")).removeprefix("Version: ")
    assert glimpse.pools.__version__ == version

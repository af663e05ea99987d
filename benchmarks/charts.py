"""Charts for the docs, drawn from the JSON the benchmarks write (``--json PATH``).

    python benchmarks/charts.py [DATA_DIR] [OUT_DIR]     # default: docs/data -> docs/_charts

The documentation build (``docs/conf.py``) runs it, so the charts always show the committed data.
Each ``<name>.json`` in ``DATA_DIR`` gives ``<name>-<part>.svg`` charts in ``OUT_DIR``; to
refresh one, run its benchmark again with ``--json docs/data/<name>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(data_dir: Path = ROOT / "docs" / "data", out_dir: Path = ROOT / "docs" / "_charts") -> list[Path]:
    """Draw every chart of ``data_dir`` into ``out_dir``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(data_dir.glob("*.json")):
        data = json.loads(path.read_text())
        draw = _DRAWERS.get(data["benchmark"])
        if draw is None:
            raise ValueError(f"{path}: no chart for benchmark {data['benchmark']!r} (known: {', '.join(_DRAWERS)})")
        written += draw(data, path.stem, out_dir)
    return written


def _stream(data: dict, name: str, out_dir: Path) -> list[Path]:
    """One chart per item size: MiB/s of glimpse, of the engine's best idiom, and of multiprocessing."""
    import matplotlib.pyplot as plt

    rows = [row for row in data["rows"] if "mib_s" in row]
    written = []
    for size in sorted({row["size"] for row in rows}):
        at_size = [row for row in rows if row["size"] == size]
        mp = next((row["mib_s"] for row in at_size if row["contender"] == "mp"), None)
        engines = [row["engine"] for row in at_size if row["contender"] == "glimpse"]
        ours = [row["mib_s"] for row in at_size if row["contender"] == "glimpse"]
        best = []
        for engine in engines:
            idioms = [
                row["mib_s"]
                for row in at_size
                if row["engine"] == engine and row["contender"] not in ("glimpse", "embedded", "mp")
            ]
            best.append(max(idioms) if idioms else 0.0)
        figure, axes = plt.subplots(figsize=(7, 1.3 + 0.55 * max(len(engines), 1)))
        positions = range(len(engines))
        axes.barh([p + 0.2 for p in positions], ours, height=0.4, label="glimpse pool.imap")
        axes.barh([p - 0.2 for p in positions], best, height=0.4, label="the engine's best idiom")
        if mp is not None:
            axes.axvline(mp, color="black", linestyle="--", linewidth=1, label="multiprocessing.Pool.imap")
        axes.set_yticks(list(positions), engines)
        axes.set_xlabel("MiB/s (more is better)")
        title = f"Streaming {_size_text(size)} items\n{data['settings']['volume_mib']} MiB"
        path = out_dir / f"{name}-{_size_text(size)}.svg"
        written.append(_finish(figure, axes, title, data["machine"], path, below=0.18, columns=3))
    return written


def _multicore(data: dict, name: str, out_dir: Path) -> list[Path]:
    """One chart: glimpse against multiprocessing, measure by measure, as ratios (> 1 favours glimpse)."""
    import matplotlib.pyplot as plt

    rows = data["rows"]
    figure, axes = plt.subplots(figsize=(8, 1.6 + 0.45 * len(rows)))
    axes.barh(range(len(rows)), [row["ratio"] for row in rows], height=0.6, label="MulticorePool")
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1, label="multiprocessing.Pool")
    axes.set_yticks(range(len(rows)), [row["measure"] for row in rows], fontsize=8)
    axes.set_xlabel("ratio to multiprocessing.Pool (more is better)")
    settings = data["settings"]
    title = (
        f"MulticorePool against multiprocessing.Pool\n{settings['processes']} processes, "
        f"{settings['load']} busy loops beside"
    )
    return [_finish(figure, axes, title, data["machine"], out_dir / f"{name}.svg", below=0.12, columns=2)]


def _slots(data: dict, name: str, out_dir: Path) -> list[Path]:
    """One chart: the efficiency of each way of running a call on many simulated slots (goal 0.9)."""
    import matplotlib.pyplot as plt

    rows = data["rows"]
    contenders = list(rows[0]["efficiency"]) if rows else []
    figure, axes = plt.subplots(figsize=(8, 1.6 + 0.6 * len(rows)))
    height = 0.8 / max(len(contenders), 1)
    for index, contender in enumerate(contenders):
        offsets = [position - 0.4 + (index + 0.5) * height for position in range(len(rows))]
        axes.barh(offsets, [row["efficiency"][contender] for row in rows], height=height, label=contender)
    axes.axvline(0.9, color="black", linestyle="--", linewidth=1, label="goal")
    axes.set_yticks(range(len(rows)), [f"{row['engine']}, {row['slots']} slots" for row in rows])
    axes.set_xlim(0, 1.05)
    axes.set_xlabel("efficiency: ideal time / wall time (more is better)")
    title = f"Many simulated slots, tasks of {data['settings']['task_seconds'] * 1000:.0f} ms"
    return [_finish(figure, axes, title, data["machine"], out_dir / f"{name}.svg", below=0.2, columns=3)]


def _finish(figure, axes, title: str, machine: dict, path: Path, below: float, columns: int) -> Path:
    """Rows top down, the title with the machine and date, the legend ``below`` the axes; save as SVG."""
    import matplotlib.pyplot as plt

    axes.invert_yaxis()
    axes.set_title(f"{title}, {machine['cores']} cores, {machine['date']}", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=columns, frameon=False)
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)
    return path


def _size_text(size: int) -> str:
    return f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"


_DRAWERS = {"stream": _stream, "multicore": _multicore, "slots": _slots}

if __name__ == "__main__":
    arguments = [Path(argument) for argument in sys.argv[1:3]]
    for written_path in main(*arguments):
        print(written_path)

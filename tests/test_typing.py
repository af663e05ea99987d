"""The public API as a type checker sees it: user code that mypy --strict accepts, and mistakes it catches.

The user code below is checked, never run. A line that ends with ``# error`` must draw an error
from mypy; every other line must draw none. glimpse's own modules are read as a user's mypy reads
an installed package: for their types, without reporting their insides.
"""

from __future__ import annotations

import site
from pathlib import Path

import pytest

import glimpse

mypy_api = pytest.importorskip("mypy.api")

USER_CODE = """
import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, Future

from glimpse.pools import Failure, MakePool, MulticorePool, Pool, SinglecorePool
from glimpse.pools.faces.multiprocessing_face import AsyncResult
from glimpse.pools.gearman_cluster import MakePool as MakeGearmanPool


def length(text: str) -> int:
    return len(text)


def add(a: int, b: int) -> int:
    return a + b


pool: Pool = MakePool("singlecore")
with SinglecorePool() as local:
    same: SinglecorePool = local
many = MulticorePool(processes=2)
many_wrong = MulticorePool(processes="2")  # error
gearman: Pool = MakeGearmanPool(workers=2)

sizes: list[int] = pool.map(length, ["a", "bb"])
sizes_wrong: list[str] = pool.map(length, ["a"])  # error
input_wrong = pool.map(length, [1, 2])  # error
ordered: Iterator[int] = pool.imap(length, ["a"])
ordered_wrong: Iterator[str] = pool.imap(length, ["a"])  # error
unordered: Iterator[int] = pool.imap_unordered(length, ["a"])
starred: list[int] = pool.starmap(add, [(1, 2)])
starred_lazily: Iterator[int] = pool.istarmap(add, [(1, 2)])
long_run: list[int] = pool.map(length, ["a"], timeout=60.0, retries=2, retry_on=OSError, errors="skip")
journalled: Iterator[int] = pool.imap(length, ["a"], journal="run.journal", key="v1")
errors_wrong = pool.map(length, ["a"], errors="ignore")  # error
timeout_wrong = pool.map(length, ["a"], timeout="60")  # error
option_wrong = pool.map(length, ["a"], timout=60)  # error
set_up = MakeGearmanPool(workers=2, initializer=print, initargs=("ready",))

future: Future[int] = pool.submit(add, 1, 2)
future_wrong: Future[str] = pool.submit(add, 1, 2)  # error
arguments_wrong = pool.submit(add, 1, "2")  # error
argument_missing = pool.submit(add, 1)  # error

applied: AsyncResult[int] = pool.apply_async(add, (1, 2))
value: int = pool.apply_async(add, (1, 2)).get(timeout=1)
value_wrong: str = pool.apply_async(add, (1, 2)).get()  # error
mapped: AsyncResult[list[int]] = pool.map_async(length, ["a"])
mapped_wrong: AsyncResult[list[str]] = pool.map_async(length, ["a"])  # error
through_future: Future[list[int]] = pool.map_async(length, ["a"]).future()

returned: list[int | Failure] = pool.map(length, ["a"], errors="return")
executor: Executor = pool.executor()
executor_results: Iterator[int] = executor.map(add, [1], [2])
executor_future: Future[int] = pool.executor().submit(add, 1, 2)
executor_future_wrong: Future[str] = pool.executor().submit(add, 1, 2)  # error


async def main() -> None:
    total: list[int] = await pool.amap(length, ["a"])
    total_wrong: list[str] = await pool.amap(length, ["a"])  # error
    stream: AsyncIterator[int] = pool.aimap(length, ["a"])
    async for size in pool.aimap_unordered(length, ["a"]):
        checked: int = size
    one: int = await pool.asubmit(add, 1, 2)
    one_wrong: str = await pool.asubmit(add, 1, 2)  # error


asyncio.run(main())
pool.close()
pool.join()
"""


def test_mypy_strict_accepts_typed_use_and_catches_mistakes(tmp_path: Path) -> None:
    code = tmp_path / "user_code.py"
    code.write_text(USER_CODE)
    config = tmp_path / "mypy.ini"
    config.write_text(_config())
    report, errors, status = mypy_api.run(
        ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", str(code)]
    )
    assert status in (0, 1), f"mypy did not run:\n{errors}{report}"
    erring = {int(line.split(":")[1]) for line in report.splitlines() if ": error:" in line}
    expected = {number for number, line in enumerate(USER_CODE.splitlines(), 1) if line.endswith("# error")}
    assert erring - expected == set(), f"mypy rejected typed code:\n{report}"
    assert expected - erring == set(), f"mypy accepted lines {sorted(expected - erring)}, which are wrong:\n{report}"


def test_package_is_marked_typed() -> None:
    assert (Path(glimpse.__file__).parent / "py.typed").is_file(), "glimpse/py.typed is missing (PEP 561)"


def _config() -> str:
    """Strict for the user's code; glimpse found where it was imported from (an editable install
    hides it from mypy behind an import hook), its own modules read for their types only."""
    lines = ["[mypy]", "strict = True"]
    root = Path(glimpse.__file__).resolve().parent.parent
    if str(root) not in {str(Path(p).resolve()) for p in site.getsitepackages()}:
        lines.append(f"mypy_path = {root}")
    lines += ["[mypy-glimpse.*]", "follow_imports = silent"]
    return "\n".join(lines) + "\n"

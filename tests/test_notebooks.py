"""The notebooks under ``notebooks/`` run top to bottom on a fresh kernel, each on its own stack.

They run side by side (each starts its own nats-server on a random port and its own SQLite in a
temporary directory), and the kernels' working directory is the test's temporary directory,
so nothing is left in the repository. The notebooks check their own results with ``assert``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_quickstart", "02_crash_and_resume", "03_inspect"]
CELL_TIMEOUT = 240  # seconds


def _execute_all(workdir: Path) -> dict[str, Any]:
    async def one(name: str) -> Any:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        cwd = workdir / name
        cwd.mkdir()
        client = nbclient.NotebookClient(
            nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        )
        await client.async_execute()
        return nb

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(n) for n in NAMES), return_exceptions=True)

    with ThreadPoolExecutor(1) as pool:  # a loop of its own, whatever the test's loop does
        results = pool.submit(asyncio.run, main()).result()
    return dict(zip(NAMES, results, strict=True))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("notebooks")
    yield _execute_all(workdir)
    leftovers = [p for p in workdir.rglob("*") if p.is_file()]
    assert not leftovers, f"the notebooks left files behind: {leftovers}"


def outputs(nb: Any, kind: str = "text") -> str:
    """Everything the notebook printed (``text``), or the MIME types it displayed (``mime``)."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "text" and out.get("output_type") == "stream" and out.get("name") == "stdout":
                parts.append(out["text"])
            if kind == "mime" and "data" in out:
                parts.extend(out["data"].keys())
    return "\n".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(executed: dict[str, Any], name: str) -> None:
    nb = executed[name]
    if isinstance(nb, BaseException):
        raise nb
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells), "a cell did not run"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


def test_quickstart_runs_sync_and_async(executed: dict[str, Any]) -> None:
    text = outputs(executed["01_quickstart"])
    assert "ai: you said 'hello' (thought #1)" in text
    assert "ai: you said 'and now async' (thought #2)" in text
    assert "next step: 1" in text


def test_crash_notebook_kills_with_sigkill_and_repeats_no_finished_step(executed: dict[str, Any]) -> None:
    text = outputs(executed["02_crash_and_resume"])
    assert "child exit code: -9" in text
    assert "killed with exit code -9" in text
    assert "revise           2        1" in text  # in flight at the kill: started twice, finished once
    assert "fetch            1        1" in text


def test_inspect_notebook_plots_step_timings(executed: dict[str, Any]) -> None:
    nb = executed["03_inspect"]
    assert "image/png" in outputs(nb, "mime")
    text = outputs(nb)
    assert "research" in text and "branch at step" in text  # Inspector.history marks the forks
    assert "added    answer = " in text and "changed  findings" in text  # Inspector.diff

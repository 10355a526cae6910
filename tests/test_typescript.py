"""The TypeScript SDK's suites (``sdk/typescript``, vitest) as part of the Python test run.

``npm test`` builds ``@skialith/agent-core`` and ``@skialith/langgraph-checkpoint`` with ``tsc``,
type-checks the tests, and runs them against real sidecars it starts through
``python -m skialith_langgraph.sidecar.devserver`` with this interpreter: the official LangGraph.js
checkpointer validation suite, a LangGraph.js graph, the seed's snippet, agents written in one
language and resumed in the other, and faults. The Node packages come from the committed lock file:
the README's test command runs ``npm ci --prefix sdk/typescript`` first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "sdk" / "typescript"
TIMEOUT = 540  # seconds for the whole npm test (about 1 to 2 minutes on a quiet machine)
OUTPUT_TAIL = 20_000  # characters of npm's output shown on failure


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 30)
def test_typescript_suites() -> None:
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail(
                "npm is not on PATH; CI must run the TypeScript suites: install Node >= 20", pytrace=False
            )
        pytest.skip("npm is not on PATH: install Node >= 20 to run the TypeScript suites")
    if not (SDK / "node_modules" / ".package-lock.json").exists():
        pytest.fail(
            f"the Node packages of {SDK} are not installed; run `npm ci --prefix sdk/typescript` "
            "(part of the README's test command) first",
            pytrace=False,
        )
    env = {**os.environ, "SKIALITH_PYTHON": sys.executable, "FORCE_COLOR": "0", "NO_COLOR": "1"}
    try:
        done = subprocess.run(
            [npm, "test"],
            cwd=SDK,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(
            f"npm test did not finish within {TIMEOUT} s; its output:\n{out[-OUTPUT_TAIL:]}", pytrace=False
        )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"npm test failed (exit {done.returncode}):\n{output[-OUTPUT_TAIL:]}", pytrace=False)
    # vitest's summary: every file passed and tests ran
    assert "Test Files" in output and "failed" not in output.split("Test Files", 1)[1], output[-OUTPUT_TAIL:]

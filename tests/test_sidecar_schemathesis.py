"""A property-based run over the sidecar's OpenAPI document (schemathesis): for every operation,
generated requests (valid and invalid) never get a 5xx from a real sidecar (the devserver the
TypeScript tests use: nats-server, SQLite, projector)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "schemathesis-token"
MAX_EXAMPLES = 15  # per operation and mode; 10 operations x 2 modes: the run takes well under a minute


@pytest.fixture(scope="module")
def devserver() -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIALITH_")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skialith_langgraph.sidecar.devserver", "--token", TOKEN],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "devserver printed nothing"
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # end of stdin stops it
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


# the committed document; tests/test_sidecar.py checks it is the one the server serves
SCHEMA = schemathesis.openapi.from_dict(json.loads((ROOT / "docs" / "openapi.json").read_text("utf-8")))
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


# operations whose only parameter is a free string (or none) have no invalid request to generate
NO_NEGATIVE = {"GET /healthz", "GET /readyz", "GET /metrics", "GET /v1/agents/{agent_id}/state"}
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label in sorted(OPERATIONS) if label not in NO_NEGATIVE
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_no_server_errors(label: str, mode: GenerationMode, devserver: dict[str, Any]) -> None:
    """Valid requests (positive) and requests that break the schema (negative) of each operation."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=devserver["url"], headers=headers, checks=[not_a_server_error])

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        # the schemathesis that resolves beside langgraph-api (4.15) finds no schema-breaking
        # request for some operations; the positive run of the same operation still ran
        pytest.skip(f"schemathesis {schemathesis.__version__} generated no invalid request for {label}")

"""LangGraph's official conformance suite (langgraph-checkpoint-conformance), all capabilities.

It runs twice per database: with the projector running (reads come from the read model) and with
the projector stopped (every read is answered from the log), which proves both read paths agree
with LangGraph's semantics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from skialith_langgraph import Projector, Settings, SkialithCheckpointer


@pytest.mark.parametrize("projector_running", [True, False], ids=["projector", "log-only"])
async def test_conformance_all_capabilities(settings: Settings, projector_running: bool) -> None:
    if not projector_running:
        settings = dataclasses.replace(settings, read_wait=0.0)
    projector = Projector(settings, fetch_timeout=0.2)

    async def lifespan() -> AsyncIterator[None]:
        if projector_running:
            await projector.start()
        yield
        if projector_running:
            await projector.stop()

    @checkpointer_test(name="SkialithCheckpointer", lifespan=lifespan)
    async def factory() -> AsyncIterator[SkialithCheckpointer]:
        async with SkialithCheckpointer(settings=settings) as saver:
            yield saver

    report = await validate(factory)
    failures = {cap: result.failures for cap, result in report.results.items() if not result.passed}
    assert not failures, failures
    assert {cap for cap, result in report.results.items() if result.passed} == {
        c.value for c in ALL_CAPABILITIES
    }

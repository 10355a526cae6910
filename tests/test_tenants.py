"""Tenants and subject prefixes of several tokens (issue 10, item 2).

* A prefix like ``acme.prod.skialith`` works end to end: a graph run, the projector, reads from
  the read model and from the log, delete, prune, and values large enough to travel in parts.
  Before, a dotted prefix was refused (after a NATS connection had been opened).
* The tenant setup of docs/security.md, the server config below verbatim: one NATS account per
  tenant (each with its own JetStream), and users allowed only their own prefix, stream and
  consumers. Tenant A's credentials cannot read or write tenant B's subjects or stream, and A's
  projector sees only A.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from graphs import linear
from nats_auth import nats_server
from sqlalchemy import select
from support import wait_for_watermark

from skialith_langgraph import Projector, Settings, SkialithCheckpointer
from skialith_langgraph.errors import LogError
from skialith_langgraph.log import Log, connect
from skialith_langgraph.readmodel import ReadModel
from skialith_langgraph.readmodel.tables import checkpoints
from skialith_langgraph.traces import TraceIngest

pytestmark = pytest.mark.nats

BIG = 5000  # characters of a value: several parts at chunk_size=1024


def _config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id}}


async def _caught_up(settings: Settings, log: Log) -> None:
    model = ReadModel.from_url(settings.database_url)
    try:
        await wait_for_watermark(model, await log.stream_last_seq())
    finally:
        await model.close()


async def _threads(database_url: str) -> set[str]:
    model = ReadModel.from_url(database_url)
    try:
        async with model.connect() as conn:
            return {r[0] for r in (await conn.execute(select(checkpoints.c.thread_id))).all()}
    finally:
        await model.close()


# -- a prefix of several tokens, end to end ---------------------------------------------------------


async def test_prefix_of_several_tokens_round_trip(settings: Settings, tmp_path: Path, unique: str) -> None:
    settings = dataclasses.replace(settings, subject_prefix=f"acme{unique}.prod.skialith", chunk_size=1024)
    projector = Projector(settings, fetch_timeout=0.2)
    traces = TraceIngest(settings, fetch_timeout=0.2)
    await projector.start()
    await traces.start()
    writer = SkialithCheckpointer(settings=settings)
    log = await Log.open(settings)
    try:
        app = linear(Counter()).compile(checkpointer=writer)
        for thread in ("t1", "t2"):
            await app.ainvoke({"log": ["x" * BIG]}, _config(thread))
        expected = (await app.aget_state(_config("t1"))).values
        assert expected["log"][0] == "x" * BIG and len(expected["log"]) == 4

        info = await log.js.stream_info(settings.stream, subjects_filter=">")
        subjects = list((info.state.subjects or {}).keys())
        assert subjects and all(s.startswith(f"acme{unique}.prod.skialith.t.") for s in subjects)
        assert any(".k." in s for s in subjects), "the large value travelled in parts"

        # from the read model
        await _caught_up(settings, log)
        reader = SkialithCheckpointer(settings=settings)
        try:
            assert (
                await linear(Counter()).compile(checkpointer=reader).aget_state(_config("t1"))
            ).values == expected
            assert reader.read_stats.database >= 1 and reader.read_stats.log == 0
        finally:
            await reader.aclose()
        assert await _threads(settings.database_url) == {"t1", "t2"}

        # from the log (an empty read model, no waiting)
        lone = dataclasses.replace(
            settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", read_wait=0
        )
        from_log = SkialithCheckpointer(settings=lone)
        try:
            assert (
                await linear(Counter()).compile(checkpointer=from_log).aget_state(_config("t1"))
            ).values == expected
            assert from_log.read_stats.log >= 1

            # prune keeps the latest checkpoint (stored again, parts and all); delete removes t2
            before = await writer.aget_tuple(_config("t1"))
            await writer.aprune(["t1"], strategy="keep_latest")
            await writer.adelete_thread("t2")
            after = await from_log.aget_tuple(_config("t1"))
            assert before is not None and after is not None
            assert after.checkpoint == before.checkpoint
            assert [t async for t in from_log.alist(_config("t1"))] == [after]
            assert await from_log.aget_tuple(_config("t2")) is None
        finally:
            await from_log.aclose()
        await _caught_up(settings, log)
        assert await _threads(settings.database_url) == {"t1"}
        assert projector.stats.dead_letters == 0 and traces.stats.dead_letters == 0
    finally:
        await log.close()
        await writer.aclose()
        await traces.stop()
        await projector.stop()


# -- tenants ------------------------------------------------------------------------------------------

ACME_PASSWORD = "acme-pw-7f3a9c"
GLOBEX_PASSWORD = "globex-pw-2b8e1d"


def tenant_account(name: str, user: str, password: str, prefix: str, stream: str) -> str:
    """One tenant: its own account (and so its own JetStream), one user allowed only what
    Skialith needs on its own prefix and stream. This is the config of docs/security.md."""
    js = "$JS.API"
    return f"""  {name}: {{
    jetstream: enabled
    users: [
      {{
        user: {user}
        password: "{password}"
        permissions: {{
          publish: {{
            allow: [
              "{prefix}.>",
              "{js}.INFO",
              "{js}.STREAM.INFO.{stream}",
              "{js}.STREAM.CREATE.{stream}",
              "{js}.STREAM.PURGE.{stream}",
              "{js}.DIRECT.GET.{stream}",
              "{js}.DIRECT.GET.{stream}.>",
              "{js}.CONSUMER.CREATE.{stream}.>",
              "{js}.CONSUMER.DURABLE.CREATE.{stream}.>",
              "{js}.CONSUMER.INFO.{stream}.>",
              "{js}.CONSUMER.DELETE.{stream}.>",
              "{js}.CONSUMER.MSG.NEXT.{stream}.>",
              "{js}.CONSUMER.LIST.{stream}",
              "{js}.CONSUMER.NAMES.{stream}",
              "$JS.ACK.{stream}.>",
              "{js}.STREAM.INFO.KV_{stream}_leases",
              "{js}.STREAM.CREATE.KV_{stream}_leases",
              "{js}.DIRECT.GET.KV_{stream}_leases.>",
              "$KV.{stream}_leases.>",
            ]
          }}
          subscribe: {{
            allow: ["_INBOX.>", "$JS.EVENT.ADVISORY.STREAM.*.{stream}"]
          }}
        }}
      }}
    ]
  }}
"""


TENANTS_CONFIG = (
    "accounts {\n"
    + tenant_account("ACME", "acme", ACME_PASSWORD, "acme.prod.skialith", "ACME")
    + tenant_account("GLOBEX", "globex", GLOBEX_PASSWORD, "globex.skialith", "GLOBEX")
    + "}\n"
)


async def test_tenant_cannot_reach_the_other_tenants_subjects_or_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="skialith_langgraph")
    with nats_server(tmp_path, TENANTS_CONFIG) as server:
        base = Settings(nats_url=server.url, publish_timeout=1.0, read_wait=0.0)
        acme = dataclasses.replace(
            base,
            nats_user="acme",
            nats_password=ACME_PASSWORD,
            subject_prefix="acme.prod.skialith",
            stream="ACME",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'acme.db'}",
        )
        globex = dataclasses.replace(
            base,
            nats_user="globex",
            nats_password=GLOBEX_PASSWORD,
            subject_prefix="globex.skialith",
            stream="GLOBEX",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'globex.db'}",
        )
        projectors = [Projector(acme, fetch_timeout=0.2), Projector(globex, fetch_timeout=0.2)]
        for p in projectors:
            await p.start()
        try:
            for tenant, thread in ((acme, "acme-thread"), (globex, "globex-thread")):
                async with SkialithCheckpointer(settings=tenant) as saver:
                    await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _config(thread))
            for tenant in (acme, globex):
                log = await Log.open(tenant)
                try:
                    await _caught_up(tenant, log)
                finally:
                    await log.close()
            # each projector sees only its tenant
            assert await _threads(acme.database_url) == {"acme-thread"}
            assert await _threads(globex.database_url) == {"globex-thread"}

            globex_log = await Log.open(globex)
            try:
                globex_last = await globex_log.stream_last_seq()

                # A's credentials with B's prefix and stream: no write lands, no read answers
                intruder = dataclasses.replace(
                    acme, subject_prefix="globex.skialith", stream="GLOBEX", database_url=globex.database_url
                )
                with pytest.raises(LogError, match="permissions violation"):
                    async with SkialithCheckpointer(settings=intruder) as saver:
                        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _config("x"))
                nc = await connect(acme)
                try:
                    with pytest.raises(nats.errors.Error):  # a timeout: the server dropped the request
                        await nc.jetstream(timeout=1.0).publish("globex.skialith.t.bx.c", b"forged")
                    with pytest.raises(nats.errors.Error):
                        await nc.jetstream(timeout=1.0).stream_info("GLOBEX")
                    with pytest.raises(nats.errors.Error):
                        await nc.request("$JS.API.DIRECT.GET.GLOBEX", b'{"seq": 1}', timeout=1.0)
                    await nc.subscribe("globex.skialith.>")
                    await nc.flush()
                    await asyncio.sleep(0.3)
                finally:
                    await nc.close()
                assert await globex_log.stream_last_seq() == globex_last, "nothing was written to B"
            finally:
                await globex_log.close()
            violations = " ".join(r.getMessage() for r in caplog.records).lower()
            assert 'permissions violation for publish to "globex.skialith.t.bx.c"' in violations
            assert 'permissions violation for subscription to "globex.skialith.>"' in violations
            assert 'permissions violation for publish to "$js.api.stream.info.globex"' in violations
            assert await _threads(globex.database_url) == {"globex-thread"}
        finally:
            for p in projectors:
                await p.stop()

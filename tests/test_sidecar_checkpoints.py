"""The raw checkpoint routes of the sidecar (what the LangGraph.js checkpointer uses), over a real
sidecar, nats-server and read model: values stored as the client serialized them, LangGraph's
put / put_writes / get_tuple / list / delete_thread semantics, and bad input refused before a write.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from sidecar_support import error, sidecar, stream_last_seq

from skialith_langgraph import SkialithCheckpointer
from skialith_langgraph.config import Settings
from skialith_langgraph.sidecar.checkpoints import PassThroughSerde, Raw

BINARY = bytes(range(256))  # not UTF-8, not JSON: stored and returned byte for byte


def typed(data: bytes, type_: str = "bytes") -> dict[str, str]:
    return {"type": type_, "data": base64.b64encode(data).decode()}


def as_json(value: Any) -> dict[str, str]:
    return typed(json.dumps(value).encode(), "json")


def checkpoint(cid: str, values: dict[str, Any], versions: dict[str, Any], v: int = 4) -> dict[str, Any]:
    return {
        "v": v,
        "id": cid,
        "ts": "2026-11-29T21:00:00.000Z",
        "channel_values": values,
        "channel_versions": versions,
        "versions_seen": {"": {"someChannel": 1}},
    }


def put_body(
    thread: str, ckpt: dict[str, Any], parent: str | None = None, ns: str = "", **meta: Any
) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if parent is not None:
        conf["checkpoint_id"] = parent
    return {
        "config": {"configurable": conf},
        "checkpoint": ckpt,
        "metadata": {"source": "loop", "step": 0, "parents": {}, **meta},
        "newVersions": ckpt["channel_versions"],
    }


def test_pass_through_serde_keeps_client_values_and_reads_back_its_own() -> None:
    serde = PassThroughSerde()
    assert serde.dumps_typed(Raw("json", b"[1]")) == ("json", b"[1]")
    assert serde.loads_typed(("bytes", BINARY)) == Raw("bytes", BINARY)
    typ, data = serde.dumps_typed({"source": "input", "step": -1, "parents": {}})
    assert typ == "msgpack"
    assert serde.loads_typed((typ, data)) == {"source": "input", "step": -1, "parents": {}}


async def test_put_writes_get_list_delete_over_http(settings: Settings) -> None:
    async with sidecar(settings) as client:
        first = put_body("t-1", checkpoint("1", {"a": typed(BINARY), "b": as_json(["x"])}, {"a": 1, "b": 1}))
        r = await client.post("/v1/checkpoints", json=first)
        assert r.status_code == 201, r.text
        assert r.json() == {
            "config": {"configurable": {"thread_id": "t-1", "checkpoint_ns": "", "checkpoint_id": "1"}}
        }
        # a task's writes to the first checkpoint: the error channel keeps its own index
        r = await client.post(
            "/v1/writes",
            json={
                "config": r.json()["config"],
                "writes": [{"channel": "b", **as_json(["y"])}, {"channel": "__error__", **as_json("boom")}],
                "taskId": "task-1",
                "taskPath": "~__pregel_pull, n",
            },
        )
        assert r.status_code == 201, r.text
        # the second checkpoint changes only "b": "a" is read back from the first one's blob
        second = put_body(
            "t-1", checkpoint("2", {"b": as_json(["x", "y"])}, {"a": 1, "b": 2}), parent="1", step=1
        )
        second["checkpoint"]["channel_values"]["a"] = typed(b"not sent: a did not change")
        second["newVersions"] = {"b": 2}
        assert (await client.post("/v1/checkpoints", json=second)).status_code == 201

        latest = (await client.get("/v1/checkpoints/tuple", params={"thread_id": "t-1"})).json()
        assert latest["config"]["configurable"]["checkpoint_id"] == "2"
        assert latest["parentConfig"] == {
            "configurable": {"thread_id": "t-1", "checkpoint_ns": "", "checkpoint_id": "1"}
        }
        assert latest["checkpoint"]["channel_values"] == {"a": typed(BINARY), "b": as_json(["x", "y"])}
        assert latest["checkpoint"]["channel_versions"] == {"a": 1, "b": 2}  # numbers stay numbers
        assert latest["metadata"] == {"source": "loop", "step": 1, "parents": {}}
        assert latest["pendingWrites"] == []

        old = (
            await client.get("/v1/checkpoints/tuple", params={"thread_id": "t-1", "checkpoint_id": "1"})
        ).json()
        assert old["parentConfig"] is None
        assert old["checkpoint"]["channel_values"] == {"a": typed(BINARY), "b": as_json(["x"])}
        # in LangGraph's order (task path, task id, index): the error's index is -1
        assert [(t, c, v) for t, c, v in old["pendingWrites"]] == [
            ("task-1", "__error__", as_json("boom")),
            ("task-1", "b", as_json(["y"])),
        ]

        async def ids(body: dict[str, Any]) -> list[str]:
            r = await client.post("/v1/checkpoints/search", json=body)
            assert r.status_code == 200, r.text
            return [item["config"]["configurable"]["checkpoint_id"] for item in r.json()["items"]]

        assert await ids({"config": {"configurable": {"thread_id": "t-1"}}}) == ["2", "1"]
        assert await ids({"config": {"configurable": {"thread_id": "t-1"}}, "limit": 1}) == ["2"]
        assert await ids({"config": {"configurable": {"thread_id": "t-1"}}, "filter": {"step": 0}}) == ["1"]
        assert await ids({"before": {"configurable": {"checkpoint_id": "2"}}}) == ["1"]
        assert await ids({}) == ["2", "1"]

        r = await client.delete("/v1/checkpoints", params={"thread_id": "t-1"})
        assert r.status_code == 204
        missing = await client.get("/v1/checkpoints/tuple", params={"thread_id": "t-1"})
        assert missing.status_code == 404
        assert "not found" in error(missing)["message"]
        assert await ids({}) == []


async def test_python_reads_a_thread_written_over_http(settings: Settings) -> None:
    """Checkpoint and metadata are stored as the Python checkpointer stores them, and values of
    type ``json`` (LangGraph.js's serde) decode with Python's: ``skialith`` tools read these threads."""
    async with sidecar(settings) as client:
        body = put_body("js-1", checkpoint("1", {"messages": as_json(["hi", {"n": 1}])}, {"messages": 1}))
        assert (await client.post("/v1/checkpoints", json=body)).status_code == 201
    async with SkialithCheckpointer(settings=settings) as saver:
        found = await saver.aget_tuple({"configurable": {"thread_id": "js-1"}})
    assert found is not None
    assert found.checkpoint["id"] == "1"
    assert found.checkpoint["channel_values"] == {"messages": ["hi", {"n": 1}]}
    assert found.metadata == {"source": "loop", "step": 0, "parents": {}}


# refused before anything reaches the stream or a database: one read model is enough
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("mutate", "status", "says"),
    [
        (lambda b: b["checkpoint"]["channel_values"].update(a=typed(b"x", "msgpack")), 400, "reserved"),
        (
            lambda b: b["checkpoint"]["channel_values"].update(a={"type": "bytes", "data": "@@@"}),
            400,
            "base64",
        ),
        (lambda b: b["checkpoint"]["channel_values"].update(a=typed(b"x", "t" * 19)), 422, "type"),
        (lambda b: b["config"]["configurable"].pop("thread_id"), 422, "thread_id"),
        (lambda b: b["config"]["configurable"].update(thread_id=7), 400, "thread_id"),
        (lambda b: b["checkpoint"].pop("id"), 422, "id"),
        (lambda b: b.update(extra=1), 422, "extra"),
        (lambda b: b["metadata"].update(big=2**64), 400, "64 bits"),
        (lambda b: b["metadata"].update(s="\ud800"), 400, "valid Unicode"),
        (lambda b: b["checkpoint"]["channel_values"].update({"\udfff": typed(b"x")}), 400, "valid Unicode"),
    ],
    ids=[
        "reserved-type",
        "bad-base64",
        "long-type",
        "no-thread",
        "int-thread",
        "no-id",
        "unknown-field",
        "int-beyond-64-bits",
        "lone-surrogate",
        "lone-surrogate-channel",
    ],
)
async def test_bad_puts_are_refused_and_nothing_is_written(
    settings: Settings, mutate: Any, status: int, says: str
) -> None:
    async with sidecar(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        before = await stream_last_seq(settings)
        body = put_body("bad", checkpoint("1", {"a": typed(b"ok")}, {"a": 1}))
        mutate(body)
        # json.dumps escapes lone surrogates (\\ud800), as a JavaScript client's JSON.stringify does
        r = await client.post(
            "/v1/checkpoints", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == status, r.text
        assert says in error(r)["message"]
        assert await stream_last_seq(settings) == before


@SQLITE_ONLY
async def test_writes_need_a_checkpoint_id(settings: Settings) -> None:
    async with sidecar(settings) as client:
        r = await client.post(
            "/v1/writes",
            json={
                "config": {"configurable": {"thread_id": "t"}},
                "writes": [{"channel": "a", **typed(b"x")}],
                "taskId": "task",
            },
        )
        assert r.status_code == 422, r.text
        assert "checkpoint_id" in error(r)["message"]


@SQLITE_ONLY
async def test_a_body_that_is_not_json_is_a_400(settings: Settings) -> None:
    async with sidecar(settings) as client:
        r = await client.post(
            "/v1/checkpoints", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        assert isinstance(r, httpx.Response) and error(r)["code"] == "bad_request"


async def test_search_pages_with_a_cursor(settings: Settings) -> None:
    """``/v1/checkpoints/search`` answers a page at a time (``limit``, default 100, at most 1000) and
    ``nextCursor`` continues it: every checkpoint once, in the list's order, even when one id is
    in several threads and namespaces (a page may end inside such a run)."""
    async with sidecar(settings) as client:
        placed = [("pa", "", f"{i:02d}") for i in range(1, 8)]
        placed += [("pb", "", f"{i:02d}") for i in (3, 5, 6)] + [("pa", "sub", f"{i:02d}") for i in (5, 6)]
        for thread, ns, cid in placed:
            body = put_body(thread, checkpoint(cid, {}, {}), ns=ns, step=int(cid))
            assert (await client.post("/v1/checkpoints", json=body)).status_code == 201

        async def pages(query: dict[str, Any], limit: int) -> tuple[list[tuple[str, str, str]], list[int]]:
            seen: list[tuple[str, str, str]] = []
            sizes: list[int] = []
            cursor = None
            while True:
                r = await client.post(
                    "/v1/checkpoints/search", json={**query, "limit": limit, "cursor": cursor}
                )
                assert r.status_code == 200, r.text
                items = r.json()["items"]
                sizes.append(len(items))
                seen += [
                    (c["thread_id"], c["checkpoint_ns"], c["checkpoint_id"])
                    for c in (item["config"]["configurable"] for item in items)
                ]
                cursor = r.json()["nextCursor"]
                if cursor is None:
                    return seen, sizes

        everything = (await client.post("/v1/checkpoints/search", json={})).json()
        assert everything["nextCursor"] is None
        whole = [
            (c["thread_id"], c["checkpoint_ns"], c["checkpoint_id"])
            for c in (item["config"]["configurable"] for item in everything["items"])
        ]
        assert sorted(whole) == sorted(placed)
        assert [cid for _, _, cid in whole] == sorted((cid for _, _, cid in placed), reverse=True)
        for limit in (1, 2, 3, 5, 11, 12):
            seen, sizes = await pages({}, limit)
            assert seen == whole, limit
            assert all(n == limit for n in sizes[:-1]) and 0 < sizes[-1] <= limit, (limit, sizes)
        thread = {"config": {"configurable": {"thread_id": "pa", "checkpoint_ns": ""}}}
        seen, sizes = await pages(thread, 3)
        assert [cid for _, _, cid in seen] == ["07", "06", "05", "04", "03", "02", "01"] and sizes == [
            3,
            3,
            1,
        ]
        seen, _ = await pages({**thread, "before": {"configurable": {"checkpoint_id": "05"}}}, 2)
        assert [cid for _, _, cid in seen] == ["04", "03", "02", "01"]
        seen, _ = await pages({**thread, "filter": {"step": 6}}, 1)
        assert seen == [("pa", "", "06")]

        empty = await client.post("/v1/checkpoints/search", json={"limit": 0})
        assert empty.json() == {"items": [], "nextCursor": None}
        too_many = await client.post("/v1/checkpoints/search", json={"limit": 1001})
        assert too_many.status_code == 422 and "1000" in error(too_many)["message"]
        for bad in ("nope", base64.urlsafe_b64encode(b'["x", -1]').decode(), ""):
            r = await client.post("/v1/checkpoints/search", json={"cursor": bad})
            assert r.status_code == 400 and "cursor" in error(r)["message"], bad

"""Read access to LangGraph threads over the sidecar (``/v1/threads...``), real NATS and databases."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

from graphs import linear, with_interrupt
from sidecar_support import error, sidecar

from skialith_langgraph import Settings, SkialithCheckpointer


def _cfg(thread_id: str, **meta: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "metadata": meta}


async def test_threads_history_and_state(settings: Settings) -> None:
    calls: Counter[str] = Counter()
    async with SkialithCheckpointer(settings=settings) as saver:
        await linear(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("done/1", team="red"))
        await (
            with_interrupt(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("asks", team="blue"))
        )
    async with sidecar(settings) as client:
        page = (await client.get("/v1/threads")).json()
        assert [t["thread_id"] for t in page["threads"]] == ["asks", "done/1"]
        assert page["next"] is None
        by_id = {t["thread_id"]: t for t in page["threads"]}
        assert by_id["done/1"]["status"] == "finished" and by_id["asks"]["status"] == "interrupted"

        first = (await client.get("/v1/threads", params={"limit": 1})).json()
        assert [t["thread_id"] for t in first["threads"]] == ["asks"]
        second = (await client.get("/v1/threads", params={"limit": 1, "after": first["next"]})).json()
        assert [t["thread_id"] for t in second["threads"]] == ["done/1"]
        red = (await client.get("/v1/threads", params={"metadata.team": "red"})).json()
        assert [t["thread_id"] for t in red["threads"]] == ["done/1"]
        waiting = (await client.get("/v1/threads", params={"status": "interrupted"})).json()
        assert [t["thread_id"] for t in waiting["threads"]] == ["asks"]

        tid = quote("done/1", safe="")
        history = (await client.get(f"/v1/threads/{tid}/history")).json()
        steps = [c["step"] for c in history["checkpoints"]]
        assert steps == [-1, 0, 1, 2, 3] and history["next"] is None
        older = (await client.get(f"/v1/threads/{tid}/history", params={"limit": 2})).json()
        assert [c["step"] for c in older["checkpoints"]] == [2, 3] and older["next"]
        rest = (await client.get(f"/v1/threads/{tid}/history", params={"after": older["next"]})).json()
        assert [c["step"] for c in rest["checkpoints"]] == [-1, 0, 1]

        state = (await client.get(f"/v1/threads/{tid}/state")).json()
        assert state["thread_id"] == "done/1" and state["values"]["log"] == ["a1", "b1", "c1"]
        assert state["status"] == "finished"
        at = history["checkpoints"][2]["checkpoint_id"]
        past = (await client.get(f"/v1/threads/{tid}/state", params={"checkpoint_id": at})).json()
        assert past["values"]["log"] == ["a1"]

        missing = await client.get("/v1/threads/nope/state")
        assert missing.status_code == 404 and "nope" in error(missing)["message"]
        assert (await client.get("/v1/threads/nope/history")).status_code == 404
        bad = await client.get("/v1/threads", params={"after": "garbage"})
        assert bad.status_code == 400 and error(bad)["code"] == "bad_request"
        bad_since = await client.get("/v1/threads", params={"since": "yesterday"})
        assert bad_since.status_code == 400

"""skialith_langgraph.inspect: the views of issue 12 in Python, over real NATS and databases, with
the projector stopped (answered from the log) and running (answered from the read model)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from graphs import Flag, chat, linear, parallel_with_failure, with_interrupt, with_subgraph_node
from langchain_core.messages import HumanMessage
from langgraph.types import Command

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.inspect import (
    InspectError,
    Inspector,
    namespace_tree,
    parse_since,
    structural_diff,
)


@pytest.fixture(params=["log", "database"])
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` with the projector stopped ("log") or running ("database")."""
    if request.param == "log":
        yield dataclasses.replace(settings, read_wait=0.2)
        return
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        yield dataclasses.replace(settings, read_wait=10.0)
    finally:
        await projector.stop()


def _cfg(thread_id: str, **meta: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "metadata": meta}


async def _fill(saver: SkialithCheckpointer) -> None:
    """Four threads, oldest first: finished, interrupted, errored, a chat."""
    calls: Counter[str] = Counter()
    await linear(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("done", team="red"))
    await with_interrupt(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("asks", team="blue"))
    with pytest.raises(RuntimeError):
        await (
            parallel_with_failure(calls, Flag(True))
            .compile(checkpointer=saver)
            .ainvoke({"log": []}, _cfg("fails", team="red"))
        )
    app = chat(calls).compile(checkpointer=saver)
    await app.ainvoke({"messages": [HumanMessage("hi", id="h-1")]}, _cfg("talk"))
    await app.ainvoke({"messages": [HumanMessage("again", id="h-2")]}, _cfg("talk"))


async def test_threads_newest_first_with_status_filters_and_paging(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        await _fill(saver)
        insp = Inspector(saver)
        page = await insp.threads(limit=10)
        assert [t.thread_id for t in page.threads] == ["talk", "fails", "asks", "done"]
        assert page.cursor is None
        by_id = {t.thread_id: t for t in page.threads}
        assert by_id["done"].status == "finished" and by_id["done"].last_step == 3
        assert by_id["done"].checkpoints == 5
        assert by_id["asks"].status == "interrupted" and by_id["asks"].next == ["ask"]
        assert by_id["fails"].status == "errored"
        assert by_id["talk"].status == "finished" and by_id["talk"].last_activity

        # one per page, following the cursor, gives the same list without repeats
        seen, cursor = [], None
        while True:
            p = await insp.threads(limit=1, after=cursor)
            seen += [t.thread_id for t in p.threads]
            if p.cursor is None:
                break
            cursor = p.cursor
        assert seen == ["talk", "fails", "asks", "done"]

        assert [t.thread_id for t in (await insp.threads(status="errored")).threads] == ["fails"]
        red = await insp.threads(metadata={"team": "red"})
        assert [t.thread_id for t in red.threads] == ["fails", "done"]
        assert len((await insp.threads(since=parse_since("1h"))).threads) == 4
        assert (await insp.threads(since=parse_since("-1h"))).threads == []  # an hour from now
        with pytest.raises(InspectError, match="cursor"):
            await insp.threads(after="nonsense")
        with pytest.raises(InspectError, match="since"):
            parse_since("yesterday-ish")


async def test_history_nodes_forks_interrupts_and_errors(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        await _fill(saver)
        insp = Inspector(saver)
        done = await insp.history("done")
        assert [e.step for e in done] == [-1, 0, 1, 2, 3]
        assert [e.nodes for e in done] == [["input"], ["__start__"], ["a"], ["b"], ["c"]]
        assert not any(e.fork for e in done)
        assert all(e.duration is not None and e.duration >= 0 for e in done[1:])

        asks = await insp.history("asks")
        assert asks[-1].interrupts and asks[-1].interrupts[0]["value"]["question"] == "name?"
        fails = await insp.history("fails")
        assert fails[-1].errors and "flaky node failed" in str(fails[-1].errors[0])
        assert fails[-1].pending_writes >= 3  # ok1's, ok2's writes and the error

        # a fork: update the state from an earlier checkpoint
        app = linear(Counter()).compile(checkpointer=saver)
        first = done[2]
        await app.aupdate_state(
            {"configurable": {"thread_id": "done", "checkpoint_id": first.checkpoint_id}}, {"log": ["x"]}
        )
        forked = await insp.history("done")
        assert forked[-1].fork and forked[-1].parent_checkpoint_id == first.checkpoint_id
        assert forked[-1].nodes == ["update_state"]
        # paging: the newest two, then the two before them
        last2 = await insp.history("done", limit=2)
        assert [e.checkpoint_id for e in last2] == [e.checkpoint_id for e in forked[-2:]]
        before = await insp.history("done", limit=2, before=last2[0].checkpoint_id)
        assert [e.checkpoint_id for e in before] == [e.checkpoint_id for e in forked[-4:-2]]


async def test_show_and_diff(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        await _fill(saver)
        insp = Inspector(saver)
        talk = await insp.show("talk")
        assert [(m["role"], m["content"]) for m in talk["messages"]["messages"]] == [
            ("human", "hi"),
            ("ai", "echo: hi"),
            ("human", "again"),
            ("ai", "echo: again"),
        ]
        asks = await insp.show("asks")
        assert asks["status"] == "interrupted" and asks["next"] == ["ask"]
        assert asks["values"]["log"] == ["before1"]
        hist = await insp.history("talk")
        d = await insp.diff("talk", hist[1].checkpoint_id, hist[-1].checkpoint_id)
        added = d["channels"]["messages"]["messages"]["added"]
        assert [m["id"] for m in added] == ["ai-1", "h-2", "ai-2"]
        # across threads: structural diff of the log channel
        done, asks_h = await insp.history("done"), await insp.history("asks")
        x = await insp.diff("done", done[-1].checkpoint_id, asks_h[-1].checkpoint_id, other_thread="asks")
        changes = x["channels"]["log"]["changes"]
        assert {"path": "[0]", "op": "changed", "old": "a1", "new": "before1"} in changes
        with pytest.raises(InspectError, match="no checkpoint"):
            await insp.show("talk", "not-a-checkpoint")
        with pytest.raises(InspectError, match="no thread"):
            await insp.show("nobody")


def test_structural_diff_of_nested_values() -> None:
    a = {"x": 1, "l": [1, 2], "d": {"k": "v"}}
    b = {"x": 2, "l": [1], "d": {"k": "v", "n": None}}
    assert structural_diff(a, b) == [
        {"path": "d.n", "op": "added", "new": None},
        {"path": "l[1]", "op": "removed", "old": 2},
        {"path": "x", "op": "changed", "old": 1, "new": 2},
    ]


async def test_audit_lists_every_message_in_log_order(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        await _fill(saver)
        insp = Inspector(saver)
        trail = await insp.audit("done")
        seqs = [e["seq"] for e in trail]
        assert seqs == sorted(seqs)
        kinds = Counter(e["kind"] for e in trail)
        assert kinds["checkpoint"] == 5 and kinds["writes"] >= 4
        assert all(e["time"] and e["size"] > 0 for e in trail)
        assert trail[0]["node"] == "input step -1"
        await saver.aprune(["done"], strategy="keep_latest")
        after = [e["kind"] for e in await insp.audit("done")]
        assert "prune" in after and any(k.startswith("replay of a prune") for k in after)
        await saver.adelete_thread("done")
        assert (await insp.audit("done"))[-1]["kind"] == "delete"
        with pytest.raises(InspectError, match="no thread"):
            await insp.audit("nobody")


async def _tuples(saver: SkialithCheckpointer, thread_id: str) -> list[Any]:
    out = []
    async for t in saver.alist({"configurable": {"thread_id": thread_id}}):
        out.append((t.checkpoint, t.metadata, t.parent_config, sorted(t.pending_writes or [], key=repr)))
    return out


@pytest.mark.parametrize(
    "thread_id", ["fails", "asks", "a.b.*.>", " spaced out ", "nul\x00inside", "日本語 🧵"]
)
async def test_export_then_import_into_another_stream_round_trips(
    store: Settings, unique: str, thread_id: str
) -> None:
    other = dataclasses.replace(store, stream=f"SKB{unique}".upper(), subject_prefix=f"skb{unique}")
    calls: Counter[str] = Counter()
    async with SkialithCheckpointer(settings=store) as saver:
        if thread_id in ("fails", "asks"):
            await _fill(saver)
        else:
            await linear(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg(thread_id))
        records = await Inspector(saver).export(thread_id)
        original = await _tuples(saver, thread_id)
        assert records[0]["thread_id"] == thread_id
        assert {r.get("kind") for r in records[1:]} == {"checkpoint", "writes"}
        # hostile ids work in every view
        insp = Inspector(saver)
        assert (await insp.show(thread_id))["checkpoint_id"] == original[0][0]["id"]
        assert thread_id in [t.thread_id for t in (await insp.threads(limit=10)).threads]
        assert (await insp.audit(thread_id))[0]["kind"] == "checkpoint"
    async with SkialithCheckpointer(settings=other) as target:
        insp = Inspector(target)
        assert await insp.import_records(records) == thread_id
        assert await _tuples(target, thread_id) == original
        assert await insp.import_records(records, thread_id="copy") == "copy"
        copied = await _tuples(target, "copy")
        assert [c[0] for c in copied] == [c[0] for c in original]
        with pytest.raises(InspectError, match="already has checkpoints"):
            await insp.import_records(records)
        with pytest.raises(InspectError, match="not a skialith export"):
            await insp.import_records([{"kind": "checkpoint"}])


async def test_resume_after_interrupt_is_shown_finished(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        app = with_interrupt(Counter()).compile(checkpointer=saver)
        await app.ainvoke({"log": []}, _cfg("r"))
        await app.ainvoke(Command(resume="ada"), _cfg("r"))
        insp = Inspector(saver)
        assert (await insp.threads()).threads[0].status == "finished"
        state = await insp.show("r")
        assert state["values"]["answer"] == "ada" and state["next"] == []


async def test_drift_finds_the_first_diverging_step(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        expected: Counter[str] = Counter()
        await linear(expected).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("run-1"))
        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("run-2"))
        skewed = Counter({"b": 1})  # node b (step 2) writes b2 where the first run wrote b1
        await linear(skewed).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("run-3"))
        insp = Inspector(saver)

        same = await insp.drift("run-1", "run-2", threshold=0)
        assert same["first_divergence"] is None and not same["exceeded"]
        assert [s["step"] for s in same["steps"]] == [-1, 0, 1, 2, 3]
        assert all(s["differing"] == 0 for s in same["steps"])

        d = await insp.drift("run-1", "run-3", threshold=0)
        assert d["first_divergence"] == 2 and d["exceeded"] and d["max_differing"] == 1
        by_step = {s["step"]: s for s in d["steps"]}
        assert by_step[1]["differing"] == 0
        assert by_step[2]["channels"]["log"]["changes"] == [
            {"path": "[1]", "op": "changed", "old": "b1", "new": "b2"}
        ]
        assert not (await insp.drift("run-1", "run-3", threshold=1))["exceeded"]
        assert not (await insp.drift("run-1", "run-3"))["exceeded"]  # no threshold: report only

        # a run that stopped early: the steps it never reached differ
        await with_interrupt(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("short"))
        short = await insp.drift("run-1", "short")
        assert short["steps"][-1]["missing_in"] == "short" and short["steps"][-1]["b"] is None
        with pytest.raises(InspectError, match="no thread"):
            await insp.drift("run-1", "nobody")


async def test_threads_lists_agents_beside_threads(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("graph-1"))
        async with SkialithAgent("bot.*>", settings=store) as bot:
            await bot.checkpoint(0, {"n": 0})
            await bot.checkpoint(1, {"n": 1})
            await bot.save_event("thought", {"text": "hm"}, step=2)
        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("graph-2"))
        async with SkialithAgent("quiet", settings=store) as quiet:
            await quiet.save_event("hello", {"x": 1})
        insp = Inspector(saver)
        page = await insp.threads(limit=10)  # acknowledged writes are listed at once, from the log if needed
        assert [(t.kind, t.thread_id) for t in page.threads] == [
            ("agent", "quiet"),
            ("thread", "graph-2"),
            ("agent", "bot.*>"),
            ("thread", "graph-1"),
        ]
        bot_row = page.threads[2]
        assert bot_row.checkpoints == 2 and bot_row.last_step == 1
        assert bot_row.status == "resumable" and bot_row.next == ["step 2"] and bot_row.last_activity
        assert page.threads[0].status == "no checkpoint" and page.threads[0].checkpoints == 0

        seen, cursor = [], None  # paging across both kinds
        while True:
            p = await insp.threads(limit=1, after=cursor)
            seen += [t.thread_id for t in p.threads]
            if p.cursor is None:
                break
            cursor = p.cursor
        assert seen == ["quiet", "graph-2", "bot.*>", "graph-1"]
        assert [t.thread_id for t in (await insp.threads(kind="agent")).threads] == ["quiet", "bot.*>"]
        assert [t.thread_id for t in (await insp.threads(kind="thread")).threads] == ["graph-2", "graph-1"]
        # LangGraph's status and metadata filters list threads only
        assert {t.kind for t in (await insp.threads(status="finished")).threads} == {"thread"}
        assert (await insp.threads(since=parse_since("-1h"))).threads == []
        with pytest.raises(InspectError, match="kind"):
            await insp.threads(kind="robot")


async def test_lineage_namespaces_and_linked_threads(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        app = with_subgraph_node(Counter()).compile(checkpointer=saver)
        await app.ainvoke({"log": []}, _cfg("root"))  # interrupts inside the subgraph
        await app.ainvoke(Command(resume="ada"), _cfg("root"))
        await (
            linear(Counter())
            .compile(checkpointer=saver)
            .ainvoke({"log": []}, _cfg("child", parent_thread_id="root"))
        )
        await (
            linear(Counter())
            .compile(checkpointer=saver)
            .ainvoke({"log": []}, _cfg("grandchild", parent_thread_id="child"))
        )
        insp = Inspector(saver)
        tree = await insp.lineage("root")
        ns = tree["namespaces"]
        assert ns["ns"] == "" and ns["checkpoints"] > 0
        assert [c["node"] for c in ns["children"]] == ["sub"]
        assert ns["children"][0]["ns"].startswith("sub:") and ns["children"][0]["checkpoints"] > 0
        assert tree["ancestors"] == []
        assert tree["children"] == [
            {"thread_id": "child", "children": [{"thread_id": "grandchild", "children": []}]}
        ]
        mid = await insp.lineage("child")
        assert mid["ancestors"] == ["root"] and mid["namespaces"]["children"] == []
        assert (await insp.lineage("grandchild"))["ancestors"] == ["root", "child"]
        with pytest.raises(InspectError, match="no thread"):
            await insp.lineage("nobody")


async def test_lineage_links_copy_thread_copies_to_their_source(store: Settings) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        app = linear(Counter()).compile(checkpointer=saver)
        await app.ainvoke({"log": []}, _cfg("orig"))
        await app.ainvoke({"log": []}, _cfg("unrelated"))
        await saver.acopy_thread("orig", "copy-1")
        await saver.acopy_thread("orig", "copy-2")
        # a copy goes on on its own: still a copy of its source
        await app.ainvoke({"log": []}, _cfg("copy-1"))
        insp = Inspector(saver)
        tree = await insp.lineage("orig")
        assert (tree["copied_from"], tree["copies"]) == (None, ["copy-1", "copy-2"])
        copy = await insp.lineage("copy-1")
        assert (copy["copied_from"], copy["copies"]) == ("orig", [])
        assert copy["ancestors"] == [] and copy["children"] == []  # metadata links are separate
        other = await insp.lineage("unrelated")
        assert (other["copied_from"], other["copies"]) == (None, [])


def test_namespace_tree_nests_by_segments() -> None:
    tree = namespace_tree({"": 3, "a:1|b:2": 2, "c:9": 1})
    assert [(c["ns"], c["checkpoints"]) for c in tree["children"]] == [("a:1", 0), ("c:9", 1)]
    assert tree["children"][0]["children"][0] == {
        "ns": "a:1|b:2",
        "node": "b",
        "checkpoints": 2,
        "children": [],
    }

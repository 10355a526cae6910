"""The inspect commands of ``skialith`` (threads, history, show, diff, audit, export, import) as a user
runs them, over a real nats-server and database, with the projector stopped and running."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from graphs import chat, linear, with_interrupt
from langchain_core.messages import HumanMessage

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.cli import build_parser, main

HOSTILE = "a.b.*.> \x1b[31mred\n"


@pytest.fixture(params=["log", "database"])
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Settings]:
    if request.param == "log":
        yield settings
        return
    projector = Projector(settings, fetch_timeout=0.2)
    await projector.start()
    try:
        yield settings
    finally:
        await projector.stop()


def _flags(s: Settings) -> list[str]:
    return [
        "--nats-url",
        s.nats_url,
        "--database-url",
        s.database_url,
        "--stream",
        s.stream,
        "--subject-prefix",
        s.subject_prefix,
    ]


async def _run(capsys: pytest.CaptureFixture[str], s: Settings, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, *_flags(s)])
    out, err = capsys.readouterr()
    return code, out, err


async def _fill(s: Settings) -> None:
    async with SkialithCheckpointer(settings=s) as saver:
        calls: Counter[str] = Counter()
        cfg: Any = {"configurable": {"thread_id": "done"}, "metadata": {"team": "red"}}
        await linear(calls).compile(checkpointer=saver).ainvoke({"log": []}, cfg)
        cfg = {"configurable": {"thread_id": "asks"}}
        await with_interrupt(calls).compile(checkpointer=saver).ainvoke({"log": []}, cfg)
        cfg = {"configurable": {"thread_id": HOSTILE}}
        await (
            chat(calls)
            .compile(checkpointer=saver)
            .ainvoke({"messages": [HumanMessage("<script>alert(1)</script>", id="h-1")]}, cfg)
        )


async def test_threads_history_show_diff_audit(store: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    await _fill(store)
    code, out, _ = await _run(capsys, store, "threads")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["KIND", "ID", "CHECKPOINTS"]
    assert "\x1b" not in out and "\\x1b[31mred\\n" in lines[1]  # escaped, not interpreted
    assert lines[2].split()[:2] == ["thread", "asks"] and "interrupted" in lines[2]
    assert lines[3].split()[:2] == ["thread", "done"] and "finished" in lines[3]

    code, out, _ = await _run(capsys, store, "threads", "--json", "--limit", "1", "--metadata", "team=red")
    page = json.loads(out)
    assert [t["thread_id"] for t in page["threads"]] == ["done"] and page["next_cursor"]

    code, out, _ = await _run(capsys, store, "history", "done", "--json")
    entries = json.loads(out)
    assert [e["nodes"] for e in entries] == [["input"], ["__start__"], ["a"], ["b"], ["c"]]
    code, out, _ = await _run(capsys, store, "history", "done")
    assert code == 0 and len(out.splitlines()) == 6 and "__start__" in out

    code, out, _ = await _run(capsys, store, "show", HOSTILE)
    assert code == 0
    assert "human: <script>alert(1)</script>" in out and "ai: echo: <script>alert(1)</script>" in out
    code, out, _ = await _run(capsys, store, "show", "asks")
    assert "status: interrupted" in out and "name?" in out

    code, out, _ = await _run(
        capsys, store, "diff", "done", entries[1]["checkpoint_id"], entries[-1]["checkpoint_id"]
    )
    assert code == 0 and "~ log:" in out and "+ a1" in out and "+ c1" in out
    code, out, _ = await _run(
        capsys, store, "diff", "done", entries[-1]["checkpoint_id"], entries[-1]["checkpoint_id"], "--json"
    )
    assert json.loads(out)["channels"] == {}

    code, out, _ = await _run(capsys, store, "audit", "done", "--json")
    trail = json.loads(out)
    assert [e["kind"] for e in trail].count("checkpoint") == 5
    code, out, _ = await _run(capsys, store, "audit", HOSTILE)
    assert code == 0 and "checkpoint" in out and "\x1b" not in out


async def test_unknown_thread_or_checkpoint_exits_1(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(settings)
    for argv in (
        ["history", "nobody"],
        ["show", "nobody"],
        ["show", "done", "no-such-checkpoint"],
        ["diff", "done", "x", "y"],
        ["audit", "nobody"],
        ["export", "nobody"],
        ["threads", "--after", "junk"],
    ):
        code, out, err = await _run(capsys, settings, *argv)
        assert code == 1, argv
        assert err.startswith(f"skialith {argv[0]}: error: ") and "Traceback" not in err, err
        assert "nobody" in err or "no-such-checkpoint" in err or "x" in err or "junk" in err


async def test_export_import_round_trip_between_streams(
    store: Settings, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(store)
    other = dataclasses.replace(store, stream=f"SKC{unique}".upper(), subject_prefix=f"skc{unique}")
    dump = tmp_path / "t.jsonl"
    code, _, _ = await _run(capsys, store, "export", HOSTILE, "-o", str(dump))
    assert code == 0
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    assert records[0]["thread_id"] == HOSTILE
    code, out, _ = await _run(capsys, other, "import", str(dump), "--thread", "restored", "--json")
    assert code == 0 and json.loads(out)["thread_id"] == "restored"

    async def tuples(s: Settings, thread_id: str) -> list[Any]:
        async with SkialithCheckpointer(settings=s) as saver:
            return [
                (t.checkpoint, t.metadata, sorted(t.pending_writes or [], key=repr))
                async for t in saver.alist({"configurable": {"thread_id": thread_id}})
            ]

    assert await tuples(other, "restored") == await tuples(store, HOSTILE)
    code, _, err = await _run(capsys, other, "import", str(dump), "--thread", "restored")
    assert code == 1 and "already has checkpoints" in err


def test_help_lists_each_command_with_one_line() -> None:
    """``skialith --help`` on an 80-column terminal: every registered command, one line each."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "skialith_langgraph.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0].strip().startswith("{up,")  # the choices, then one line per command
    listed = [line.split()[0] for line in section[1:]]
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert listed == list(commands)  # one line each: no continuation line
    for name in ("up", "projector", "status", "gc", "demo", "threads", "history", "show", "diff"):
        assert name in listed
    for name in ("drift", "lineage", "audit", "export", "import"):
        assert name in listed
    for line in section[1:]:
        assert len(line.split(None, 1)) == 2, f"no help text: {line!r}"


async def test_drift_exit_status_follows_the_threshold(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        for thread_id, calls in (("r1", Counter()), ("r2", Counter()), ("r3", Counter({"c": 4}))):
            cfg: Any = {"configurable": {"thread_id": thread_id}}
            await linear(calls).compile(checkpointer=saver).ainvoke({"log": []}, cfg)
    code, out, _ = await _run(capsys, store, "drift", "r1", "r2", "--threshold", "0")
    assert code == 0 and "no drift" in out
    code, out, _ = await _run(capsys, store, "drift", "r1", "r3", "--threshold", "0")
    assert code == 1 and "first divergence at step 3" in out and "above the threshold" in out
    code, out, _ = await _run(capsys, store, "drift", "r1", "r3", "--threshold", "1", "--json")
    d = json.loads(out)
    assert code == 0 and d["first_divergence"] == 3 and d["max_differing"] == 1
    code, _, err = await _run(capsys, store, "drift", "r1", "nobody")
    assert code == 1 and "nobody" in err


async def test_threads_shows_agents_with_a_kind_column(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(store)
    async with SkialithAgent("helper", settings=store) as agent:
        await agent.checkpoint(0, {"plan": "x"})
    code, out, _ = await _run(capsys, store, "threads")
    assert code == 0 and out.splitlines()[1].split()[:4] == ["agent", "helper", "1", "0"]
    assert "resumable" in out.splitlines()[1]
    code, out, _ = await _run(capsys, store, "threads", "--kind", "agent", "--json")
    page = json.loads(out)
    assert [(t["kind"], t["thread_id"], t["next"]) for t in page["threads"]] == [
        ("agent", "helper", ["step 1"])
    ]


async def test_lineage_prints_namespaces_and_linked_threads(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        for thread_id, meta in (("up", {}), ("down", {"parent_thread_id": "up"})):
            cfg: Any = {"configurable": {"thread_id": thread_id}, "metadata": meta}
            await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, cfg)
    code, out, _ = await _run(capsys, store, "lineage", "down")
    assert code == 0
    assert "(root)  5 checkpoint(s)" in out
    assert out.splitlines()[-2:] == ["  - up", "    - down  (this thread)"]
    code, out, _ = await _run(capsys, store, "lineage", "up", "--json")
    assert json.loads(out)["children"] == [{"thread_id": "down", "children": []}]
    code, _, err = await _run(capsys, store, "lineage", "nobody")
    assert code == 1 and "nobody" in err


async def test_lineage_shows_a_copy_thread_copy_under_its_source(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with SkialithCheckpointer(settings=store) as saver:
        cfg: Any = {"configurable": {"thread_id": "src"}}
        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, cfg)
        await saver.acopy_thread("src", "cp")
    code, out, _ = await _run(capsys, store, "lineage", "cp")
    assert code == 0 and "\x1b" not in out  # piped: no colour codes
    assert out.splitlines()[-3:] == [
        "copies (copy_thread: the same checkpoint ids):",
        "  - src  (original)",
        "    - cp  (this thread, a copy)",
    ]
    code, out, _ = await _run(capsys, store, "lineage", "src", "--json")
    assert json.loads(out)["copies"] == ["cp"]


async def test_tables_are_plain_columns_when_piped(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _fill(store)
    code, out, _ = await _run(capsys, store, "threads", "--json")
    count = {t["thread_id"]: t["checkpoints"] for t in json.loads(out)["threads"]}["done"]
    for argv, header, rows in (
        (["threads"], ["KIND", "ID"], 3),
        (["history", "done"], ["STEP", "SOURCE"], count),
        (["audit", "done"], ["SEQ", "TIME"], None),
    ):
        code, out, _ = await _run(capsys, store, *argv)
        lines = out.splitlines()
        assert code == 0 and "\x1b" not in out and "\u2500" not in out, argv  # no colour, no box
        assert lines[0].split()[:2] == header, argv
        if rows is not None:  # one row a line, however long
            assert len(lines) == 1 + rows, argv

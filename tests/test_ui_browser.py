"""The web viewer (``skialith ui``) in a real browser: headless Chromium from Debian's ``chromium``
package, driven by Playwright, against a viewer process started with the CLI over real NATS and a
real read model, after real LangGraph runs (an interrupt, an error, a fork, a subgraph, two runs
that drift) and a SkialithAgent. Takes the screenshots the README shows: written to docs/images/
when missing there or with SKIALITH_UPDATE_SCREENSHOTS=1 (commit them), else to the test's temp folder."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from graphs import Flag, chat, linear, parallel_with_failure, with_interrupt, with_subgraph_node
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.types import Command
from playwright.async_api import expect
from test_hostile_input import IDS

from skialith_langgraph import Projector, Settings, SkialithAgent, SkialithCheckpointer
from skialith_langgraph.cli import main
from skialith_langgraph.traces import TraceIngest
from skialith_langgraph.ui import check_bind, is_loopback
from skialith_langgraph.ui.security import CSP, UiError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT = 15_000  # ms, for any element to appear

XSS = [
    "<script>window.__pwned=1;console.log('XSS-FIRED')</script>",
    "<img src=x onerror=\"window.__pwned=1;console.log('XSS-FIRED');alert(1)\">",
    '"><svg onload=alert(1)>',
]


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def settings(request: pytest.FixtureRequest, nats_url: str, unique: str) -> Settings:
    """This test's stream on SQLite, and on MySQL (skipped without ``SKIALITH_TEST_MYSQL_URL``)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return Settings(
        nats_url=nats_url, database_url=url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the viewer's browser tests need Debian's Chromium; "
            "run 'apt-get install -y chromium' (Playwright's own browser download is not used)",
            pytrace=False,
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@asynccontextmanager
async def viewer(
    settings: Settings, *, token: str | None = None, read_wait: float = 10.0
) -> AsyncIterator[str]:
    """``skialith ui --port 0`` in a child process; yields its address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIALITH_READ_WAIT": str(read_wait)}
    env.pop("SKIALITH_UI_TOKEN", None)
    if token:
        env["SKIALITH_UI_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skialith_langgraph.cli",
        "ui",
        "--port",
        "0",
        "--nats-url",
        settings.nats_url,
        "--database-url",
        settings.database_url,
        "--stream",
        settings.stream,
        "--subject-prefix",
        settings.subject_prefix,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not found:
            err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
            raise AssertionError(f"skialith ui did not start: {line!r} {err[-2000:]}")
        url = found.group(0)
        async with httpx.AsyncClient() as client:  # wait until uvicorn answers
            for _ in range(100):
                try:
                    await client.get(url + "static/app.css", timeout=2)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _shot_path(name: str, tmp_path: Path, readme: bool) -> Path:
    target = IMAGES / f"{name}.png"
    if readme and (not target.exists() or os.environ.get("SKIALITH_UPDATE_SCREENSHOTS") == "1"):
        return target
    return tmp_path / f"{name}.png"


def _cfg(thread_id: str, **meta: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "metadata": meta}


async def fill(saver: SkialithCheckpointer, settings: Settings) -> dict[str, Any]:
    """Real LangGraph runs: finished, interrupted, errored, a chat, a fork, a subgraph with a linked
    child thread, and two runs that drift at step 2."""
    calls: Counter[str] = Counter()
    async with SkialithAgent("support-bot", settings=settings) as bot_agent:
        await bot_agent.checkpoint(0, {"messages": ["hello"]})
        await bot_agent.save_event("tool-call", {"tool": "search"}, step=1)
        await bot_agent.checkpoint(1, {"messages": ["hello", "found it"]})
    await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("run-1"))
    skewed = Counter({"b": 1})  # node b writes b2 where run-1 wrote b1
    await linear(skewed).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("run-2"))
    app = with_subgraph_node(calls).compile(checkpointer=saver)
    await app.ainvoke({"log": []}, _cfg("research"))
    await app.ainvoke(Command(resume="ada"), _cfg("research"))
    await (
        linear(calls)
        .compile(checkpointer=saver)
        .ainvoke({"log": []}, _cfg("summary", parent_thread_id="research"))
    )
    await with_interrupt(calls).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("asks", team="blue"))
    with pytest.raises(RuntimeError):
        await (
            parallel_with_failure(calls, Flag(True))
            .compile(checkpointer=saver)
            .ainvoke({"log": []}, _cfg("fails", team="red"))
        )
    lin = linear(Counter()).compile(checkpointer=saver)
    await lin.ainvoke({"log": []}, _cfg("done", team="red"))
    history = [s async for s in lin.aget_state_history({"configurable": {"thread_id": "done"}})]
    at_step_1 = next(s for s in history if s.metadata and s.metadata.get("step") == 1)
    fork = await lin.aupdate_state(at_step_1.config, {"log": ["edited by hand"]})
    bot = chat(calls).compile(checkpointer=saver)
    await bot.ainvoke({"messages": [HumanMessage("hi", id="h-1")]}, _cfg("talk"))
    await bot.ainvoke({"messages": [HumanMessage("what did the agent do?", id="h-2")]}, _cfg("talk"))
    return {"fork": fork["configurable"]["checkpoint_id"]}


async def _shows_checkpoint(page: Any, checkpoint_id: str | None) -> None:
    # (the page's CSP forbids eval, so Playwright's wait_for_function cannot run there: expect polls)
    await expect(page.locator("#cp-id")).to_have_text(checkpoint_id or "", timeout=WAIT)
    await page.locator("#diff").wait_for(timeout=WAIT)


async def _texts(page: Any, selector: str) -> list[str]:
    return [str(t) for t in await page.locator(selector).all_text_contents()]


async def test_click_through_threads_thread_checkpoint_diff_timings_lineage_drift(
    settings: Settings, browser: Any, tmp_path: Path
) -> None:
    projector = Projector(settings, fetch_timeout=0.2)
    ingest = TraceIngest(settings, fetch_timeout=0.2)
    await projector.start()
    await ingest.start()
    readme = settings.database_url.startswith("sqlite")  # one set of README screenshots

    async def shot(page: Any, name: str, full_page: bool = False) -> None:
        await page.screenshot(path=str(_shot_path(name, tmp_path, readme)), full_page=full_page)

    try:
        async with SkialithCheckpointer(settings=settings) as saver:
            made = await fill(saver, settings)
        await ingest.catch_up(30)
        async with viewer(settings) as url:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.locator("#threads tr.thread-row").first.wait_for(timeout=WAIT)
            ids = await _texts(page, "#threads tr.thread-row td.id")
            assert ids == [
                "talk",
                "done",
                "fails",
                "asks",
                "summary",
                "research",
                "run-2",
                "run-1",
                "support-bot",
            ]
            row = {i: r for i, r in zip(ids, await page.locator("#threads tr.thread-row").all(), strict=True)}
            assert (await row["fails"].locator(".badge").text_content()) == "errored"
            assert (await row["asks"].locator(".badge").text_content()) == "interrupted"
            assert (await row["talk"].locator(".badge").text_content()) == "finished"
            # the update forked "done" at step 1: its newest checkpoint runs b next
            assert (await row["done"].locator(".badge").text_content()) == "next: b"
            assert await row["support-bot"].get_attribute("data-kind") == "agent"
            assert (await row["support-bot"].locator(".badge").text_content()) == "resumable"
            await shot(page, "ui-threads")

            # search
            await page.fill("#search", "ru")
            await page.click("#search-go")
            await expect(page.locator("#threads tr.thread-row")).to_have_count(2, timeout=WAIT)
            assert await _texts(page, "#threads tr.thread-row td.id") == ["run-2", "run-1"]
            await page.fill("#search", "no such thread")
            await page.click("#search-go")
            await page.locator("#empty").wait_for(timeout=WAIT)

            # a thread: its branch tree shows the fork; a checkpoint shows its state and diff
            await page.goto(url + "#/")
            await page.locator("#threads tr.thread-row").first.wait_for(timeout=WAIT)
            await page.get_by_role("link", name="done", exact=True).click()
            await page.locator("#tree g.cp").first.wait_for(timeout=WAIT)
            assert await page.locator("#tree g.cp").count() == 6  # input, 0..3 and the update
            assert await page.locator("#tree text.fork").count() == 1
            fork_node = page.locator(f'#tree g.cp[data-checkpoint="{made["fork"]}"]')
            assert "update_state" in (await fork_node.text_content() or "")
            step2_node = page.locator('#tree g.cp[data-step="2"]').first  # the update is at step 2 too
            step2 = await step2_node.get_attribute("data-checkpoint")
            await step2_node.click()
            await _shows_checkpoint(page, step2)
            state = await page.locator('#state [data-channel="log"] pre').text_content()
            assert state is not None and '"a1"' in state and '"b1"' in state
            diff = page.locator('#diff [data-channel="log"]')
            assert "changed" in (await diff.locator("h3").text_content() or "")
            assert await diff.locator("td.new").all_text_contents() == ["b1"]
            await fork_node.click()
            await _shows_checkpoint(page, made["fork"])
            fork_diff = await page.locator('#diff [data-channel="log"]').text_content()
            assert fork_diff is not None and "edited by hand" in fork_diff
            await shot(page, "ui-thread", full_page=True)

            # the chat: messages as a conversation, the diff lists the added messages
            await page.goto(url + "#/thread?id=talk")
            await page.locator("#state .msg").first.wait_for(timeout=WAIT)
            assert await _texts(page, "#state .msg .content") == [
                "hi",
                "echo: hi",
                "what did the agent do?",
                "echo: what did the agent do?",
            ]
            assert await _texts(page, '#diff [data-channel="messages"] .msg.new .content') == [
                "echo: what did the agent do?"
            ]

            # interrupts and errors are marked in the tree and shown at the checkpoint
            await page.goto(url + "#/thread?id=fails")
            await page.locator("#checkpoint .alert.error").first.wait_for(timeout=WAIT)
            assert "flaky node failed" in (
                await page.locator("#checkpoint .alert.error").first.text_content() or ""
            )
            assert await page.locator("#tree text.mark-err").count() == 1
            assert await page.locator("#tree circle.dot.errored").count() == 1
            await page.goto(url + "#/thread?id=asks")
            await page.locator("#checkpoint .alert.interrupt").wait_for(timeout=WAIT)
            assert "name?" in (await page.locator("#checkpoint .alert.interrupt").text_content() or "")
            assert await page.locator("#tree text.mark-int").count() == 1

            # node timings from skialith_agent_traces
            await page.goto(url + "#/thread?id=done")
            await page.locator("#tree g.cp").first.wait_for(timeout=WAIT)
            await page.click("#tab-timings")
            await page.locator("#gantt g.span").first.wait_for(timeout=WAIT)
            names = await page.locator("#gantt g.span").evaluate_all("gs => gs.map(g => g.dataset.name)")
            assert {"a", "b", "c"} <= set(names)
            await shot(page, "ui-timings")
            await page.goto(url + "#/thread?id=fails&tab=timings")
            await page.locator("#gantt g.span").first.wait_for(timeout=WAIT)
            assert await page.locator('#gantt g.span[data-status="error"]').count() >= 1

            # an agent: its checkpoints and events as spans
            await page.goto(url + "#/")
            await page.get_by_role("link", name="support-bot", exact=True).click()
            await page.locator("#gantt g.span").first.wait_for(timeout=WAIT)
            spans = await page.locator("#gantt g.span").evaluate_all("gs => gs.map(g => g.dataset.name)")
            assert "tool-call" in spans

            # lineage: the subgraph namespace and the thread started from this one
            await page.goto(url + "#/thread?id=research&tab=lineage")
            await page.locator("#lineage-ns g.lnode").first.wait_for(timeout=WAIT)
            ns_labels = await _texts(page, "#lineage-ns g.lnode text")
            assert ns_labels[0].startswith("sub · ") and ns_labels[-1].startswith("root graph · ")
            assert await _texts(page, "#lineage-threads g.lnode text") == ["summary", "research"]
            await shot(page, "ui-lineage")
            await page.locator('#lineage-threads g.lnode[data-id="summary"]').click()
            await expect(page.locator("#thread-id")).to_have_text("summary", timeout=WAIT)
            await page.locator("#tree g.cp").first.wait_for(timeout=WAIT)

            # drift: from a thread, compare with another run; the first divergence is highlighted
            await page.goto(url + "#/thread?id=run-1")
            await page.locator("#compare").click()
            await page.fill("#drift-b", "run-2")
            await page.click("#drift-go")
            await page.locator("#drift tr.first-divergence").wait_for(timeout=WAIT)
            assert (await page.locator("#drift-summary").text_content() or "").startswith(
                "First divergence at step 2"
            )
            first = page.locator("#drift tr.first-divergence")
            assert await first.get_attribute("data-step") == "2"
            assert "b1" in (await first.locator("td.old").text_content() or "")
            assert "b2" in (await first.locator("td.new").text_content() or "")
            assert await page.locator('#drift tr.same[data-step="1"]').count() == 1
            await shot(page, "ui-drift", full_page=True)
            await page.goto(url + "#/drift?a=run-1&b=nobody")
            await page.locator("#error").wait_for(timeout=WAIT)
            assert "no thread 'nobody'" in (await page.locator("#error").text_content() or "")
            assert errors == []
    finally:
        await ingest.stop()
        await projector.stop()


def _checkpoint(value: Any) -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["channel_values"] = {"v": value}
    cp["channel_versions"] = {"v": "1"}
    return cp


async def test_hostile_ids_and_payloads_are_shown_as_text_from_the_log(
    nats_url: str, sqlite_url: str, unique: str, browser: Any, tmp_path: Path
) -> None:
    """Script and onerror payloads and the hostile ids of the design's corpus, in thread ids,
    state values and metadata, with the projector stopped (the viewer answers from the log):
    nothing runs, no element is injected, every id and value reads back literally."""
    settings = Settings(
        nats_url=nats_url, database_url=sqlite_url, stream=f"SK{unique}".upper(), subject_prefix=f"sk{unique}"
    )
    hostile = [*XSS, *IDS]
    chat_id = "chat " + XSS[2]
    async with SkialithCheckpointer(settings=dataclasses.replace(settings, read_wait=0.0)) as saver:
        for i, thread_id in enumerate(hostile):
            payload = {"html": XSS[i % len(XSS)], "id": thread_id, "n": i}
            first = await saver.aput(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}},
                _checkpoint(payload),
                {"source": "input", "step": -1, "note": XSS[(i + 1) % len(XSS)]},
                {"v": "1"},
            )
            second = _checkpoint({**payload, "n": i + 1000})
            second["channel_versions"] = {"v": "2"}
            await saver.aput(first, second, {"source": "loop", "step": 0, XSS[0]: XSS[1]}, {"v": "2"})
        bot = chat(Counter()).compile(checkpointer=saver)
        await bot.ainvoke({"messages": [HumanMessage(XSS[1], id=XSS[0])]}, _cfg(chat_id, who=XSS[0]))

    async with viewer(settings, read_wait=0.2) as url:
        page = await browser.new_page(viewport={"width": 1300, "height": 900})
        fired: list[str] = []
        page.on("dialog", lambda d: (fired.append("dialog " + d.message), asyncio.ensure_future(d.dismiss())))
        page.on("console", lambda m: fired.append("console " + m.text) if "XSS" in m.text else None)
        page.on("pageerror", lambda e: fired.append("pageerror " + str(e)))

        async def clean() -> None:
            assert fired == []
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("#main img, #main script, #main iframe, #main svg svg").count() == 0

        await page.goto(url)
        await page.locator("#threads tr.thread-row").first.wait_for(timeout=WAIT)
        listed = await page.locator("#threads tr.thread-row td.id a").evaluate_all(
            "as => as.map(a => a.textContent)"
        )
        assert listed[0] == chat_id and set(hostile) - {""} <= set(listed) and "(empty id)" in listed
        await clean()
        await page.screenshot(path=str(_shot_path("ui-hostile", tmp_path, True)))

        for thread_id in hostile:
            await page.goto("about:blank")  # a fresh page each time: nothing left from the last id
            await page.goto(url + "#/thread?" + urlencode({"id": thread_id}, quote_via=quote))
            await page.locator("#cp-id").wait_for(timeout=WAIT)
            assert await page.locator("#thread-id").evaluate("e => e.textContent") == thread_id
            values = await page.locator('#state [data-channel="v"] pre').evaluate("e => e.textContent")
            assert f'"n": {hostile.index(thread_id) + 1000}' in values
            assert XSS[hostile.index(thread_id) % len(XSS)].replace('"', '\\"') in values
            meta = await page.locator("#metadata").evaluate("e => e.textContent")
            assert XSS[1].replace('"', '\\"') in meta
            diff = await page.locator('#diff [data-channel="v"]').text_content()
            assert diff is not None and str(hostile.index(thread_id) + 1000) in diff
            await clean()

        await page.goto("about:blank")
        await page.goto(url + "#/thread?" + urlencode({"id": chat_id}, quote_via=quote))
        await page.locator("#state .msg").first.wait_for(timeout=WAIT)
        assert await _texts(page, "#state .msg .content") == [XSS[1], "echo: " + XSS[1]]
        await page.goto(url + "#/drift?" + urlencode({"a": XSS[0], "b": IDS[1]}, quote_via=quote))
        await page.locator("#drift tr").first.wait_for(timeout=WAIT)
        await page.goto(url + "#/thread?" + urlencode({"id": XSS[1], "tab": "lineage"}, quote_via=quote))
        await page.locator("#lineage-threads g.lnode").first.wait_for(timeout=WAIT)
        assert await _texts(page, "#lineage-threads g.lnode title") == [XSS[1]]
        await page.goto(url + "#/thread?" + urlencode({"id": XSS[0], "tab": "timings"}, quote_via=quote))
        await page.locator("#no-timings").wait_for(timeout=WAIT)  # no ingest ran: said so
        await clean()

        async with httpx.AsyncClient() as client:
            r = await client.get(url)
            assert r.headers["content-security-policy"] == CSP
            assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
            assert r.headers["x-content-type-options"] == "nosniff"
            # every id, by query parameter, through the JSON API as well
            for thread_id in hostile:
                got = await client.get(url + "api/checkpoint", params={"thread": thread_id})
                assert got.status_code == 200 and got.json()["state"]["thread_id"] == thread_id
            missing = await client.get(url + "api/history", params={"thread": "nobody"})
            assert missing.status_code == 404 and "no thread 'nobody'" in missing.json()["error"]
            bad = await client.get(url + "api/threads", params={"limit": "many"})
            assert bad.status_code == 400
            # served on loopback without a token: a DNS name rebound to 127.0.0.1 gets nothing
            rebound = await client.get(url + "api/threads", headers={"Host": "evil.example:80"})
            assert rebound.status_code == 403 and "thread" not in rebound.text
            assert (await client.get(url + "api/threads", headers={"Host": "localhost"})).status_code == 200


def test_a_token_is_required_off_loopback(nats_url: str) -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org", "10.0.0.1"):
        assert not is_loopback(host)
        with pytest.raises(UiError, match="without a token"):
            check_bind(host, None)
        check_bind(host, "a-long-random-token")
    with pytest.raises(UiError, match="empty"):
        check_bind("0.0.0.0", "  ")
    # the command refuses before it binds anything
    env_token = os.environ.pop("SKIALITH_UI_TOKEN", None)
    try:
        assert main(["ui", "--host", "0.0.0.0", "--port", "0", "--nats-url", nats_url]) == 1
    finally:
        if env_token is not None:
            os.environ["SKIALITH_UI_TOKEN"] = env_token


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the token does not depend on the database
async def test_token_login_sets_a_cookie_and_guards_every_request(settings: Settings, browser: Any) -> None:
    token = "s3cret-" + "x" * 24
    async with SkialithCheckpointer(settings=settings) as saver:
        await linear(Counter()).compile(checkpointer=saver).ainvoke({"log": []}, _cfg("t-1"))
    async with viewer(settings, token=token, read_wait=0.2) as url:
        async with httpx.AsyncClient() as client:
            for path in ("", "api/threads", "static/app.js", "api/checkpoint?thread=t-1"):
                r = await client.get(url + path)
                assert r.status_code == 401 and "token" in r.text
                assert "t-1" not in r.text
            assert (await client.get(url, params={"token": token + "x"})).status_code == 401
            assert (
                await client.get(url + "api/threads", headers={"Authorization": "Bearer nope"})
            ).status_code == 401
            ok = await client.get(url + "api/threads", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json()["threads"][0]["thread_id"] == "t-1"
            login = await client.get(url + "api/threads", params={"token": token, "limit": "5"})
            assert login.status_code == 303 and login.headers["location"] == "/api/threads?limit=5"
            sneaky = await client.get(url + "/evil.example", params={"token": token})
            assert (
                sneaky.status_code == 303 and sneaky.headers["location"] == "/evil.example"
            )  # not //evil...
            cookie = login.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
            after = await client.get(url + "api/threads")  # the client kept the cookie
            assert after.status_code == 200
        page = await browser.new_page()
        await page.goto(url + "?token=" + token)
        await page.locator("#threads tr.thread-row").first.wait_for(timeout=WAIT)
        assert token not in page.url
        assert await _texts(page, "#threads tr.thread-row td.id") == ["t-1"]

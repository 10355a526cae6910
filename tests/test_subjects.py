"""Subject-token encoding: any id becomes a legal, unique, reversible (or hashed) token."""

from __future__ import annotations

import re

import pytest

from skialith_langgraph.subjects import TOKEN_MAX_LEN, Subjects, check_length, decode_token, token

LEGAL = re.compile(r"^[A-Za-z0-9_-]+$")

AWKWARD = [
    "",
    ".",
    "..",
    "*",
    ">",
    "a.b.c",
    "a b",
    " ",
    "\t\n",
    "a/b\\c",
    "a|b:c",
    "\x00",
    "nul\x00inside",
    "日本語のスレッド",
    "emoji-🧵",
    "x" * 1024,
    "é" * 600,
    "$JS.API.>",
    "skialith.t.x.>",
]


@pytest.mark.parametrize("value", AWKWARD, ids=lambda v: repr(v)[:20])
def test_any_id_becomes_a_legal_bounded_token(value: str) -> None:
    tok = token(value, field="thread_id")
    assert LEGAL.match(tok), tok
    assert len(tok) <= TOKEN_MAX_LEN
    decoded = decode_token(tok)
    assert decoded is None or decoded == value
    if len(value.encode()) <= 90:
        assert decoded == value


def test_tokens_are_unique_over_awkward_ids() -> None:
    tokens = [token(v, field="thread_id") for v in AWKWARD]
    assert len(set(tokens)) == len(AWKWARD)


def test_long_ids_that_share_a_prefix_stay_distinct() -> None:
    a, b = "p" * 5000 + "a", "p" * 5000 + "b"
    assert token(a, field="thread_id") != token(b, field="thread_id")


def test_subjects_are_valid_nats_subjects() -> None:
    s = Subjects("skialith")
    tk = token("a.b > *", field="thread_id")
    for subject in (
        s.checkpoint(tk),
        s.writes(tk),
        s.thread_op(tk, "delete"),
        s.global_op("runs"),
    ):
        parts = subject.split(".")
        assert all(LEGAL.match(p) for p in parts), subject
        assert subject.startswith((s.thread(tk)[:-1], "skialith.g."))


@pytest.mark.parametrize("bad", [None, 42, b"bytes"])
def test_non_string_ids_are_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="agent_id"):
        token(bad, field="agent_id")  # type: ignore[arg-type]


def test_lone_surrogate_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="thread_id"):
        token("\ud800", field="thread_id")


def test_ids_stored_verbatim_have_a_length_limit_naming_the_field() -> None:
    assert check_length("x" * 255, field="task_id") == "x" * 255
    with pytest.raises(ValueError, match="task_id"):
        check_length("x" * 256, field="task_id")


@pytest.mark.parametrize("prefix", ["", "a..b", "a.", ".a", "a*", "a.*", "a b", ">", "a.>", "$JS.x", "é"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject_prefix"):
        Subjects(prefix)


def test_prefix_of_several_tokens() -> None:
    s = Subjects("acme.prod.skialith")
    thread = token("t", field="thread_id")
    assert s.checkpoint(thread) == f"acme.prod.skialith.t.{thread}.c"
    assert s.thread_token(s.writes(thread)) == thread
    assert s.part_base(s.checkpoint(thread), "d") == f"acme.prod.skialith.t.{thread}.k.d"
    assert s.part_base(s.global_op("runs"), "d") == "acme.prod.skialith.k.d"
    assert s.is_replay(s.replay(thread)) and not s.is_replay(s.checkpoint(thread))
    assert s.thread_token("acme.prod.skialith.g.runs") is None

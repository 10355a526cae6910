"""Pure mapping from LangGraph ids to NATS subject tokens and read-model keys.

Any string is a legal id: it is encoded as ``"b" + base64url(utf-8)`` (no padding), or, when its
UTF-8 form is longer than :data:`TOKEN_MAX_RAW` bytes, as ``"h" + base64url(sha256)``. Both
forms are legal subject tokens (no ``.``, ``*``, ``>`` or whitespace) and at most
:data:`TOKEN_MAX_LEN` characters, so the same token doubles as the database key of the id.
The empty string maps to ``"b"``.

Subject layout under a prefix ``p`` (``skialith`` by default; it may have several tokens, as
``acme.prod.skialith``, so that NATS permissions can give each tenant its own hierarchy)::

    p.t.<thread>.c                  the checkpoints of a thread (put)
    p.t.<thread>.w                  the writes of its tasks (put_writes)
    p.t.<thread>.r                  what a prune kept, stored again (checkpoints and writes)
    p.t.<thread>.x.<op>             delete / prune / copy of one thread
    p.t.<thread>.k.<digest>.<n>     part n of a body too large for one message
    p.g.<op>                        operations across threads (delete_for_runs)
    p.e.<agent>.c / p.e.<agent>.v   SkialithAgent checkpoints / events

Everything about one thread sits under ``p.t.<thread>.>``, so one wildcard finds its last
message and one filter replays it. Checkpoint, namespace and task ids travel in the body and in
the message id (:meth:`Subjects.checkpoint_key`), not in the subject: JetStream finds the last
message on a wildcard by walking the subjects under it, so one subject per checkpoint made every
read of a thread slower as its history grew (0.56 ms with a few subjects, 1.02 ms with 1,800).
"""

from __future__ import annotations

import base64
import hashlib

from .errors import SubjectError

TOKEN_MAX_RAW = 90  # bytes of UTF-8 kept verbatim (base64) before hashing
TOKEN_MAX_LEN = 1 + (TOKEN_MAX_RAW * 4 + 2) // 3  # 121 characters
# characters of an id stored verbatim beside its token (thread ids, namespaces, agent ids): a
# longer one is refused before anything is published, and a forged message carrying one is set
# aside by the projector, since a row that large could exceed the database's packet size
TEXT_MAX = 65536
_HASHED_LEN = 1 + 43


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token(value: str, *, field: str) -> str:
    """Encode ``value`` as a subject token (and database key).

    Args:
        value: any string, including ``""``, dots, wildcards, whitespace, NUL and unicode.
        field: the name of the argument, used in the error message.

    Returns:
        A token of at most :data:`TOKEN_MAX_LEN` characters from ``[A-Za-z0-9_-]``.

    Raises:
        SubjectError: ``value`` is not a string or cannot be encoded as UTF-8.
    """
    if not isinstance(value, str):
        raise SubjectError(f"{field} must be a str, got {type(value).__name__}: {value!r}", field=field)
    if len(value) > TEXT_MAX:
        raise SubjectError(
            f"{field} is {len(value)} characters long; at most {TEXT_MAX} are supported: {value[:40]!r}...",
            field=field,
        )
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SubjectError(f"{field} is not valid unicode (lone surrogate?): {value!r}", field=field) from exc
    if len(raw) <= TOKEN_MAX_RAW:
        return "b" + _b64(raw)
    return "h" + _b64(hashlib.sha256(raw).digest())


def decode_token(tok: str) -> str | None:
    """Return the id behind a token, or ``None`` for a hashed (long) id."""
    if tok.startswith("b"):
        body = tok[1:]
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    if tok.startswith("h") and len(tok) == _HASHED_LEN:
        return None
    raise SubjectError(f"not a skialith token: {tok!r}")


def check_length(value: str, *, field: str, limit: int = 255) -> str:
    """Refuse ids that the read model stores verbatim when they exceed ``limit`` characters."""
    if not isinstance(value, str):
        raise SubjectError(f"{field} must be a str, got {type(value).__name__}: {value!r}", field=field)
    if len(value) > limit:
        raise SubjectError(
            f"{field} is {len(value)} characters long; at most {limit} are supported: {value[:40]!r}...",
            field=field,
        )
    return value


PREFIX_MAX_LEN = 100  # characters of a subject prefix


def check_prefix(prefix: str) -> str:
    """Refuse a subject prefix NATS would not take as literal tokens.

    A prefix is one or more dot-separated tokens (``skialith``, ``acme.prod.skialith``), each
    non-empty, without wildcards (``*``, ``>``), whitespace or control characters; it may not
    start with ``$`` (the server's own subjects, ``$JS``, ``$SYS``) or ``_INBOX``.

    Raises:
        SubjectError: the prefix is not usable (a ``ValueError``, and a ``ConfigError`` sibling).
    """
    if not isinstance(prefix, str):
        raise SubjectError(f"subject_prefix must be a str, got {prefix!r}", field="subject_prefix")
    tokens = prefix.split(".")
    bad = [
        t
        for t in tokens
        if not t or not t.isprintable() or any(c in t for c in "*> \t\r\n") or not t.isascii()
    ]
    if bad or len(prefix) > PREFIX_MAX_LEN or prefix.startswith(("$", "_INBOX")):
        raise SubjectError(
            f"subject_prefix must be dot-separated plain ASCII tokens (no empty token, '*', '>', "
            f"whitespace, leading '$' or '_INBOX'), at most {PREFIX_MAX_LEN} characters, "
            f"like 'skialith' or 'acme.prod.skialith'; got {prefix!r}",
            field="subject_prefix",
        )
    return prefix


class Subjects:
    """Builds the subjects of one deployment (one prefix, of one or more tokens)."""

    __slots__ = ("_threads", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self._threads = f"{prefix}.t."

    def thread_token(self, subject: str) -> str | None:
        """The thread token of a subject under ``p.t.<thread>.``, else ``None``."""
        if not subject.startswith(self._threads):
            return None
        tok, dot, rest = subject[len(self._threads) :].partition(".")
        return tok if tok and dot and rest else None

    def is_replay(self, subject: str) -> bool:
        """Whether ``subject`` is a thread's replay subject (``p.t.<thread>.r``)."""
        tok = self.thread_token(subject)
        return tok is not None and subject == self.replay(tok)

    @property
    def all(self) -> str:
        """The stream's subject filter."""
        return f"{self.prefix}.>"

    def thread(self, thread_key: str) -> str:
        """Everything about one thread (a wildcard)."""
        return f"{self.prefix}.t.{thread_key}.>"

    def checkpoint(self, thread_key: str) -> str:
        """Where the checkpoints of a thread are published."""
        return f"{self.prefix}.t.{thread_key}.c"

    def writes(self, thread_key: str) -> str:
        """Where the writes of a thread's tasks are published."""
        return f"{self.prefix}.t.{thread_key}.w"

    def replay(self, thread_key: str) -> str:
        """Where a prune stores again what it kept, so that older messages can leave the stream."""
        return f"{self.prefix}.t.{thread_key}.r"

    @staticmethod
    def checkpoint_key(thread_key: str, ns_key: str, checkpoint_key: str) -> str:
        """The natural key of a checkpoint, the first part of its message id."""
        return f"{thread_key}.c.{ns_key}.{checkpoint_key}"

    @staticmethod
    def writes_key(thread_key: str, ns_key: str, checkpoint_key: str, task_key: str) -> str:
        """The natural key of one task's writes, the first part of their message id."""
        return f"{thread_key}.w.{ns_key}.{checkpoint_key}.{task_key}"

    def thread_op(self, thread_key: str, op: str) -> str:
        return f"{self.prefix}.t.{thread_key}.x.{op}"

    def thread_parts(self, thread_key: str) -> str:
        """The parts of every large body published on a thread (a wildcard)."""
        return f"{self.prefix}.t.{thread_key}.k.>"

    def part_base(self, subject: str, digest: str) -> str:
        """Base subject of the parts of a large body published on ``subject``."""
        tok = self.thread_token(subject)
        if tok is not None:
            return f"{self.prefix}.t.{tok}.k.{digest}"
        return f"{self.prefix}.k.{digest}"

    @property
    def global_ops(self) -> str:
        """Operations across threads (a wildcard)."""
        return f"{self.prefix}.g.>"

    def global_op(self, op: str) -> str:
        return f"{self.prefix}.g.{op}"

    def event(self, agent_key: str, step_key: str) -> str:
        return f"{self.prefix}.e.{agent_key}.{step_key}"

    def agent(self, agent_key: str) -> str:
        return f"{self.prefix}.e.{agent_key}.>"

    def agent_checkpoint(self, agent_key: str) -> str:
        """Where a SkialithAgent's checkpoints are published (the step travels in the body)."""
        return f"{self.prefix}.e.{agent_key}.c"

    def agent_event(self, agent_key: str) -> str:
        """Where a SkialithAgent's events are published (step and name travel in the body)."""
        return f"{self.prefix}.e.{agent_key}.v"

    @staticmethod
    def agent_checkpoint_key(agent_key: str, step: int) -> str:
        """The natural key of an agent checkpoint, the first part of its message id."""
        return f"{agent_key}.c.{step}"

    @staticmethod
    def agent_event_key(agent_key: str, step: int, name_key: str) -> str:
        """The natural key of an agent event, the first part of its message id."""
        return f"{agent_key}.v.{step}.{name_key}"

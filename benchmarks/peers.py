"""The peer savers: LangGraph's own MySQL, PostgreSQL, SQLite and in-memory checkpointers.

Each is opened the way its README shows (one autocommit connection, ``setup()`` once) and
registered on an ``AsyncExitStack`` so it is closed at the end of the run.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import aiosqlite
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.mysql.aio import AIOMySQLSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from .contender import MEMORY, MYSQL, POSTGRES, SQLITE, Contender
from .databases import MySQLTarget, mysql_settings, postgres_settings, sqlite_settings


def mysql_note(group_concat_max_len: int) -> str:
    """The caveat printed next to every AIOMySQLSaver figure."""
    return (
        "it reads every blob version of a thread for the latest checkpoint and returns them through "
        f"JSON_ARRAYAGG, so values over ~750 KiB are truncated unless group_concat_max_len "
        f"(here {group_concat_max_len} bytes; the benchmark leaves it as the server has it) is raised"
    )


async def open_memory() -> Contender:
    """Return an ``InMemorySaver`` contender (no durability at all: the floor of the graph runs)."""
    return Contender(MEMORY, InMemorySaver(), {"durability": "process memory only"})


async def open_sqlite(stack: AsyncExitStack, path: Path) -> Contender:
    """Open an ``AsyncSqliteSaver`` on a file database."""
    conn = await stack.enter_async_context(aiosqlite.connect(str(path)))
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    return Contender(SQLITE, saver, await sqlite_settings(conn))


async def open_postgres(stack: AsyncExitStack, url: str) -> Contender:
    """Open an ``AsyncPostgresSaver`` on one autocommit connection, as ``from_conn_string`` does."""
    conn = await AsyncConnection.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row)
    stack.push_async_callback(conn.close)
    saver = AsyncPostgresSaver(conn)
    await saver.setup()
    return Contender(POSTGRES, saver, await postgres_settings(url))


async def open_mysql(stack: AsyncExitStack, target: MySQLTarget, db: str) -> Contender:
    """Open an ``AIOMySQLSaver`` on one autocommit connection, as ``from_conn_string`` does."""
    saver_cm = AIOMySQLSaver.from_conn_string(target.url(db, scheme="mysql"))
    saver = await stack.enter_async_context(saver_cm)
    await saver.setup()
    settings = await mysql_settings(target)
    return Contender(MYSQL, saver, settings, note=mysql_note(settings["group_concat_max_len"]))

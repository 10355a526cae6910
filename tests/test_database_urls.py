"""Database URLs as users write them (issue 11, item 4): the forms other projects' docs use map to
the async drivers Skialith runs on, and a wrong password, an unknown database and an unreachable
server each fail with their own message, naming the URL without its password and what to do."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from skialith_langgraph.errors import ReadModelError
from skialith_langgraph.readmodel import (
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnreachableError,
    ReadModel,
    async_url,
)


@pytest.mark.parametrize(
    ("written", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite"),
        ("mysql://u:p@h/db", "mysql+aiomysql"),
        ("mariadb://u:p@h/db", "mysql+aiomysql"),
        ("mysql+pymysql://u:p@h/db", "mysql+aiomysql"),
        ("mysql+mysqldb://u:p@h/db", "mysql+aiomysql"),
        ("postgresql://u:p@h/db", "postgresql+psycopg"),
        ("postgres://u:p@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+psycopg"),
        ("mysql+aiomysql://u:p@h/db", "mysql+aiomysql"),
    ],
)
def test_urls_as_written_map_to_the_async_drivers(written: str, driver: str) -> None:
    mapped = make_url(async_url(written))
    assert mapped.drivername == driver
    original = make_url(written)
    assert (mapped.username, mapped.password, mapped.host, mapped.database) == (
        original.username,
        original.password,
        original.host,
        original.database,
    )


def test_an_unsupported_url_names_the_supported_ones() -> None:
    with pytest.raises(ReadModelError, match="SQLite, MySQL/MariaDB/TiDB or PostgreSQL") as err:
        ReadModel.from_url("oracle://scott:tiger@h/db")
    assert "tiger" not in str(err.value)
    with pytest.raises(ReadModelError, match="is not a database URL"):
        ReadModel.from_url("just some text")


def _as_written(url: str, scheme: str) -> str:
    return make_url(url).set(drivername=scheme).render_as_string(hide_password=False)


async def _works(url: str) -> None:
    model = ReadModel.from_url(url, connect_timeout=5)
    try:
        await model.setup()
        async with model.connect() as conn:
            assert await model.watermark(conn) == 0
    finally:
        await model.close()


async def test_a_plain_sqlite_url_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    await _works("sqlite:///x.db")
    assert (tmp_path / "x.db").exists()


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+pymysql"])
async def test_mysql_urls_as_written_work(mysql_url: str, scheme: str) -> None:
    await _works(_as_written(mysql_url, scheme))


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2"])
async def test_postgres_urls_as_written_work(postgres_url: str, scheme: str) -> None:
    await _works(_as_written(postgres_url, scheme))


async def _failure(url: str) -> ReadModelError:
    model = ReadModel.from_url(url, connect_timeout=3)
    try:
        with pytest.raises(ReadModelError) as err:
            await model.setup()
    finally:
        await model.close()
    return err.value


def _check(err: ReadModelError, kind: type[ReadModelError], url: str, *advice: str) -> None:
    assert type(err) is kind, err
    message = str(err)
    shown = make_url(url).render_as_string(hide_password=True)
    assert shown in message and err.url == shown
    if make_url(url).password:
        assert make_url(url).password not in message.replace(shown, "")
    for text in advice:
        assert text in message


async def test_mysql_wrong_password_unknown_database_and_no_server(mysql_url: str) -> None:
    wrong = make_url(mysql_url).set(password=f"wrong-{uuid.uuid4().hex[:6]}")
    url = wrong.set(drivername="mysql").render_as_string(hide_password=False)
    _check(await _failure(url), DatabaseAuthError, url, "user name or password", "fix them in the URL")

    missing = f"nope_{uuid.uuid4().hex[:8]}"
    url = _as_written(
        make_url(mysql_url).set(database=missing).render_as_string(hide_password=False), "mariadb"
    )
    _check(await _failure(url), DatabaseNotFoundError, url, f"CREATE DATABASE {missing}", "does not exist")

    url = "mysql+pymysql://root:secret@127.0.0.1:1/test"
    _check(await _failure(url), DatabaseUnreachableError, url, "no database server answers", "host and port")


async def test_postgres_unknown_user_unknown_database_and_no_server(postgres_url: str) -> None:
    """The server here trusts every local connection (no password is checked): an unknown user is
    the credentials failure it can produce."""
    user = f"nobody_{uuid.uuid4().hex[:6]}"
    url = _as_written(
        make_url(postgres_url).set(username=user, password="pw").render_as_string(hide_password=False),
        "postgres",
    )
    _check(await _failure(url), DatabaseAuthError, url, "user name or password")

    missing = f"nope_{uuid.uuid4().hex[:8]}"
    url = _as_written(
        make_url(postgres_url).set(database=missing).render_as_string(hide_password=False), "postgresql"
    )
    _check(await _failure(url), DatabaseNotFoundError, url, f"CREATE DATABASE {missing}")

    url = "postgresql://postgres:secret@127.0.0.1:1/test"
    _check(await _failure(url), DatabaseUnreachableError, url, "no database server answers")

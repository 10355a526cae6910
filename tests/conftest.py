"""Shared fixtures: one real nats-server per run, a stream and subject prefix per test, and a
read model database per test (SQLite always, MySQL/MariaDB when ``SKIALITH_TEST_MYSQL_URL`` is set,
PostgreSQL when ``SKIALITH_TEST_POSTGRES_URL`` is set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

from skialith_langgraph.config import Settings
from skialith_langgraph.server import NatsServer

MYSQL_URL_ENV = "SKIALITH_TEST_MYSQL_URL"
POSTGRES_URL_ENV = "SKIALITH_TEST_POSTGRES_URL"

_NATS_FIXTURES = frozenset({"nats_server", "nats_url"})

DIFFERENTIAL_RUNS = 3  # random operation sequences per database in CI (see test_differential.py)
DIFFERENTIAL_SEED = 20261129


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("skialith")
    group.addoption(
        "--runs",
        type=int,
        default=DIFFERENTIAL_RUNS,
        help=f"random operation sequences per database in test_differential.py (default {DIFFERENTIAL_RUNS}; "
        "with many, also pass --timeout 0)",
    )
    group.addoption(
        "--seed",
        type=int,
        default=DIFFERENTIAL_SEED,
        help=f"seed of test_differential.py (default {DIFFERENTIAL_SEED}); a failure prints it",
    )


# The suite runs on several workers, a file at a time (pyproject.toml: -n, --dist loadfile,
# --no-loadscope-reorder). The longest files start first, so that no worker picks one up near the
# end while the others sit idle. Seconds per file (its tests summed), measured on 4 workers beside
# other load on 2 cores; the other files keep their alphabetical order after these.
LONG_FILES = {
    "test_resources.py": 203,
    "test_retention.py": 133,
    "test_inspect.py": 126,
    "test_graphs.py": 125,
    "test_cli.py": 107,
    "test_faults.py": 102,
    "test_sidecar_schemathesis.py": 96,
    "test_sidecar_lss.py": 93,
    "test_ui_browser.py": 87,
    "test_inspect_cli.py": 85,
    "test_stream_identity.py": 80,
    "test_ownership.py": 79,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the services they use, before ``-m`` selects on the marks; put the longest
    files first (a stable sort: each file's tests stay together and in order)."""
    items.sort(key=lambda item: -LONG_FILES.get(item.path.name, 0))
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _NATS_FIXTURES:
            item.add_marker(pytest.mark.nats)
        if "mysql_url" in names and item.get_closest_marker("mysql") is None:
            item.add_marker(pytest.mark.mysql)
        if "postgres_url" in names and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a random port, for the whole run."""
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"), port=-1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """The URL of the session's nats-server."""
    return nats_server.url


@pytest.fixture
def unique() -> str:
    """A short hex string unique to this test, for stream names, subject prefixes and ids."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite read model in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'readmodel.db'}"


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh ``test_<hex>`` database on the server at ``SKIALITH_TEST_MYSQL_URL``, dropped afterwards.

    Skips when the variable is unset; fails (never skips) when it is set but the server is unreachable.
    """
    raw = os.environ.get(MYSQL_URL_ENV, "")
    if not raw:
        pytest.skip(f"{MYSQL_URL_ENV} is not set; set it to run the MySQL tests")
    base = make_url(raw)
    shown = base.render_as_string(hide_password=True)
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(
            host=base.host or "127.0.0.1",
            port=base.port or 3306,
            user=base.username or "root",
            password=base.password or "",
            connect_timeout=5,
            autocommit=True,
        )
    except pymysql.err.MySQLError as exc:
        pytest.fail(
            f"cannot reach MySQL at {MYSQL_URL_ENV}={shown!r}: {exc}; start it or unset the variable",
            pytrace=False,
        )
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()


def postgres_admin_dsn(url: str, database: str | None = None) -> str:
    """A libpq connection string for psycopg from a SQLAlchemy URL (``database``: another one)."""
    base = make_url(url)
    return psycopg.conninfo.make_conninfo(
        host=base.host or "127.0.0.1",
        port=base.port or 5432,
        user=base.username or "postgres",
        password=base.password or "",
        dbname=database or base.database or "postgres",
        connect_timeout=5,
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh ``test_<hex>`` database on the server at ``SKIALITH_TEST_POSTGRES_URL``, dropped
    afterwards. Skips when the variable is unset; fails (never skips) when it is set but the server
    is unreachable."""
    raw = os.environ.get(POSTGRES_URL_ENV, "")
    if not raw:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set; set it to run the PostgreSQL tests")
    base = make_url(raw)
    shown = base.render_as_string(hide_password=True)
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(postgres_admin_dsn(raw), autocommit=True)
    except psycopg.Error as exc:
        pytest.fail(
            f"cannot reach PostgreSQL at {POSTGRES_URL_ENV}={shown!r}: {exc}; start it or unset the variable",
            pytrace=False,
        )
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The read model URL: once SQLite, once MySQL and once PostgreSQL (each skipped when
    ``SKIALITH_TEST_MYSQL_URL`` / ``SKIALITH_TEST_POSTGRES_URL`` is unset)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def settings(nats_url: str, database_url: str, unique: str) -> Settings:
    """Settings with this test's own stream and subject prefix (JetStream rejects overlapping subjects)."""
    return Settings(
        nats_url=nats_url,
        database_url=database_url,
        stream=f"SK{unique}".upper(),
        subject_prefix=f"sk{unique}",
    )

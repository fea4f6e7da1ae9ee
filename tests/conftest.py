"""A throwaway PostgreSQL server for the suite, with pgvision installed in a fresh database.

Tests connect as ``app``, an ordinary role, because that is how users run pgvision; only
what needs a superuser (creating the extension, registering models) uses ``postgres``.
"""

import os
import pathlib
import subprocess

import psycopg
import pytest
from pytest_postgresql import factories

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PG_BIN = pathlib.Path(os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")).parent

postgresql_proc = factories.postgresql_proc(
    executable=str(HERE / "pg_ctl_as_postgres"),
    host="127.0.0.1",
    postgres_options="-c max_connections=60 -c shared_buffers=256MB",
)

APP_ROLE = "app"
DBNAME = "pgvision_test"


def dsn(proc, dbname=DBNAME, user="postgres"):
    return f"host={proc.host} port={proc.port} user={user} dbname={dbname}"


@pytest.fixture(scope="session")
def server(postgresql_proc):
    """The running server, with the test database and the ``app`` role."""
    with psycopg.connect(dsn(postgresql_proc, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DBNAME}")
        conn.execute(f"CREATE DATABASE {DBNAME}")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
    with psycopg.connect(dsn(postgresql_proc), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgvision CASCADE")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {APP_ROLE}")
    return postgresql_proc


@pytest.fixture
def admin(server):
    """A superuser connection to the test database."""
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        yield conn


@pytest.fixture
def conn(server):
    """A connection as the ordinary role ``app``, with pgvector's types registered."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        register_vector(c)
        yield c


@pytest.fixture
def psql(server):
    """Run a psql script as ``app`` with ON_ERROR_STOP; returns the CompletedProcess."""
    def run(path, user=APP_ROLE, check=True):
        return subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-f", str(path),
             dsn(server, user=user)],
            capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL, timeout=600)
    return run

"""pg_dump and pg_restore as a DBA runs them: as a superuser, everything comes back; as the
database's owner, models and pipelines come back when the owner is in pgvision_admin, and
what cannot be restored fails loudly, naming it."""

import json
import os
import subprocess

import psycopg
import pytest

from conftest import PG_BIN, dsn
from data import photo
from test_registry import TINY_SPEC, tiny_model

OWNER = "restorer"


def run(server, tool, *args, user="postgres"):
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": user}
    return subprocess.run([str(PG_BIN / tool), *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def state(c):
    return {
        "models": c.execute("SELECT name, sha256, dim, spec FROM pgvision.models WHERE NOT builtin"
                            " ORDER BY name").fetchall(),
        "pipelines": c.execute("SELECT name, model, options FROM pgvision.pipelines WHERE NOT builtin"
                               " ORDER BY name").fetchall(),
        "embed_acl": c.execute("SELECT proacl::text FROM pg_proc WHERE oid = "
                               "'pgvision.embed(bytea, text)'::regprocedure").fetchone()[0],
    }


@pytest.fixture
def dump(server, tmp_path):
    """A database with a user model and pipeline and a REVOKE on pgvision.embed, dumped."""
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS restore_src")
        c.execute("CREATE DATABASE restore_src")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [OWNER]).fetchone():
            c.execute(f"CREATE ROLE {OWNER} LOGIN")
    with psycopg.connect(dsn(server, "restore_src"), autocommit=True) as c:
        c.execute("CREATE EXTENSION pgvision CASCADE")
        c.execute("SELECT pgvision.register_model('tiny_rgb', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)])
        c.execute("SELECT pgvision.pipeline_create('tiny_pipe', 'tiny_rgb', '{\"normalize\": true}')")
        c.execute("REVOKE EXECUTE ON FUNCTION pgvision.embed(bytea, text) FROM PUBLIC")
        c.execute(f"GRANT EXECUTE ON FUNCTION pgvision.embed(bytea, text) TO {OWNER}")
        before = state(c)
    path = tmp_path / "src.dump"
    out = run(server, "pg_dump", "-Fc", "-f", str(path), "restore_src")
    assert out.returncode == 0, out.stderr
    return path, before


def fresh_target(server, owner, admin_member, extension=True):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS restore_dst")
        c.execute(f"CREATE DATABASE restore_dst OWNER {owner}")
        c.execute(f"{'GRANT' if admin_member else 'REVOKE'} pgvision_admin {'TO' if admin_member else 'FROM'} {OWNER}")
    if extension:  # an untrusted extension: a superuser creates it before the owner restores
        with psycopg.connect(dsn(server, "restore_dst"), autocommit=True) as c:
            c.execute("CREATE EXTENSION pgvision CASCADE")


def test_a_superuser_restore_keeps_models_pipelines_and_privileges(server, dump):
    path, before = dump
    fresh_target(server, "postgres", admin_member=False, extension=False)
    out = run(server, "pg_restore", "--exit-on-error", "-d", "restore_dst", str(path))
    assert out.returncode == 0, out.stderr
    with psycopg.connect(dsn(server, "restore_dst"), autocommit=True) as c:
        assert state(c) == before
        assert not any(e.startswith("=") for e in before["embed_acl"].strip("{}").split(","))  # REVOKE from PUBLIC
        assert c.execute("SELECT vector_dims(pgvision.embed(%s, 'tiny_rgb'))", [photo("dog")]).fetchone()[0] == 3


def test_an_owner_in_pgvision_admin_restores_the_models_and_hears_of_the_privileges(server, dump):
    path, before = dump
    fresh_target(server, OWNER, admin_member=True)
    out = run(server, "pg_restore", "--no-owner", "-d", "restore_dst", str(path), user=OWNER)
    assert out.returncode != 0
    # the REVOKE could not be applied by this role: it fails, naming the statement
    assert "privileges on pgvision's objects can be changed only by a superuser" in out.stderr
    assert "REVOKE ALL ON FUNCTION pgvision.embed" in out.stderr
    with psycopg.connect(dsn(server, "restore_dst"), autocommit=True) as c:
        after = state(c)
    assert after["models"] == before["models"] and after["pipelines"] == before["pipelines"]


def test_an_owner_outside_pgvision_admin_is_told_the_models_were_not_restored(server, dump):
    path, _ = dump
    fresh_target(server, OWNER, admin_member=False)
    out = run(server, "pg_restore", "--no-owner", "-d", "restore_dst", str(path), user=OWNER)
    assert out.returncode != 0
    assert "permission denied for table models" in out.stderr
    assert "COPY pgvision.models" in out.stderr
    with psycopg.connect(dsn(server, "restore_dst"), autocommit=True) as c:
        assert state(c)["models"] == []


def test_a_plain_role_granting_on_pgvision_objects_gets_an_error_not_a_warning(conn):
    for sql in ("GRANT EXECUTE ON FUNCTION pgvision.embed(bytea, text) TO PUBLIC",
                "REVOKE ALL ON FUNCTION pgvision.embed(bytea, text) FROM PUBLIC",
                "GRANT SELECT ON pgvision.models TO PUBLIC",
                "REVOKE USAGE ON SCHEMA pgvision FROM PUBLIC",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgvision TO PUBLIC"):
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.sqlstate == "42501", sql
    # GRANTs on the role's own objects are not its business
    conn.execute("CREATE TABLE IF NOT EXISTS own_grants (x int)")
    conn.execute("GRANT SELECT ON own_grants TO PUBLIC")
    conn.execute("DROP TABLE own_grants")

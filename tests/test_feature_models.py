"""Columns that know their model (pgvision.feature_models): what fills a feature column
records the model, the searches embed their queries with it, another model is refused, and
the record follows renames, drops and a dump and restore."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import psycopg
import pytest

from conftest import APP_ROLE, PG_BIN, ROOT, dsn
from data import DARKNET, photo
from test_registry import TINY_SPEC, tiny_model

TINY = "fm_tiny"
NAMES = ["dog", "eagle", "giraffe", "horses"]


def register_tiny(c):
    if not c.execute("SELECT 1 FROM pgvision.models WHERE name = %s", [TINY]).fetchone():
        c.execute("SELECT pgvision.register_model(%s, %s, %s)", [TINY, tiny_model(), json.dumps(TINY_SPEC)])


@pytest.fixture
def tiny(admin):
    """The 3-d tiny model, registered as a superuser and dropped at the end with the tables."""
    register_tiny(admin)
    yield TINY
    admin.execute("DROP TABLE IF EXISTS fm_t, fm_t2, fm_auto, fm_plain, fm_mixed, fm_cli")
    admin.execute("SELECT pgvision.drop_model(%s)", [TINY])


def images_table(conn, name, feature="vector(3)"):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, junk int, image bytea, feature {feature})")
    conn.execute(f"ALTER TABLE {name} DROP COLUMN junk")  # the feature's attnum is not its rank
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {name} (id, image) VALUES (%s, %s)",
                        [(i, photo(n)) for i, n in enumerate(NAMES, 1)])


def recorded(c, tbl, column="feature"):
    return c.execute("SELECT pgvision.column_model(%s, %s)", [tbl, column]).fetchone()[0]


def refused(conn, statement, args=()):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, args)
    return info.value


def test_embed_table_records_the_model_and_the_searches_use_it(conn, tiny):
    images_table(conn, "fm_t")
    assert recorded(conn, "fm_t") is None
    conn.execute("CALL pgvision.embed_table('fm_t', 'image', 'feature', model => %s)", [tiny])
    assert recorded(conn, "fm_t") == tiny
    assert conn.execute("SELECT feature_column, model FROM pgvision.feature_models"
                        " WHERE tbl = 'fm_t'::regclass").fetchall() == [("feature", tiny)]
    # without naming a model: the column's (the default model's 1280-d query would not fit vector(3))
    rows = conn.execute("SELECT rank, id, distance FROM pgvision.search('fm_t', %s, k => 2)",
                        [photo("eagle")]).fetchall()
    assert rows[0][:2] == (1, "2") and rows[0][2] == pytest.approx(0, abs=1e-6)
    rows = conn.execute("SELECT query_no, id FROM pgvision.search_batch('fm_t', %s, k => 1)",
                        [[photo("dog"), photo("giraffe")]]).fetchall()
    assert rows == [(1, "1"), (2, "3")]
    assert len(conn.execute("SELECT * FROM pgvision.search_like('fm_t', 1, k => 3)").fetchall()) == 3
    q, e = conn.execute("SELECT pgvision.query_vector('fm_t', 'feature', %s), pgvision.embed(%s, %s)",
                        [photo("dog"), photo("dog"), tiny]).fetchone()
    assert np.array_equal(q.to_numpy(), e.to_numpy()) and len(q.to_numpy()) == 3
    # the plain SQL form with it
    top = conn.execute("SELECT id FROM fm_t ORDER BY feature <=> pgvision.query_vector('fm_t', 'feature', %s)"
                       " LIMIT 1", [photo("horses")]).fetchone()[0]
    assert top == 4
    assert conn.execute("SELECT pgvision.query_vector('fm_t', 'feature', NULL)").fetchone()[0] is None
    # naming the recorded model is fine
    assert conn.execute("SELECT count(*) FROM pgvision.search('fm_t', %s, model => %s)",
                        [photo("dog"), tiny]).fetchone()[0] == 4


@pytest.mark.parametrize("statement", [
    "SELECT * FROM pgvision.search('fm_t', %s, model => 'efficientnet_lite0')",
    "SELECT * FROM pgvision.search_batch('fm_t', ARRAY[%s], model => 'efficientnet_lite0')",
], ids=["search", "search_batch"])
def test_naming_another_model_is_refused(conn, tiny, statement):
    images_table(conn, "fm_t")
    conn.execute("CALL pgvision.embed_table('fm_t', 'image', 'feature', model => %s)", [tiny])
    e = refused(conn, statement, [photo("dog")])
    assert e.sqlstate == "22023"
    assert str(e).startswith('feature column "feature" of relation public.fm_t holds features of model "fm_tiny",'
                             ' not "efficientnet_lite0"')
    assert "leave the model out" in e.diag.message_hint


def test_embed_table_refuses_another_model_on_a_filled_column(conn, tiny):
    images_table(conn, "fm_mixed", feature="vector")  # no dimensions: both models fit
    conn.execute("DELETE FROM fm_mixed WHERE id > 2")
    conn.execute("CALL pgvision.embed_table('fm_mixed', 'image', 'feature', model => %s)", [tiny])
    e = refused(conn, "CALL pgvision.embed_table('fm_mixed', 'image', 'feature', model => 'efficientnet_lite0')")
    assert e.sqlstate == "22023" and '"fm_tiny"' in str(e) and '"efficientnet_lite0"' in str(e)
    assert "new vector(1280) column" in e.diag.message_hint
    assert recorded(conn, "fm_mixed") == tiny
    # left out, embed_table takes the recorded model
    conn.execute("UPDATE fm_mixed SET feature = NULL WHERE id = 2")
    conn.execute("CALL pgvision.embed_table('fm_mixed', 'image', 'feature')")
    assert conn.execute("SELECT vector_dims(feature) FROM fm_mixed WHERE id = 2").fetchone()[0] == 3
    # with every feature NULL, the column may change model
    conn.execute("UPDATE fm_mixed SET feature = NULL")
    conn.execute("CALL pgvision.embed_table('fm_mixed', 'image', 'feature', model => 'efficientnet_lite0')")
    assert recorded(conn, "fm_mixed") == "efficientnet_lite0"
    assert conn.execute("SELECT id FROM pgvision.search('fm_mixed', %s, k => 1)", [photo("eagle")]).fetchone()[0] == "2"


def test_enable_auto_embed_records_the_model(conn, tiny):
    conn.execute("DROP TABLE IF EXISTS fm_auto")
    conn.execute("CREATE TABLE fm_auto (id int PRIMARY KEY, image bytea, feature vector(3))")
    conn.execute("SELECT pgvision.enable_auto_embed('fm_auto', 'image', 'feature', %s)", [tiny])
    assert recorded(conn, "fm_auto") == tiny
    conn.execute("INSERT INTO fm_auto VALUES (1, %s), (2, %s)", [photo("dog"), photo("kite")])
    assert conn.execute("SELECT id FROM pgvision.search('fm_auto', %s, k => 1)", [photo("kite")]).fetchone()[0] == "2"
    # left out, the trigger embeds with the recorded model
    conn.execute("SELECT pgvision.enable_auto_embed('fm_auto', 'image', 'feature')")
    conn.execute("INSERT INTO fm_auto VALUES (3, %s)", [photo("person")])
    assert conn.execute("SELECT vector_dims(feature) FROM fm_auto WHERE id = 3").fetchone()[0] == 3


def test_a_column_without_a_record_works_as_before(conn):
    conn.execute("DROP TABLE IF EXISTS fm_plain")
    conn.execute("CREATE TABLE fm_plain (id int PRIMARY KEY, image bytea, feature vector(1280))")
    conn.execute("INSERT INTO fm_plain VALUES (1, %s), (2, %s)", [photo("dog"), photo("eagle")])
    conn.execute("UPDATE fm_plain SET feature = pgvision.embed(image)")
    assert recorded(conn, "fm_plain") is None
    assert conn.execute("SELECT id FROM pgvision.search('fm_plain', %s, k => 1)", [photo("eagle")]).fetchone()[0] == "2"
    assert conn.execute("SELECT id FROM pgvision.search('fm_plain', %s, k => 1, model => 'efficientnet_lite0')",
                        [photo("dog")]).fetchone()[0] == "1"
    q = conn.execute("SELECT pgvision.query_vector('fm_plain', 'feature', %s) = pgvision.embed(%s)",
                     [photo("dog"), photo("dog")]).fetchone()[0]
    assert q is True
    conn.execute("DROP TABLE fm_plain")


@pytest.mark.parametrize("statement, args, state", [
    ("SELECT pgvision.set_column_model('fm_t', 'feature', 'no_such_model')", [], "42704"),
    ("SELECT pgvision.set_column_model('fm_t', 'image', %s)", [TINY], "42804"),
    ("SELECT pgvision.set_column_model('fm_t', 'nope', %s)", [TINY], "42703"),
    ("SELECT pgvision.set_column_model('fm_t', 'feature', 'efficientnet_lite0')", [], "42804"),
    ("SELECT pgvision.set_column_model('fm_t', 'feature', NULL)", [], "22004"),
    ("SELECT pgvision.query_vector('fm_t', 'image', '\\x00')", [], "42804"),
    ("SELECT pgvision.query_vector(NULL, 'feature', '\\x00')", [], "22004"),
], ids=["unknown model", "not vector", "no column", "dimensions", "null model", "query_vector not vector",
        "query_vector null table"])
def test_bad_records_are_refused(conn, tiny, statement, args, state):
    images_table(conn, "fm_t")
    assert refused(conn, statement, args).sqlstate == state


def test_renames_keep_the_record_and_drops_delete_it(conn, admin, tiny):
    images_table(conn, "fm_t")
    conn.execute("CALL pgvision.embed_table('fm_t', 'image', 'feature', model => %s)", [tiny])
    conn.execute("ALTER TABLE fm_t RENAME TO fm_t2")
    conn.execute("ALTER TABLE fm_t2 RENAME COLUMN feature TO feat")
    assert recorded(conn, "fm_t2", "feat") == tiny
    assert conn.execute("SELECT feature_column FROM pgvision.feature_models WHERE tbl = 'fm_t2'::regclass"
                        ).fetchall() == [("feat",)]
    assert conn.execute("SELECT id FROM pgvision.search('fm_t2', %s, k => 1, feature_column => 'feat')",
                        [photo("giraffe")]).fetchone()[0] == "3"
    # a column added under the old name is another column, without a record
    conn.execute("ALTER TABLE fm_t2 ADD COLUMN feature vector(1280)")
    assert recorded(conn, "fm_t2", "feature") is None
    conn.execute("ALTER TABLE fm_t2 DROP COLUMN feat")
    oid = conn.execute("SELECT 'fm_t2'::regclass::oid").fetchone()[0]
    count = "SELECT count(*) FROM pgvision.feature_models WHERE tbl::oid = %s"
    assert admin.execute(count, [oid]).fetchone()[0] == 0
    conn.execute("SELECT pgvision.set_column_model('fm_t2', 'feature', 'efficientnet_lite0')")
    conn.execute("DROP TABLE fm_t2")
    assert admin.execute(count, [oid]).fetchone()[0] == 0


def test_a_role_without_select_does_not_see_or_write_the_record(conn, admin, tiny):
    images_table(conn, "fm_t")
    conn.execute("CALL pgvision.embed_table('fm_t', 'image', 'feature', model => %s)", [tiny])
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'fm_other'").fetchone():
        admin.execute("CREATE ROLE fm_other")
    conn.execute("GRANT UPDATE (image) ON fm_t TO fm_other")
    try:
        admin.execute("SET ROLE fm_other")
        assert admin.execute("SELECT count(*) FROM pgvision.feature_models"
                             " WHERE tbl = 'fm_t'::regclass").fetchone()[0] == 0
        assert recorded(admin, "fm_t") is None
        assert admin.execute("UPDATE pgvision.feature_models SET model = 'efficientnet_lite0'"
                             " WHERE tbl = 'fm_t'::regclass RETURNING 1").fetchall() == []
        assert admin.execute("DELETE FROM pgvision.feature_models RETURNING 1").fetchall() == []
        e = refused(admin, "SELECT pgvision.set_column_model('fm_t', 'feature', %s)", [tiny])
        assert e.sqlstate == "42501"
        e = refused(admin, "INSERT INTO pgvision.feature_models (tbl, feature_column, attnum, model)"
                           " VALUES ('fm_t', 'feature', 0, 'efficientnet_lite0')")
        assert e.sqlstate in ("42501", "23505")
    finally:
        admin.execute("RESET ROLE")
    assert recorded(conn, "fm_t") == tiny
    conn.execute("REVOKE ALL ON fm_t FROM fm_other")


def test_load_records_the_model(server, conn, tiny, tmp_path):
    for name in ("dog", "eagle"):
        shutil.copy(DARKNET / f"{name}.jpg", tmp_path / f"{name}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PG_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "client"), env.get("PYTHONPATH")]))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pgvision_client", *map(str, args),
                               "--dsn", dsn(server, user=APP_ROLE)], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=600)

    done = cli("load", tmp_path, "--table", "fm_cli", "--model", tiny, "--no-embed")
    assert done.returncode == 0, done.stderr
    assert recorded(conn, "fm_cli") == tiny
    done = cli("load", tmp_path, "--table", "fm_cli")  # the recorded model, not the default
    assert done.returncode == 0, done.stderr
    assert conn.execute("SELECT count(*) FROM fm_cli WHERE vector_dims(feature) = 3").fetchone()[0] == 2
    done = cli("load", tmp_path, "--table", "fm_cli", "--model", "efficientnet_lite0")
    assert done.returncode == 1 and "fm_tiny" in done.stderr


def run_tool(server, tool, *args):
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": "postgres"}
    return subprocess.run([str(PG_BIN / tool), *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def test_dump_and_restore_keep_the_record(server, tmp_path):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS fm_src")
        c.execute("DROP DATABASE IF EXISTS fm_dst")
        c.execute("CREATE DATABASE fm_src")
        c.execute("CREATE DATABASE fm_dst")
    try:
        with psycopg.connect(dsn(server, "fm_src"), autocommit=True) as c:
            c.execute("CREATE EXTENSION pgvision CASCADE")
            register_tiny(c)
            images_table(c, "fm_t")
            c.execute("CALL pgvision.embed_table('fm_t', 'image', 'feature', model => %s)", [TINY])
            c.execute("ALTER TABLE fm_t RENAME COLUMN feature TO feat")
            before = c.execute("SELECT id, feat::text FROM fm_t ORDER BY id").fetchall()
        path = tmp_path / "fm.dump"
        out = run_tool(server, "pg_dump", "-Fc", "-f", str(path), "fm_src")
        assert out.returncode == 0, out.stderr
        out = run_tool(server, "pg_restore", "--exit-on-error", "-d", "fm_dst", str(path))
        assert out.returncode == 0, out.stderr
        with psycopg.connect(dsn(server, "fm_dst"), autocommit=True) as c:
            assert recorded(c, "fm_t", "feat") == TINY
            # the column's number is its own here (the dropped column is not restored)
            assert c.execute("SELECT f.attnum = a.attnum FROM pgvision.feature_models f JOIN pg_attribute a"
                             " ON a.attrelid = f.tbl AND a.attname = f.feature_column").fetchone()[0]
            assert c.execute("SELECT id, feat::text FROM fm_t ORDER BY id").fetchall() == before
            assert c.execute("SELECT id FROM pgvision.search('fm_t', %s, k => 1, feature_column => 'feat')",
                             [photo("horses")]).fetchone()[0] == "4"
            c.execute("ALTER TABLE fm_t RENAME COLUMN feat TO feature")
            assert recorded(c, "fm_t") == TINY
    finally:
        with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS fm_src")
            c.execute("DROP DATABASE IF EXISTS fm_dst")

"""Who may do what, and the catalog promises: pinned search_path, SECURITY DEFINER only where
listed, everything commented, nothing left behind by DROP EXTENSION."""

import json

import psycopg
import pytest

from conftest import APP_ROLE, dsn
from data import photo
from test_registry import TINY_SPEC, tiny_model

CURATOR = "curator"


@pytest.fixture
def curator(server, admin):
    """An ordinary login role that is a member of pgvision_admin."""
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [CURATOR]).fetchone():
        admin.execute(f"CREATE ROLE {CURATOR} LOGIN")
    admin.execute(f"GRANT pgvision_admin TO {CURATOR}")
    with psycopg.connect(dsn(server, user=CURATOR), autocommit=True) as c:
        yield c


def test_pgvision_admin_manages_models_and_pipelines(curator):
    assert not curator.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    curator.execute("SELECT pgvision.register_model('curated', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)])
    curator.execute("SELECT pgvision.pipeline_create('curated_pipe', 'curated')")
    out = curator.execute("SELECT pgvision.pipeline_run('curated_pipe', %s)", [photo("dog")]).fetchone()[0]
    assert out["dim"] == 3
    curator.execute("SELECT pgvision.pipeline_drop('curated_pipe')")
    curator.execute("SELECT pgvision.drop_model('curated')")
    assert not curator.execute("SELECT 1 FROM pgvision.models WHERE name = 'curated'").fetchone()


@pytest.mark.parametrize("sql", [
    "SELECT pgvision.register_model('x', '\\x00'::bytea, '{}')",
    "SELECT pgvision.drop_model('efficientnet_lite0')",
    "SELECT pgvision.pipeline_create('p', 'efficientnet_lite0')",
    "SELECT pgvision.pipeline_drop('general_feature_extractor')",
    "SELECT pgvision._install_builtin_models()",
    "INSERT INTO pgvision.models (name, sha256, dim, spec, onnx) VALUES ('x', repeat('0', 64), 1, '{}', '\\x00')",
    "DELETE FROM pgvision.models",
    "UPDATE pgvision.models SET dim = 1",
])
def test_ordinary_roles_cannot_change_the_registry(conn, sql):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert info.value.sqlstate == "42501", str(info.value)


def test_ordinary_roles_embed_classify_and_search(conn):
    assert conn.execute("SELECT vector_dims(pgvision.embed(%s))", [photo("dog")]).fetchone()[0] == 1280
    assert len(conn.execute("SELECT * FROM pgvision.classify(%s, 2)", [photo("dog")]).fetchall()) == 2
    assert conn.execute("SELECT pgvision.pipeline_run('general_feature_extractor', %s) ->> 'dim'",
                        [photo("dog")]).fetchone()[0] == "1280"


def extension_functions(conn):
    return conn.execute("""
        SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig, obj_description(p.oid, 'pg_proc'),
               p.proname LIKE '\\_%%'
        FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
        JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
        WHERE e.extname = 'pgvision' ORDER BY 1""").fetchall()


# Each runs as the extension's owner for one narrow job a caller cannot do with its own rights.
SECURITY_DEFINER = {
    # deletes the backfill rows of a dropped table or column, which row-level security hides
    # from the role that dropped it (the policies ask about privileges on a table now gone)
    "pgvision._forget_dropped()",
}


def test_every_function_pins_search_path_and_few_are_security_definer(admin):
    functions = extension_functions(admin)
    assert len(functions) > 20
    assert {name for name, secdef, *_ in functions if secdef} == SECURITY_DEFINER
    for name, secdef, config, _, _ in functions:
        # procedures that COMMIT cannot have SET clauses; embed_table and switch_model qualify every name
        if name.startswith(("pgvision.embed_table(", "pgvision.switch_model(")):
            continue
        assert config and any(c.startswith("search_path=pg_catalog") for c in config), name


def test_every_user_callable_function_and_table_is_commented(admin):
    for name, _, _, comment, internal in extension_functions(admin):
        if not internal:
            assert comment, f"{name} has no COMMENT"
    tables = admin.execute("""
        SELECT c.oid::regclass::text, obj_description(c.oid, 'pg_class') FROM pg_class c
        WHERE c.relnamespace = 'pgvision'::regnamespace AND c.relkind IN ('r', 'v')""").fetchall()
    for name, comment in tables:
        assert comment, f"{name} has no COMMENT"


CATALOG = """
    SELECT 'class ' || c.oid::regclass::text FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL SELECT 'proc ' || p.oid::regprocedure::text FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT 'type ' || t.oid::regtype::text FROM pg_type t
    JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
    UNION ALL SELECT 'policy ' || polname FROM pg_policy
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'cast ' || castsource::regtype || '->' || casttarget::regtype FROM pg_cast WHERE oid >= 16384
    UNION ALL SELECT 'operator ' || oid::regoperator::text FROM pg_operator WHERE oid >= 16384
    ORDER BY 1"""


def test_drop_and_create_again_leaves_no_stray_objects(server):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS dropcheck")
        c.execute("CREATE DATABASE dropcheck")
    with psycopg.connect(dsn(server, "dropcheck"), autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE EXTENSION plpython3u")
        before = c.execute(CATALOG).fetchall()
        c.execute("CREATE EXTENSION pgvision")
        installed = c.execute(CATALOG).fetchall()
        assert len(installed) > len(before)
        c.execute("DROP EXTENSION pgvision")
        assert c.execute(CATALOG).fetchall() == before
        c.execute("CREATE EXTENSION pgvision")
        assert c.execute(CATALOG).fetchall() == installed
        # the float and the 8-bit built-in, each also with features of length 1
        assert c.execute("SELECT count(*) FROM pgvision.models").fetchone()[0] == 4

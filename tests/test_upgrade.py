"""ALTER EXTENSION pgvision UPDATE: every released version updates to the current one, and
the updated database has the catalog of a fresh install, with the user's grants, revokes,
models and tables kept, in the database and in pg_dump."""

import inspect
import json
import re
import subprocess

import psycopg
import pytest
from psycopg import sql

from conftest import PG_BIN, ROOT, dsn
from data import photo
from test_registry import TINY_SPEC, tiny_model

EXTENSION = ROOT / "extension"
CURRENT = re.search(r"default_version\s*=\s*'([^']+)'",
                    (EXTENSION / "pgvision.control").read_text()).group(1)
RELEASED = sorted(p.name[len("pgvision--"):-len(".sql")]
                  for p in (EXTENSION / "released").glob("pgvision--*.sql"))
OLD = [v for v in RELEASED if v != CURRENT]

CURATOR = "upg_curator"   # a member of pgvision_admin
READER = "upg_reader"     # given privileges of its own on pgvision's objects

# What a user does after CREATE EXTENSION, the same in the database that is then updated and
# in the fresh one. Grants on objects the release grants on again, a revoke of a privilege
# the release grants, a revoke of a default privilege, a column privilege.
USER_PRIVILEGES = [
    f"GRANT EXECUTE ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) TO {READER}",
    f"GRANT INSERT, UPDATE ON pgvision.models TO {READER} WITH GRANT OPTION",
    f"GRANT UPDATE (options) ON pgvision.pipelines TO {READER}",
    "REVOKE EXECUTE ON FUNCTION pgvision.pipeline_drop(text) FROM pgvision_admin",
    "REVOKE EXECUTE ON FUNCTION pgvision.classify(bytea, int, text) FROM PUBLIC",
    f"GRANT EXECUTE ON FUNCTION pgvision.classify(bytea, int, text) TO {READER}",
    f"GRANT USAGE, CREATE ON SCHEMA pgvision TO {CURATOR}",
]


def members(kind):
    return f"""SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
               WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                 AND e.extname = 'pgvision' AND d.classid = '{kind}'::regclass"""


def acl(expr):
    return f"(SELECT array_agg(a::text ORDER BY a::text) FROM unnest({expr}) a)"


TABLES = members("pg_class")

# Everything the extension owns, described without OIDs, so two databases compare.
CATALOG = {
    "extension": """
        SELECT extversion, extowner::regrole::text, extnamespace::regnamespace::text, extrelocatable,
               extconfig::regclass[]::text[], extcondition
        FROM pg_extension WHERE extname = 'pgvision'""",
    "members": """
        SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
        JOIN pg_extension e ON e.oid = d.refobjid
        WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pgvision'""",
    "schemas": f"""
        SELECT nspname, nspowner::regrole::text, {acl('nspacl')} FROM pg_namespace
        WHERE oid IN ({members('pg_namespace')})""",
    "functions": f"""
        SELECT p.oid::regprocedure::text, p.prokind, pg_get_function_arguments(p.oid),
               pg_get_function_result(p.oid), l.lanname, p.prosrc, p.probin, p.proconfig,
               p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proleakproof,
               p.procost, p.prorows, p.proretset, p.proowner::regrole::text, {acl('p.proacl')}
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.oid IN ({members('pg_proc')})""",
    "relations": f"""
        SELECT c.oid::regclass::text, c.relkind, c.relpersistence, c.relrowsecurity,
               c.relforcerowsecurity, c.relreplident, c.reloptions, c.relowner::regrole::text,
               {acl('c.relacl')}, CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
        FROM pg_class c WHERE c.oid IN ({TABLES})""",
    "columns": f"""
        SELECT a.attrelid::regclass::text,
               row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
               a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attstorage,
               a.attcompression, a.attcollation::regcollation::text, {acl('a.attacl')}
        FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE a.attrelid IN ({TABLES}) AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": f"""
        SELECT conrelid::regclass::text, contypid::regtype::text, conname, contype,
               pg_get_constraintdef(oid)
        FROM pg_constraint WHERE conrelid IN ({TABLES}) OR contypid IN ({members('pg_type')})""",
    "indexes": f"""
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
        WHERE indrelid IN ({TABLES})""",
    "policies": f"""
        SELECT polrelid::regclass::text, polname, polcmd, polpermissive, polroles::regrole[]::text[],
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
        FROM pg_policy WHERE polrelid IN ({TABLES})""",
    "triggers": f"""
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger
        WHERE tgrelid IN ({TABLES}) AND NOT tgisinternal""",
    "sequences": f"""
        SELECT seqrelid::regclass::text, seqtypid::regtype::text, seqstart, seqincrement, seqmax,
               seqmin, seqcache, seqcycle FROM pg_sequence WHERE seqrelid IN ({TABLES})""",
    "types": f"""
        SELECT t.oid::regtype::text, t.typtype, t.typowner::regrole::text, {acl('t.typacl')},
               t.typbasetype::regtype::text, t.typnotnull, t.typdefault,
               (SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum
                WHERE enumtypid = t.oid),
               (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
                FROM pg_attribute WHERE attrelid = t.typrelid AND attnum > 0 AND NOT attisdropped)
        FROM pg_type t WHERE t.oid IN ({members('pg_type')})""",
    # every comment and initial privilege outside the system catalogs: the extensions', and
    # the user's objects', which are the same in both databases
    "comments": """
        SELECT pg_describe_object(classoid, objoid, objsubid), description FROM pg_description
        WHERE objoid >= 16384""",
    "init_privs": f"""
        SELECT pg_describe_object(classoid, objoid, objsubid), privtype, {acl('initprivs')}
        FROM pg_init_privs WHERE objoid >= 16384""",
    "registry": """
        SELECT 'model', name, sha256, dim::text, spec::text, labels::text, builtin FROM pgvision.models
        UNION ALL
        SELECT 'pipeline', name, model, NULL, options::text, NULL, builtin FROM pgvision.pipelines""",
}


def snapshot(conn):
    return {name: sorted(conn.execute(query).fetchall(), key=repr) for name, query in CATALOG.items()}


def connect(server, dbname, user="postgres"):
    c = psycopg.connect(dsn(server, dbname, user), autocommit=True)
    c.notices = []
    c.add_notice_handler(lambda d: c.notices.append((d.severity_nonlocalized, d.message_primary)))
    return c


def make_role(admin, name):
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))


def use_it(server, dbname):
    """What a user does with pgvision: grants and revokes, a model and a pipeline of their
    own, a table of images with automatic embedding and an index."""
    with connect(server, dbname) as c:
        for statement in USER_PRIVILEGES:
            c.execute(statement)
        c.execute("CREATE TABLE public.photos (id int PRIMARY KEY, name text, image bytea, "
                  "feature vector(1280))")
        c.execute("SELECT pgvision.enable_auto_embed('public.photos', 'image', 'feature', 'efficientnet_lite0')")
        c.execute("INSERT INTO public.photos VALUES (1, 'dog', %s), (2, 'eagle', %s)",
                  [photo("dog"), photo("eagle")])
        # the index parameters spelled out: the defaults changed between versions
        c.execute("SELECT pgvision.create_index('public.photos', 'feature', 'cosine', m => 16, ef_construction => 64)")
        c.execute(f"GRANT SELECT ON public.photos TO {READER}")
    with connect(server, dbname, CURATOR) as c:
        c.execute("SELECT pgvision.register_model('upg_tiny', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)])
        c.execute("SELECT pgvision.pipeline_create('upg_tiny_pipe', 'upg_tiny', '{\"normalize\": true}')")


def create(server, dbname, version=None):
    with connect(server, "postgres") as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with connect(server, dbname) as c:
        if version:
            c.execute("CREATE EXTENSION pgvision VERSION %s CASCADE" % sql.quote(version))
        else:
            c.execute("CREATE EXTENSION pgvision CASCADE")
        return c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgvision'").fetchone()[0]


@pytest.fixture(scope="module")
def roles(server):
    with connect(server, "postgres") as c:
        make_role(c, CURATOR)
        make_role(c, READER)
        # the suite's CREATE EXTENSION made pgvision_admin; roles belong to the cluster
        c.execute(f"GRANT pgvision_admin TO {CURATOR}")


@pytest.fixture(scope="module")
def fresh(server, roles):
    assert create(server, "upg_fresh") == CURRENT
    use_it(server, "upg_fresh")
    yield "upg_fresh"
    with connect(server, "postgres") as c:
        c.execute("DROP DATABASE upg_fresh")


@pytest.fixture(scope="module", params=OLD)
def updated(request, server, fresh):
    """A database made with CREATE EXTENSION at a released version, used, then updated; the
    notices of the ALTER EXTENSION."""
    old = request.param
    dbname = "upg_from_" + old.replace(".", "_")
    assert create(server, dbname, old) == old
    use_it(server, dbname)
    with connect(server, dbname) as c:
        c.execute("ALTER EXTENSION pgvision UPDATE")
        notices = c.notices
    yield dbname, notices
    with connect(server, "postgres") as c:
        c.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dbname)))


def test_a_released_version_is_kept_and_older_ones_update_to_the_current_one(server):
    assert OLD, "extension/released/ holds no version older than " + CURRENT
    with connect(server, "pgvision_test") as c:
        available = {v for (v,) in c.execute(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'pgvision'")}
        assert set(RELEASED) | {CURRENT} <= available
        paths = dict(c.execute(
            "SELECT source, path FROM pg_extension_update_paths('pgvision') WHERE target = %s",
            [CURRENT]).fetchall())
    for old in OLD:
        # straight to the current version, one script
        assert paths[old] == f"{old}--{CURRENT}", old


# The one difference an update leaves on purpose: the default model of these functions' model
# argument, and of the built-in pipeline, is the database's own (tests/test_default_model.py
# checks which).
FOLLOW_THE_DEFAULT = ("pgvision.embed(", "pgvision.embed_batch(", "pgvision.create_sharded_table(",
                      "pgvision.embed_shards(")


def without_default_model(conn, snap):
    default = conn.execute("SELECT pgvision.default_model()").fetchone()[0]
    snap["functions"] = sorted(
        (tuple(v.replace(f"DEFAULT '{default}'::text", "DEFAULT <default model>") if isinstance(v, str) else v
               for v in row) if row[0].startswith(FOLLOW_THE_DEFAULT) else row
         for row in snap["functions"]), key=repr)
    # and the built-in pipeline, which is embed(image) as JSON
    snap["registry"] = sorted(
        (row[:2] + ("<default model>",) + row[3:] if row[:2] == ("pipeline", "general_feature_extractor")
         and row[2] == default else row for row in snap["registry"]), key=repr)
    return snap


def test_updated_catalog_is_the_fresh_catalog(server, fresh, updated):
    dbname, _ = updated
    with connect(server, fresh) as f, connect(server, dbname) as u:
        want, got = without_default_model(f, snapshot(f)), without_default_model(u, snapshot(u))
        assert f.execute("SELECT pgvision.default_model()").fetchone()[0] == "efficientnet_lite0_normalized"
        assert u.execute("SELECT pgvision.default_model()").fetchone()[0] == "efficientnet_lite0"
    assert got["extension"][0][0] == CURRENT
    assert len(want["functions"]) > 20 and len(want["relations"]) >= 4
    for part in CATALOG:
        assert got[part] == want[part], part


def test_update_raises_no_warning(updated):
    _, notices = updated
    assert [n for n in notices if n[0] == "WARNING"] == []


def test_user_privileges_survive_the_update(server, updated):
    dbname, _ = updated
    with connect(server, dbname) as c:
        def has(check, *args):
            return c.execute(f"SELECT {check}", args).fetchone()[0]
        assert has("has_function_privilege(%s, 'pgvision.register_model(text, bytea, jsonb, text[])', 'EXECUTE')", READER)
        assert has("has_table_privilege(%s, 'pgvision.models', 'INSERT WITH GRANT OPTION')", READER)
        assert has("has_column_privilege(%s, 'pgvision.pipelines', 'options', 'UPDATE')", READER)
        assert not has("has_column_privilege(%s, 'pgvision.pipelines', 'model', 'UPDATE')", READER)
        # the release grants pipeline_drop to pgvision_admin, the user took it back
        assert not has("has_function_privilege('pgvision_admin', 'pgvision.pipeline_drop(text)', 'EXECUTE')")
        assert has("has_function_privilege('pgvision_admin', 'pgvision.pipeline_create(text, text, jsonb)', 'EXECUTE')")
        assert not has("has_function_privilege('public', 'pgvision.classify(bytea, int, text)', 'EXECUTE')")
        assert has("has_function_privilege(%s, 'pgvision.classify(bytea, int, text)', 'EXECUTE')", READER)
        assert has("has_schema_privilege(%s, 'pgvision', 'CREATE')", CURATOR)
        assert has("pg_has_role(%s, 'pgvision_admin', 'MEMBER')", CURATOR)
        assert has("has_table_privilege(%s, 'public.photos', 'SELECT')", READER)


def test_user_models_tables_and_triggers_survive_the_update(server, updated):
    dbname, _ = updated
    with connect(server, dbname) as c:
        models = c.execute("SELECT name, builtin FROM pgvision.models ORDER BY name").fetchall()
        assert models == [("efficientnet_lite0", True), ("efficientnet_lite0_int8", True),
                          ("efficientnet_lite0_int8_normalized", True), ("efficientnet_lite0_normalized", True),
                          ("upg_tiny", False)]
        assert c.execute("SELECT model, options ->> 'normalize' FROM pgvision.pipelines WHERE name = 'upg_tiny_pipe'"
                         ).fetchone() == ("upg_tiny", "true")
        assert c.execute("SELECT count(*) FROM pgvision.pipelines WHERE builtin").fetchone()[0] == 1
        assert c.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.photos'::regclass "
                         "AND NOT tgisinternal").fetchall() == [("pgvision_auto_embed",)]
        assert c.execute("SELECT count(*) FROM public.photos WHERE feature IS NOT NULL").fetchone()[0] == 2
        assert c.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'public.photos'::regclass "
                         "AND NOT indisprimary").fetchone()[0] == 1


def test_updated_database_embeds_and_searches(server, updated):
    dbname, _ = updated
    with connect(server, dbname) as c:
        assert c.execute("SELECT vector_dims(pgvision.embed(%s))", [photo("giraffe")]).fetchone()[0] == 1280
        # the trigger, a function of the old version's table, runs the new version's embed
        c.execute("INSERT INTO public.photos VALUES (3, 'giraffe', %s)", [photo("giraffe")])
        same = c.execute("SELECT feature = pgvision.embed(%s) FROM public.photos WHERE id = 3",
                         [photo("giraffe")]).fetchone()[0]
        assert same
        hits = c.execute("SELECT id, distance FROM pgvision.search('public.photos', %s, 3)",
                         [photo("dog")]).fetchall()
        assert [h[0] for h in hits][0] == "1" and hits[0][1] < 1e-3 and len(hits) == 3
        out = c.execute("SELECT pgvision.pipeline_run('upg_tiny_pipe', %s)", [photo("dog")]).fetchone()[0]
        assert out["dim"] == 3 and out["normalized"] is True


def dump(server, dbname):
    out = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", dsn(server, dbname)],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL, timeout=300).stdout
    # \restrict and \unrestrict carry a random key, new in every dump
    return [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


def test_dump_of_updated_database_keeps_the_user_privileges(server, fresh, updated):
    """pg_dump leaves out what pg_init_privs records as the extension's own privileges."""
    dbname, _ = updated
    got, want = dump(server, dbname), dump(server, fresh)
    privileges = [line for line in want if line.startswith(("GRANT", "REVOKE"))]
    for line in [f"GRANT ALL ON FUNCTION pgvision.register_model(name text, onnx bytea, spec jsonb, labels text[]) TO {READER};",
                 f"GRANT INSERT,UPDATE ON TABLE pgvision.models TO {READER} WITH GRANT OPTION;",
                 f"GRANT UPDATE(options) ON TABLE pgvision.pipelines TO {READER};",
                 "REVOKE ALL ON FUNCTION pgvision.pipeline_drop(name text) FROM pgvision_admin;",
                 "REVOKE ALL ON FUNCTION pgvision.classify(image bytea, k integer, model text) FROM PUBLIC;",
                 f"GRANT ALL ON SCHEMA pgvision TO {CURATOR};"]:
        assert line in privileges, privileges
    assert [line for line in got if line.startswith(("GRANT", "REVOKE"))] == privileges
    assert got == want


def test_update_with_nothing_to_do_changes_nothing(server, updated):
    dbname, _ = updated
    with connect(server, dbname) as c:
        before = snapshot(c)
        c.notices.clear()
        c.execute("ALTER EXTENSION pgvision UPDATE")
        assert c.notices == [("NOTICE", f'version "{CURRENT}" of extension "pgvision" is already installed')]
        c.execute("ALTER EXTENSION pgvision UPDATE TO %s" % sql.quote(CURRENT))
        assert snapshot(c) == before


def test_privileges_come_back_on_an_object_an_update_creates_again(server, roles):
    """A new version that changes a function's result type drops it and creates it again;
    the user's grants and revokes on it come back (upgrade-begin.sql and upgrade-end.sql,
    which frame every upgrade script, run here around such a change)."""
    dbname = "upg_recreate"
    create(server, dbname)
    f = "pgvision.pipeline_run_dist_random(text, bytea)"
    begin, end = ((EXTENSION / "released" / name).read_text() for name in ("upgrade-begin.sql", "upgrade-end.sql"))
    try:
        with connect(server, dbname) as c:
            c.execute(f"GRANT EXECUTE ON FUNCTION {f} TO {READER}")
            c.execute(f"REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC")
            with c.transaction():
                c.execute(begin)
                c.execute(f"ALTER EXTENSION pgvision DROP FUNCTION {f}")
                c.execute(f"DROP FUNCTION {f}")
                c.execute("CREATE FUNCTION pgvision.pipeline_run_dist_random(name text, image bytea) "
                          "RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb'")
                c.execute(f"ALTER EXTENSION pgvision ADD FUNCTION {f}")
                assert c.execute(f"SELECT has_function_privilege('public', '{f}', 'EXECUTE')").fetchone()[0]
                c.execute(end)
            acl = c.execute(f"SELECT proacl::text[] FROM pg_proc WHERE oid = '{f}'::regprocedure").fetchone()[0]
            assert f"{READER}=X/postgres" in acl
            assert not c.execute(f"SELECT has_function_privilege('public', '{f}', 'EXECUTE')").fetchone()[0]
            assert [n for n in c.notices if n[0] == "WARNING"] == []
    finally:
        with connect(server, "postgres") as c:
            c.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dbname)))


def test_runtime_keeps_what_released_sql_calls():
    """Every version's SQL calls the one installed runtime package (the runtime folder is
    the current version's), so the package keeps each entry point a released script calls,
    with the arguments it passes."""
    from pgvision_runtime import sqlapi

    for old in OLD:
        script = (EXTENSION / "released" / f"pgvision--{old}.sql").read_text()
        calls = re.findall(r"\bpv\.(\w+)\(([^)\n]*)\)", script)
        assert calls, old
        for name, args in calls:
            entry = getattr(sqlapi, name, None)
            assert callable(entry), f"{old} calls pgvision_runtime.sqlapi.{name}, which is gone"
            n = len([a for a in args.split(",") if a.strip()])
            signature = inspect.signature(entry)
            signature.bind(*range(n))


def test_released_incremental_files_are_unchanged():
    """An incremental file runs once; a released one never changes (build.py refuses too)."""
    for old in OLD:
        script = (EXTENSION / "released" / f"pgvision--{old}.sql").read_text()
        names = re.findall(r"^-- incremental/(\S+\.sql)$", script, re.M)
        assert names, old
        for name in names:
            assert (EXTENSION / "sql" / "incremental" / name).exists(), name
    for old in OLD:
        subprocess.run(["python3", str(EXTENSION / "build.py"), "--runtime-path", "/x",
                        f"pgvision--{old}--{CURRENT}.sql"], check=True, capture_output=True, timeout=60)

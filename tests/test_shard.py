"""Scale-out: a coordinator and three shards, each a throwaway PostgreSQL server.

The coordinator is the suite's server (conftest), in a database of its own with postgres_fdw
and dblink; the three shards are servers started here, each with pgvision in a database of
its own. A shard lets the ordinary role ``app`` in with a password only, because postgres_fdw
and dblink refuse a non-superuser's connection that used none; the coordinator's user
mappings hold the password. Everything a user does runs as ``app``; the DBA's part
(extensions, foreign servers, user mappings, add_shard) runs as ``postgres``.

Search results are compared with a single server holding the same rows, scanned exactly (no
index). The shards answer through their HNSW indexes, which are exact on this data: 8
dimensions, about 1,000 rows a shard, m = 32, ef_construction = 128 (checked against numpy
below). HNSW is approximate in general; on other data the sharded and the single-server
answers are each as good as their indexes.
"""

import pathlib
import time

import numpy as np
import psycopg
import pytest
from pytest_postgresql import factories

from conftest import APP_ROLE, HERE
from data import fashion_sample, photo

SHARDS = ("shard1", "shard2", "shard3")
SHARD_DB = "pgvision_shard"
COORD_DB = "pgvision_coord"
SECRET = "app-on-the-shards"
ITERATIVE = "-c hnsw.iterative_scan=strict_order"


def _shard_server():
    return factories.postgresql_proc(
        executable=str(HERE / "pg_ctl_as_postgres"),
        host="127.0.0.1",
        port=None,
        postgres_options="-c max_connections=40 -c shared_buffers=48MB -c fsync=off",
    )


shard1_proc = _shard_server()
shard2_proc = _shard_server()
shard3_proc = _shard_server()


def dsn(proc, dbname, user="postgres"):
    return f"host={proc.host} port={proc.port} user={user} dbname={dbname}"


def prepare_shard(proc):
    """pgvision in SHARD_DB, and the role app, which must log in with its password."""
    hba = pathlib.Path(proc.datadir) / "pg_hba.conf"
    rule = f"host all {APP_ROLE} 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if not text.startswith(rule):
        hba.write_text(rule + text)  # the first matching line wins
    with psycopg.connect(dsn(proc, "postgres"), autocommit=True) as c:
        c.execute("SELECT pg_reload_conf()")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
            c.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        c.execute(f"ALTER ROLE {APP_ROLE} PASSWORD '{SECRET}'")
        c.execute(f"DROP DATABASE IF EXISTS {SHARD_DB}")
        c.execute(f"CREATE DATABASE {SHARD_DB}")
    with psycopg.connect(dsn(proc, SHARD_DB), autocommit=True) as c:
        c.execute("CREATE EXTENSION pgvision CASCADE")
        c.execute(f"GRANT CREATE ON SCHEMA public TO {APP_ROLE}")


@pytest.fixture(scope="module")
def shards(shard1_proc, shard2_proc, shard3_proc):
    procs = [shard1_proc, shard2_proc, shard3_proc]
    for p in procs:
        prepare_shard(p)
    return dict(zip(SHARDS, procs))


@pytest.fixture(scope="module")
def coordinator(server, shards):
    """The DBA's part, in plain DDL: extensions, one foreign server per shard, who may use
    them, and add_shard."""
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {COORD_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {COORD_DB}")
    with psycopg.connect(dsn(server, COORD_DB), autocommit=True) as c:
        c.execute("CREATE EXTENSION pgvision CASCADE")
        c.execute("CREATE EXTENSION postgres_fdw")
        c.execute("CREATE EXTENSION dblink")
        c.execute(f"GRANT CREATE ON SCHEMA public TO {APP_ROLE}")
        for name, proc in shards.items():
            c.execute(f"CREATE SERVER {name} FOREIGN DATA WRAPPER postgres_fdw OPTIONS"
                      f" (host '{proc.host}', port '{proc.port}', dbname '{SHARD_DB}', connect_timeout '5')")
            c.execute(f"GRANT USAGE ON FOREIGN SERVER {name} TO {APP_ROLE}")
            c.execute(f"CREATE USER MAPPING FOR {APP_ROLE} SERVER {name}"
                      f" OPTIONS (user '{APP_ROLE}', password '{SECRET}')")
            c.execute(f"CREATE USER MAPPING FOR postgres SERVER {name} OPTIONS (user 'postgres')")
            c.execute("SELECT pgvision.add_shard(%s)", [name])
    return server


def connect(coordinator, user=APP_ROLE):
    from pgvector.psycopg import register_vector

    c = psycopg.connect(dsn(coordinator, COORD_DB, user), autocommit=True)
    register_vector(c)
    return c


@pytest.fixture
def coord(coordinator):
    """The ordinary role app on the coordinator."""
    with connect(coordinator) as c:
        yield c


@pytest.fixture
def coord_admin(coordinator):
    with connect(coordinator, "postgres") as c:
        yield c


def on_shard(shards, name, *statements, params=()):
    """Runs statements on a shard as postgres; returns the rows of the last."""
    with psycopg.connect(dsn(shards[name], SHARD_DB), autocommit=True) as c:
        for sql in statements[:-1]:
            c.execute(sql)
        return c.execute(statements[-1], params).fetchall()


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value


def set_shard_options(admin, options):
    for name in SHARDS:
        admin.execute(f"ALTER SERVER {name} OPTIONS (SET options '{options}')")


# ---------------------------------------------------------------------------------------
# synthetic vectors: one sharded table, and the same rows on a single server

DIM = 8
N = 3000


def synthetic():
    rng = np.random.default_rng(20261122)
    ids = np.arange(1, N + 1)
    features = rng.normal(size=(N, DIM)).astype(np.float32)
    albums = ids % 20
    classes = np.where(ids % 10 == 0, "rare", "common")
    return ids, albums, classes, features


IDS, ALBUM, CLASS, FEATURES = synthetic()


def copy_rows(c, table):
    with c.cursor() as cur, cur.copy(f"COPY {table} (id, album, class, feature) FROM STDIN") as cp:
        for i, a, k, f in zip(IDS, ALBUM, CLASS, FEATURES):
            cp.write_row([int(i), int(a), str(k), "[" + ",".join(map(repr, f.tolist())) + "]"])


@pytest.fixture(scope="module")
def items(coordinator):
    with connect(coordinator) as c:
        c.execute(f"CREATE TABLE items (id bigint NOT NULL, album int, class text, feature vector({DIM}))"
                  " PARTITION BY HASH (id)")
        c.execute("SELECT * FROM pgvision.create_sharded_table('items', auto_embed => false,"
                  " metric => 'l2', m => 32, ef_construction => 128)")
        copy_rows(c, "items")
        # statistics, as autovacuum would gather them a minute later: the coordinator plans
        # with the shards' estimates (use_remote_estimate)
        for name in SHARDS:
            c.execute("SELECT dblink_exec(%s, 'ANALYZE public.items')", [name])
        # the single server: the same rows in a table of the coordinator, scanned exactly
        c.execute(f"CREATE TABLE items_single (id bigint PRIMARY KEY, album int, class text, feature vector({DIM}))")
        copy_rows(c, "items_single")
    return "items"


def l2(i):
    return np.linalg.norm(FEATURES.astype(np.float64) - FEATURES[i - 1].astype(np.float64), axis=1)


# ---------------------------------------------------------------------------------------
# the shard registry

def test_add_shard_sets_the_options_a_shard_needs(coord):
    assert [r[0] for r in coord.execute("SELECT server FROM pgvision.shards ORDER BY 1")] == list(SHARDS)
    for name in SHARDS:
        opts = dict(o.split("=", 1) for o in coord.execute(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s", [name]).fetchone()[0])
        assert opts["extensions"] == "vector, pgvision"
        assert opts["async_capable"] == "true" and opts["parallel_commit"] == "true"
        assert opts["fdw_tuple_cost"] == "0.2"
        assert opts["options"] == ITERATIVE


def test_add_shard_keeps_options_and_completes_the_extension_list(coord_admin):
    coord_admin.execute("CREATE SERVER half FOREIGN DATA WRAPPER postgres_fdw OPTIONS"
                        " (extensions 'vector', options '-c work_mem=8MB', async_capable 'false')")
    try:
        coord_admin.execute("SELECT pgvision.add_shard('half')")
        opts = dict(o.split("=", 1) for o in coord_admin.execute(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'half'").fetchone()[0])
        assert sorted(e.strip() for e in opts["extensions"].split(",")) == ["pgvision", "vector"]
        assert opts["options"] == "-c work_mem=8MB " + ITERATIVE
        assert opts["async_capable"] == "false"  # the owner's explicit choice stays
    finally:
        coord_admin.execute("DELETE FROM pgvision.shards WHERE server = 'half'")
        coord_admin.execute("DROP SERVER half")


def test_add_shard_asks_the_owner_for_missing_options(coord_admin, coordinator):
    coord_admin.execute("CREATE SERVER bare FOREIGN DATA WRAPPER postgres_fdw")
    if not coord_admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'shard_curator'").fetchone():
        coord_admin.execute("CREATE ROLE shard_curator LOGIN")
    coord_admin.execute("GRANT pgvision_admin TO shard_curator")
    try:
        with connect(coordinator, "shard_curator") as curator:
            e = error_of(curator, "SELECT pgvision.add_shard('bare')")
        assert e.sqlstate == "42501" and 'lacks options a pgvision shard needs' in str(e)
        assert "ALTER SERVER bare OPTIONS (ADD extensions 'vector, pgvision'" in e.diag.message_hint
    finally:
        coord_admin.execute("DROP SERVER bare")


def test_add_shard_refuses(coord, coord_admin):
    coord_admin.execute("CREATE SERVER not_pg FOREIGN DATA WRAPPER dblink_fdw")
    try:
        e = error_of(coord_admin, "SELECT pgvision.add_shard('not_pg')")
        assert e.sqlstate == "42809" and "uses dblink_fdw, not postgres_fdw" in str(e)
    finally:
        coord_admin.execute("DROP SERVER not_pg")
    e = error_of(coord_admin, "SELECT pgvision.add_shard('nowhere')")
    assert e.sqlstate == "42704" and 'server "nowhere" does not exist' in str(e)
    assert "CREATE SERVER nowhere FOREIGN DATA WRAPPER postgres_fdw" in e.diag.message_hint
    # registering a shard decides where every role's pipelines run
    assert error_of(coord, "SELECT pgvision.add_shard('shard1')").sqlstate == "42501"
    assert error_of(coord, "SELECT pgvision.drop_shard('shard1')").sqlstate == "42501"
    e = error_of(coord_admin, "SELECT pgvision.drop_shard('nowhere')")
    assert e.sqlstate == "42704" and "is not a pgvision shard" in str(e)


def test_shard_status_reports_every_shard(coord):
    version = coord.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgvision'").fetchone()[0]
    rows = coord.execute("SELECT * FROM pgvision.shard_status()").fetchall()
    assert rows == [(name, True, version, "public", None) for name in SHARDS]


def test_sharding_needs_postgres_fdw_and_dblink(conn):
    # conftest's database has pgvision but neither extension: pgvision does not require them
    conn.execute("CREATE TEMP TABLE p (id int NOT NULL, image bytea, feature vector(1280)) PARTITION BY HASH (id)")
    e = error_of(conn, "SELECT * FROM pgvision.create_sharded_table('p')")
    assert e.sqlstate == "55000" and "pgvision sharding needs the postgres_fdw extension" in str(e)
    assert "CREATE EXTENSION postgres_fdw" in e.diag.message_hint
    e = error_of(conn, "SELECT * FROM pgvision.shard_status()")
    assert e.sqlstate == "55000" and "CREATE EXTENSION dblink" in e.diag.message_hint


# ---------------------------------------------------------------------------------------
# create_sharded_table

def test_create_sharded_table_builds_each_shard(coord, shards):
    coord.execute("CREATE TABLE gallery (id bigint NOT NULL, title text COLLATE \"C\", image bytea,"
                  " feature vector(1280)) PARTITION BY HASH (id)")
    rows = coord.execute("SELECT shard, foreign_table::text, remote_table"
                         " FROM pgvision.create_sharded_table('gallery')").fetchall()
    assert rows == [(s, f"gallery_{s}", "public.gallery") for s in SHARDS]
    for name in SHARDS:
        cols = on_shard(shards, name, "SELECT column_name, data_type, collation_name, is_nullable"
                        " FROM information_schema.columns WHERE table_name = 'gallery' ORDER BY ordinal_position")
        assert cols == [("id", "bigint", None, "NO"), ("title", "text", "C", "YES"),
                        ("image", "bytea", None, "YES"), ("feature", "USER-DEFINED", None, "YES")]
        indexes = [r[0] for r in on_shard(shards, name, "SELECT indexdef FROM pg_indexes WHERE tablename = 'gallery'")]
        assert any("PRIMARY KEY" in i or "gallery_pkey" in i for i in indexes), indexes
        assert any("USING hnsw (feature vector_cosine_ops) WITH (m='32', ef_construction='200')" in i for i in indexes)
        assert on_shard(shards, name, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'gallery'::regclass"
                        " AND NOT tgisinternal") == [("pgvision_auto_embed",)]
        assert on_shard(shards, name, "SELECT tableowner FROM pg_tables WHERE tablename = 'gallery'") == [(APP_ROLE,)]
        opts = coord.execute("SELECT ftoptions FROM pg_foreign_table WHERE ftrelid = %s::regclass",
                             [f"gallery_{name}"]).fetchone()[0]
        assert "use_remote_estimate=true" in opts and "table_name=gallery" in opts
    # the coordinator has no trigger: it never runs the model for a row
    assert coord.execute("SELECT count(*) FROM pg_trigger t JOIN pg_partition_tree('gallery') p"
                         " ON t.tgrelid = p.relid WHERE NOT t.tgisinternal").fetchone()[0] == 0


def test_a_failed_setup_leaves_no_table_behind(coord, shards):
    on_shard(shards, "shard3", "CREATE TABLE public.taken (x int)", "SELECT")
    coord.execute("CREATE TABLE taken (id int NOT NULL, image bytea, feature vector(1280)) PARTITION BY HASH (id)")
    e = error_of(coord, "SELECT * FROM pgvision.create_sharded_table('taken')")
    assert e.sqlstate == "42P07" and 'shard "shard3": relation "taken" already exists' in str(e)
    for name in ("shard1", "shard2"):
        assert on_shard(shards, name, "SELECT to_regclass('public.taken')") == [(None,)]
    assert coord.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'taken'::regclass").fetchone()[0] == 0


CREATE_ERRORS = [
    ("not partitioned", "CREATE TABLE e (id int, image bytea, feature vector(1280))", "SELECT * FROM pgvision.create_sharded_table('e')",
     "42809", "is not partitioned"),
    ("range partitioned", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY RANGE (id)",
     "SELECT * FROM pgvision.create_sharded_table('e')", "0A000", "is not partitioned by hash of one column"),
    ("has partitions", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id);"
     " CREATE TABLE e0 PARTITION OF e FOR VALUES WITH (MODULUS 1, REMAINDER 0)",
     "SELECT * FROM pgvision.create_sharded_table('e')", "55000", "already has partitions"),
    ("unknown shard", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e', ARRAY['shard1', 'nowhere'])", "42704",
     'foreign server "nowhere" is not a pgvision shard'),
    ("repeated shard", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e', ARRAY['shard1', 'shard1'])", "22023", "nor repeat a server"),
    ("no shards", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e', '{}')", "55000", "no shards to place"),
    ("image not bytea", "CREATE TABLE e (id int, image text, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e')", "42804", 'image column "image" is of type text, not bytea'),
    ("unknown metric", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e', metric => 'hamming')", "22023", 'unknown metric "hamming"'),
    ("not the owner", "CREATE TABLE e (id int, image bytea, feature vector(1280)) PARTITION BY HASH (id)",
     "SELECT * FROM pgvision.create_sharded_table('e')", "42501", "must be owner"),
]


@pytest.mark.parametrize("case, ddl, sql, state, words", CREATE_ERRORS, ids=[c[0] for c in CREATE_ERRORS])
def test_create_sharded_table_errors(coord_admin, coordinator, case, ddl, sql, state, words):
    coord_admin.execute("DROP TABLE IF EXISTS e")
    for statement in ddl.split("; "):
        coord_admin.execute(statement)
    if case != "not the owner":
        coord_admin.execute(f"ALTER TABLE e OWNER TO {APP_ROLE}")
    try:
        with connect(coordinator) as c:
            e = error_of(c, sql)
        assert e.sqlstate == state and words in str(e), str(e)
    finally:
        coord_admin.execute("DROP TABLE IF EXISTS e")


# ---------------------------------------------------------------------------------------
# inference next to the data

def test_insert_through_the_coordinator_embeds_on_the_shard(coord):
    sample = fashion_sample(3)  # 30 small PNGs
    coord.execute("CREATE TABLE clothes (id int NOT NULL, class text, image bytea, feature vector(1280))"
                  " PARTITION BY HASH (id)")
    coord.execute("SELECT * FROM pgvision.create_sharded_table('clothes')")
    # This session could not embed a single image: the features come from the shards.
    coord.execute("SET pgvision.max_pixels = 1")
    assert error_of(coord, "SELECT pgvision.embed(%s)", [sample[0][2]]).sqlstate == "54000"
    with coord.cursor() as cur:
        got = [cur.execute("INSERT INTO clothes (id, class, image) VALUES (%s, %s, %s) RETURNING feature",
                           [i, c, img]).fetchone()[0] for i, c, img in sample]
    assert all(f is not None for f in got)
    per_shard = dict(coord.execute("SELECT tableoid::regclass::text, count(feature) FROM clothes GROUP BY 1"))
    assert sorted(per_shard) == [f"clothes_{s}" for s in SHARDS] and sum(per_shard.values()) == len(sample)
    coord.execute("RESET pgvision.max_pixels")
    local = coord.execute("SELECT pgvision.embed_batch(%s)", [[img for _, _, img in sample]]).fetchone()[0]
    assert max(np.abs(a.to_numpy() - b.to_numpy()).max() for a, b in zip(got, local)) < 1e-5


def test_backfill_runs_on_all_shards_at_once(coord):
    sample = fashion_sample(4)  # 40 small PNGs
    coord.execute("CREATE TABLE backlog (id int NOT NULL, image bytea, feature vector(1280)) PARTITION BY HASH (id)")
    coord.execute("SELECT * FROM pgvision.create_sharded_table('backlog', auto_embed => false)")
    with coord.cursor() as cur:
        cur.executemany("INSERT INTO backlog (id, image) VALUES (%s, %s)", [(i, img) for i, _, img in sample])
        cur.execute("INSERT INTO backlog (id, image) VALUES (-1, 'not an image'), (-2, NULL)")
    notices = []
    coord.add_notice_handler(lambda d: notices.append(d.message_primary))
    coord.execute("SET pgvision.max_pixels = 1")  # as above: the coordinator cannot embed
    rows = coord.execute("SELECT * FROM pgvision.embed_shards('backlog', 'image', 'feature', batch_size => 8)").fetchall()
    assert [r[0] for r in rows] == list(SHARDS)
    assert sum(r[1] for r in rows) == len(sample)
    assert sum(r[2] for r in rows) == 1 and sum(r[3] for r in rows) == 1  # the bad one, the NULL one
    assert all(r[1] > 0 and r[4] > 0 for r in rows)
    assert sum(1 for n in notices if n.startswith('shard "')) == 3
    assert coord.execute("SELECT count(*) FILTER (WHERE feature IS NULL) FROM backlog").fetchone()[0] == 2
    # at once: every shard started before any finished
    progress = coord.execute("SELECT shard, rows_done, started, finished"
                             " FROM pgvision.shard_backfill_progress('backlog')").fetchall()
    assert [p[0] for p in progress] == list(SHARDS)
    assert max(p[2] for p in progress) < min(p[3] for p in progress)
    # a second run has nothing left to do (the bad image is remembered)
    again = coord.execute("SELECT sum(rows_embedded) FROM pgvision.embed_shards('backlog', 'image', 'feature')").fetchone()
    assert again == (0,)


EMBED_SHARDS_ERRORS = [
    ("not sharded", "SELECT * FROM pgvision.embed_shards('items_single', 'class', 'feature')", "42809",
     "is not a sharded table"),
    ("batch size", "SELECT * FROM pgvision.embed_shards('items', 'class', 'feature', batch_size => 0)", "22023",
     "batch_size must be at least 1, not 0"),
    ("image column", "SELECT * FROM pgvision.embed_shards('items', 'class', 'feature')", "42804",
     'image column "class" is of type text, not bytea'),
]


@pytest.mark.parametrize("case, sql, state, words", EMBED_SHARDS_ERRORS, ids=[c[0] for c in EMBED_SHARDS_ERRORS])
def test_embed_shards_errors(coord, items, case, sql, state, words):
    e = error_of(coord, sql)
    assert e.sqlstate == state and words in str(e), str(e)


def test_dist_random_runs_on_a_random_shard(coord, shards):
    image = fashion_sample(1)[0][2]
    coord.execute("SET pgvision.max_pixels = 1")  # so it cannot run here
    results = [coord.execute("SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', %s)",
                             [image]).fetchone()[0] for _ in range(12)]
    # Each shard keeps its connection open: its last query shows whether it ran the pipeline.
    used = [name for name in SHARDS if on_shard(
        shards, name, "SELECT 1 FROM pg_stat_activity WHERE usename = %s"
        " AND query LIKE 'SELECT pgvision.pipeline_run(%%'", params=[APP_ROLE])]
    assert len(used) >= 2, used  # one shard for all 12 would happen with probability 3 / 3**12
    coord.execute("RESET pgvision.max_pixels")
    local = coord.execute("SELECT pgvision.pipeline_run('general_feature_extractor', %s)", [image]).fetchone()[0]
    for r in results:
        assert {k: v for k, v in r.items() if k != "feature"} == {k: v for k, v in local.items() if k != "feature"}
        assert np.abs(np.asarray(r["feature"]) - np.asarray(local["feature"])).max() < 1e-5


def test_dist_random_needs_a_usable_shard(coordinator, coord_admin):
    if not coord_admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'unmapped'").fetchone():
        coord_admin.execute("CREATE ROLE unmapped LOGIN")
    with connect(coordinator, "unmapped") as c:
        e = error_of(c, "SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', %s)", [photo("dog")])
    assert e.sqlstate == "42501" and 'no pgvision shard is usable by role unmapped' in str(e)
    assert "CREATE USER MAPPING" in e.diag.message_hint


def test_a_pipeline_error_on_a_shard_names_it(coord):
    e = error_of(coord, "SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', 'not an image')")
    assert e.sqlstate == "22P03" and str(e).startswith('shard "shard')


# ---------------------------------------------------------------------------------------
# search from the coordinator

def explain_notices(admin):
    notices = []
    admin.add_notice_handler(lambda d: notices.append(d.message_primary))
    for s in ["LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
              "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_verbose = on",
              "SET auto_explain.log_level = notice"]:
        admin.execute(s)
    return notices


def test_each_shard_runs_its_own_top_k_and_all_run_at_once(coord_admin, items):
    notices = explain_notices(coord_admin)
    rows = coord_admin.execute("SELECT id FROM pgvision.search_like('items', 7, k => 10, metric => 'l2',"
                               " filter => $$class = 'rare'$$)").fetchall()
    assert len(rows) == 10
    plan = next(n for n in notices if "Remote SQL" in n and "pgvision_distance" in n)
    assert plan.count("Async Foreign Scan on public.items_shard") == 3, plan
    remote = [line.strip() for line in plan.splitlines() if "Remote SQL" in line]
    assert len(remote) == 3
    for line in remote:
        assert "((class = 'rare'))" in line and "((id <> 7::bigint))" in line, line
        assert "ORDER BY (feature OPERATOR(public.<->) '[" in line and line.endswith("ASC NULLS LAST LIMIT 10::bigint")


def test_plain_sql_on_the_parent_merges_shard_by_shard(coord, items):
    # The query as one writes it on a single server: correct, but a Merge Append reads the
    # shards one after another, and without the LIMIT (documented in the README).
    sql = "SELECT id, feature <-> (SELECT feature FROM items_single WHERE id = 7) AS d FROM items ORDER BY 2 LIMIT 10"
    plan = "\n".join(r[0] for r in coord.execute("EXPLAIN VERBOSE " + sql))
    assert "Merge Append" in plan and "Async" not in plan
    remote = [line for line in plan.splitlines() if "Remote SQL" in line and "ORDER BY" in line]
    assert len(remote) == 3 and not any("LIMIT" in line for line in remote), plan
    got = [r[0] for r in coord.execute(sql)]
    assert got == [int(i) for i in np.argsort(l2(7))[:10] + 1]


FORMS = [
    ("l2", "k => 10"),
    ("k above ef_search", "k => 60"),
    ("cosine", "k => 10, metric => 'cosine'"),
    ("ip", "k => 10, metric => 'ip'"),
    ("filter", "k => 10, filter => $$class = 'rare'$$"),
    ("filter with a subquery", "k => 5, filter => $$album IN (SELECT g FROM generate_series(1, 3) g)$$"),
    ("group_by", "k => 5, group_by => 'album'"),
    ("max_distance", "k => 50, max_distance => 2.0"),
    ("min_similarity", "k => 50, metric => 'cosine', min_similarity => 0.8"),
    ("expand", "k => 10, expand => 3"),
]


@pytest.mark.parametrize("case, args", FORMS, ids=[f[0] for f in FORMS])
def test_sharded_search_equals_one_server(coord, items, case, args):
    for key in (7, 1234, 2999):
        sharded = coord.execute(f"SELECT query_no, rank, id, distance, similarity, item"
                                f" FROM pgvision.search_like('items', %s, {args})", [key]).fetchall()
        single = coord.execute(f"SELECT query_no, rank, id, distance, similarity, item"
                               f" FROM pgvision.search_like('items_single', %s, {args})", [key]).fetchall()
        assert sharded == single and sharded, (key, sharded[:3], single[:3])


def test_sharded_search_is_exact_on_this_data(coord, items):
    for key in (7, 1234, 2999):
        exact = [int(i) + 1 for i in np.argsort(l2(key)) if i + 1 != key]
        for k in (10, 60):
            rows = coord.execute("SELECT id, distance FROM pgvision.search_like('items', %s, k => %s, metric => 'l2')", [key, k]).fetchall()
            assert [int(r[0]) for r in rows] == exact[:k]
            assert np.allclose([r[1] for r in rows], l2(key)[np.asarray(exact[:k]) - 1], atol=1e-5)


def test_k_above_ef_search_needs_iterative_scans_on_the_shards(coord, coord_admin, items, shards):
    # Make each shard answer from its index however many rows are asked for (at ~1,000 rows
    # a shard its planner would sort the table for 150), to show what the index gives.
    coord.execute("SET jit = off")  # the shards' disabled seq scans make every cost look huge
    try:
        set_shard_options(coord_admin, ITERATIVE + " -c enable_seqscan=off")
        rows = coord.execute("SELECT id FROM pgvision.search_like('items', 7, k => 150, metric => 'l2')").fetchall()
        assert [int(r[0]) for r in rows] == [int(i) + 1 for i in np.argsort(l2(7)) if i + 1 != 7][:150]
        # Without iterative scans each shard's index stops at hnsw.ef_search (40) rows.
        set_shard_options(coord_admin, "-c hnsw.iterative_scan=off -c enable_seqscan=off")
        # (at most 3 x 40 rows: the query row itself may be one of a shard's 40)
        assert len(coord.execute("SELECT id FROM pgvision.search_like('items', 7, k => 150, metric => 'l2')").fetchall()) <= 120
    finally:
        set_shard_options(coord_admin, ITERATIVE)
    plan = on_shard(shards, "shard1", "SET enable_seqscan = off", "EXPLAIN SELECT id FROM items"
                    " ORDER BY feature <-> '[0,0,0,0,0,0,0,0]' LIMIT 150")
    assert "Index Scan using items_feature_hnsw_l2_idx" in str(plan)


def test_row_level_security_of_the_parent_holds(coord, items):
    coord.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
    coord.execute("ALTER TABLE items FORCE ROW LEVEL SECURITY")
    coord.execute("CREATE POLICY common_only ON items USING (class = 'common')")
    try:
        rows = coord.execute("SELECT item ->> 'class' FROM pgvision.search_like('items', 7, k => 30)").fetchall()
        assert len(rows) == 30 and {r[0] for r in rows} == {"common"}
    finally:
        coord.execute("DROP POLICY common_only ON items")
        coord.execute("ALTER TABLE items NO FORCE ROW LEVEL SECURITY")
        coord.execute("ALTER TABLE items DISABLE ROW LEVEL SECURITY")


def test_the_filter_runs_with_the_callers_privileges(coord, items):
    e = error_of(coord, "SELECT * FROM pgvision.search_like('items', 7, filter => 'id IN (SELECT 1 FROM pg_authid)')")
    assert e.sqlstate == "42501" and "pg_authid" in str(e)


@pytest.fixture(scope="module")
def photos(coordinator):
    names = ["dog", "eagle", "giraffe", "horses", "kite", "person"]
    with connect(coordinator) as c:
        c.execute("CREATE TABLE photos (id int NOT NULL, name text, image bytea, feature vector(1280))"
                  " PARTITION BY HASH (id)")
        c.execute("SELECT * FROM pgvision.create_sharded_table('photos')")
        c.execute("CREATE TABLE photos_single (id int PRIMARY KEY, name text, image bytea, feature vector(1280))")
        for i, name in enumerate(names, 1):
            c.execute("INSERT INTO photos (id, name, image) VALUES (%s, %s, %s)", [i, name, photo(name)])
        c.execute("INSERT INTO photos_single SELECT * FROM photos")
    return names


def test_search_by_image_and_batch_through_the_coordinator(coord, photos):
    for sql in ["SELECT rank, id, item FROM pgvision.search(%s, %s, k => 3)",
                "SELECT rank, id, item FROM pgvision.search(%s, %s, k => 3, metric => 'cosine', group_by => 'name')"]:
        sharded = coord.execute(sql, ["photos", photo("eagle")]).fetchall()
        assert sharded == coord.execute(sql, ["photos_single", photo("eagle")]).fetchall()
        assert sharded[0] == (1, "2", {"id": 2, "name": "eagle"})
    sql = "SELECT query_no, rank, id, round(distance::numeric, 3) FROM pgvision.search_batch(%s, %s, k => 2)"
    images = [photo("horses"), None, photo("kite")]
    sharded = coord.execute(sql, ["photos", images]).fetchall()
    assert sharded == coord.execute(sql, ["photos_single", images]).fetchall()
    assert [(q, r) for q, r, _, _ in sharded] == [(1, 1), (1, 2), (3, 1), (3, 2)]


def readme_block(starts):
    """The README's SQL block that starts with ``starts``, as the README shows it."""
    text = (HERE.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```sql\n")[1:]]
    return next(b for b in blocks if b.startswith(starts))


def test_the_readme_query_with_one_branch_per_shard(coord_admin, photos):
    sql = readme_block("WITH q AS MATERIALIZED").replace("images_shard", "photos_shard").replace("class", "name")
    plan = "\n".join(r[0] for r in coord_admin.execute("EXPLAIN VERBOSE " + sql))
    assert plan.count("Async Foreign Scan on public.photos_shard") == 3, plan
    assert plan.count("ASC NULLS LAST LIMIT 10::bigint") == 3, plan
    rows = coord_admin.execute(sql).fetchall()
    assert len(rows) == len(photos) and rows[0][:2] == (1, "dog") and rows[0][2] < 1e-4
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)


# ---------------------------------------------------------------------------------------
# a shard goes down (last: the module's other tests need all three)

@pytest.fixture(scope="class")
def shard3_down(coordinator, shards, items):
    with connect(coordinator) as c:
        c.execute("CREATE TABLE late (id int NOT NULL, image bytea, feature vector(1280)) PARTITION BY HASH (id)")
        c.execute("SELECT * FROM pgvision.create_sharded_table('late', auto_embed => false)")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO late (id, image) VALUES (%s, %s)",
                            [(i, img) for i, _, img in fashion_sample(1)])
        on3 = {r[0] for r in c.execute("SELECT id FROM late_shard3")}
        items3 = {r[0] for r in c.execute("SELECT id FROM items_shard3")}
    assert 0 < len(on3) < 10
    shards["shard3"].stop()
    try:
        yield on3, items3
    finally:
        shards["shard3"].start()


class TestShardDown:
    def test_search_fails_naming_the_shard(self, coord, shard3_down):
        for sql in ["SELECT * FROM pgvision.search_like('items', 7, k => 5)",
                    "SELECT id FROM items ORDER BY feature <-> '[0,0,0,0,0,0,0,0]' LIMIT 5"]:
            e = error_of(coord, sql)
            assert e.sqlstate == "08001" and 'could not connect to server "shard3"' in str(e)

    def test_partial_results_only_when_asked(self, coord, shard3_down):
        _, items_on3 = shard3_down
        warnings = []
        coord.add_notice_handler(lambda d: warnings.append((d.severity_nonlocalized, d.message_primary)))
        coord.execute("SET pgvision.partial_results = on")
        rows = coord.execute("SELECT id FROM pgvision.search_like('items', 7, k => 10, metric => 'l2')").fetchall()
        left = [int(i) + 1 for i in np.argsort(l2(7)) if i + 1 != 7 and i + 1 not in items_on3]
        assert [int(r[0]) for r in rows] == left[:10]
        assert [m for s, m in warnings if s == "WARNING"] == [
            'shard "shard3" is unreachable: the results leave out its rows (public.items_shard3)']

    def test_backfill_fails_naming_the_shard_after_the_others_finish(self, coord, shard3_down):
        e = error_of(coord, "SELECT * FROM pgvision.embed_shards('late', 'image', 'feature')")
        assert e.sqlstate == "08001" and "backfill of public.late failed on 1 of 3 shards" in str(e)
        assert e.diag.message_detail.startswith('shard "shard3": could not establish connection')
        # the other shards finished their rows
        assert coord.execute("SELECT count(*), count(feature) FROM (SELECT feature FROM late_shard1"
                             " UNION ALL SELECT feature FROM late_shard2) s").fetchone() == (10 - len(shard3_down[0]),) * 2

    def test_dist_random_passes_over_the_shard(self, coord, shard3_down):
        image = fashion_sample(1)[0][2]
        for _ in range(6):
            assert coord.execute("SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', %s)"
                                 " ->> 'dim'", [image]).fetchone()[0] == "1280"

    def test_shard_status_shows_it(self, coord, shard3_down):
        rows = {r[0]: r for r in coord.execute("SELECT * FROM pgvision.shard_status()")}
        assert rows["shard1"][1] and rows["shard2"][1]
        assert rows["shard3"][1] is False and "could not establish connection" in rows["shard3"][4]


def test_search_works_again_once_the_shard_is_back(coord, items):
    deadline = time.monotonic() + 30
    while True:
        try:
            rows = coord.execute("SELECT id FROM pgvision.search_like('items', 7, k => 5, metric => 'l2')").fetchall()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert [int(r[0]) for r in rows] == [int(i) + 1 for i in np.argsort(l2(7)) if i + 1 != 7][:5]

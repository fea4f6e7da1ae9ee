"""pgvision's own SQL against hostile catalogs and hostile callers: trojan operators, functions
and types planted in public, forged backfill bookkeeping, a backfill inside a transaction
block, the bookkeeping of dropped tables, and parameters that would silently do the wrong
thing.
"""

import psycopg
import pytest
from psycopg import sql

from conftest import APP_ROLE, dsn
from data import fashion_sample

IMAGES = [png for _, _, png in fashion_sample(1, split="test")][:4]
TROJAN_DB = "pv_trojans"
MALLORY = "pv_mallory"

# What a role with CREATE on public plants, each with the exact argument types pgvision's
# dynamic SQL could use, so that it is the best match wherever public comes first.
# (operator, left type, right type, result type); left None for a prefix operator
COMPARISONS = ["=", "<>", "<", ">", "<=", ">="]
COMPARED = ["text", "varchar", "int8", "int4", "int2", "name", "regclass", "oid", "float8",
            "numeric", "timestamptz", "bool", "bytea", "ext.citext", "jsonb"]
OPERATORS = (
    [(op, t, t, "bool") for op in COMPARISONS for t in COMPARED]
    + [(op, "ext.vector", "ext.vector", "float8") for op in ("<->", "<=>", "<#>")]
    + [("||", "text", "text", "text"), ("||", "jsonb", "jsonb", "jsonb"),
       ("~~", "text", "text", "bool"), ("~~", "varchar", "varchar", "bool"),
       ("-", "timestamptz", "timestamptz", "interval"), ("-", "float8", "float8", "float8"),
       ("-", None, "float8", "float8"), ("+", "int4", "int4", "int4"), ("+", "int8", "int8", "int8"),
       ("*", "int8", "int8", "int8"), ("/", "int8", "int8", "int8"), ("/", "float8", "float8", "float8"),
       ("->>", "jsonb", "text", "text"), ("?", "jsonb", "text", "bool"), ("<@", "anyarray", "anyarray", "bool"),
       ("+", "float8", "float8", "float8"), ("*", "float8", "float8", "float8"),
       ("<~>", "bit", "bit", "float8")]
)
# (name, argument types, result): functions that shadow pg_catalog's when called unqualified
FUNCTIONS = [
    ("unnest", ["text[]"], "SETOF text"), ("unnest", ["bytea[]"], "SETOF bytea"),
    ("unnest", ["varchar[]"], "SETOF varchar"), ("unnest", ["int8[]"], "SETOF int8"),
    ("format", ["text"], "text"), ("format", ["text", "text"], "text"),
    ("current_setting", ["text"], "text"), ("set_config", ["text", "text", "bool"], "text"),
    ("array_length", ["text[]", "int4"], "int4"), ("cardinality", ["text[]"], "int4"),
    ("lower", ["text"], "text"), ("round", ["numeric", "int4"], "numeric"),
    ("to_jsonb", ["text"], "jsonb"), ("pg_backend_pid", [], "int4"), ("clock_timestamp", [], "timestamptz"),
    ("has_column_privilege", ["regclass", "text", "text"], "bool"),
    ("has_table_privilege", ["regclass", "text"], "bool"),
    ("sha256", ["bytea"], "bytea"), ("unnest", ["float8[]"], "SETOF float8"),
]
# aggregates: (name, argument type, state type)
AGGREGATES = [("count", "*", "int8"), ("array_agg", "text", "text[]"), ("array_agg", "bytea", "bytea[]"),
              ("min", "text", "text"), ("max", "int4", "int4"), ("string_agg", "text, text", "text"),
              ("max", "float8", "float8"), ("min", "float8", "float8"), ("array_agg", "float8", "float8[]")]
# types (domains over the real ones, whose CHECK runs the trojan)
TYPES = ["text", "varchar", "int8", "int4", "float8", "bytea", "name", "regclass", "bool", "jsonb",
         "numeric", "timestamptz", "interval", "vector", "halfvec", "citext"]
TYPE_BASES = {"vector": "ext.vector", "halfvec": "ext.halfvec", "citext": "ext.citext"}


def plant(c):
    """Plants every trojan in public as the connection's role; each raises WARNING 'trojan: ...'."""
    c.execute("SET search_path = pg_catalog")
    for i, (op, left, right, result) in enumerate(OPERATORS):
        args = (f"a {left}, " if left else "") + f"b {right}"
        real = (f"a OPERATOR(pg_catalog.{op}) b" if left else f"OPERATOR(pg_catalog.{op}) b")
        if op in ("<->", "<=>", "<#>", "<~>"):
            real = f"a OPERATOR(ext.{op}) b"
        if left == "anyarray":
            args, result = "a anyarray, b anyarray", "bool"
        label = f"{op}({left}, {right})"
        c.execute(f"""CREATE FUNCTION public.trojan_op_{i}({args}) RETURNS {result}
                      LANGUAGE plpgsql AS $$ BEGIN RAISE WARNING 'trojan: %', {psycopg.sql.quote(label)};
                      RETURN {real}; END $$""")
        sides = (f"LEFTARG = {left}, " if left else "") + f"RIGHTARG = {right}"
        c.execute(f"CREATE OPERATOR public.{op} ({sides}, FUNCTION = public.trojan_op_{i})")
    for i, (name, args, result) in enumerate(FUNCTIONS):
        params = ", ".join(f"a{j} {t}" for j, t in enumerate(args))
        call = ", ".join(f"a{j}" for j in range(len(args)))
        ret = (f"RETURN QUERY SELECT * FROM pg_catalog.{name}({call})" if result.startswith("SETOF")
               else f"RETURN pg_catalog.{name}({call})")
        label = f"{name}({', '.join(args)})"
        c.execute(f"""CREATE FUNCTION public.{name}({params}) RETURNS {result}
                      LANGUAGE plpgsql AS $$ BEGIN RAISE WARNING 'trojan: %', {psycopg.sql.quote(label)};
                      {ret}; END $$""")
    for i, (name, arg, state) in enumerate(AGGREGATES):
        label = f"{name}({arg})"
        sargs = f"s {state}" + ("" if arg == "*" else ", " + ", ".join(
            f"x{j} {t.strip()}" for j, t in enumerate(arg.split(","))))
        c.execute(f"""CREATE FUNCTION public.trojan_agg_{i}({sargs}) RETURNS {state}
                      LANGUAGE plpgsql AS $$ BEGIN RAISE WARNING 'trojan: %', {psycopg.sql.quote(label)};
                      RETURN s; END $$""")
        c.execute(f"CREATE AGGREGATE public.{name}({arg}) (SFUNC = public.trojan_agg_{i}, STYPE = {state})")
    c.execute("""CREATE FUNCTION public.trojan_check(what text) RETURNS bool LANGUAGE plpgsql
                 AS $$ BEGIN RAISE WARNING 'trojan: type %', what; RETURN true; END $$""")
    for t in TYPES:
        base = TYPE_BASES.get(t, f"pg_catalog.{t}")
        c.execute(f"CREATE DOMAIN public.{t} AS {base} CHECK (public.trojan_check({psycopg.sql.quote(t)}))")


@pytest.fixture(scope="module")
def trojans(server):
    """A database whose public schema is full of trojans planted by an ordinary role, with
    pgvector and citext in schema ext and test tables owned by the superuser."""
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {TROJAN_DB}")
        c.execute(f"CREATE DATABASE {TROJAN_DB}")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [MALLORY]).fetchone():
            c.execute(f"CREATE ROLE {MALLORY} LOGIN")
    with psycopg.connect(dsn(server, TROJAN_DB), autocommit=True) as c:
        c.execute("CREATE SCHEMA ext")
        c.execute("CREATE EXTENSION vector SCHEMA ext")
        c.execute("CREATE EXTENSION citext SCHEMA ext")
        c.execute("CREATE EXTENSION plpython3u")
        c.execute("CREATE EXTENSION pgvision")
        c.execute("CREATE EXTENSION dblink SCHEMA ext")
        c.execute("CREATE EXTENSION postgres_fdw SCHEMA ext")
        c.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {MALLORY}")
        c.execute("GRANT USAGE ON SCHEMA ext TO PUBLIC")
        for key in ("bigint", "text", "varchar", "ext.citext"):
            name = "t_" + key.replace("ext.", "")
            c.execute(f"CREATE TABLE public.{name} (id {key} PRIMARY KEY, image bytea,"
                      " feature ext.vector(1280), note text)")
            rows = [(str(i) if key != "bigint" else i, img) for i, img in enumerate(IMAGES + [b"junk", None], 1)]
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO public.{name} (id, image) VALUES (%s, %s)", rows)
        c.execute("CREATE TABLE public.t_auto (id bigint PRIMARY KEY, image bytea, feature ext.vector(1280),"
                  " album int)")
        c.execute("CREATE TABLE public.t_shard (id bigint NOT NULL, image bytea, feature ext.vector(1280))"
                  " PARTITION BY HASH (id)")
        # find_copies and find_duplicates read a hash column too; a copy of the first image
        # makes an exact duplicate
        c.execute("CREATE TABLE public.t_hash (id text PRIMARY KEY, image bytea, feature ext.vector(1280),"
                  " phash bit(64))")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO public.t_hash VALUES (%s, %s, pgvision.embed(%s), pgvision.phash(%s))",
                            [(str(i), img, img, img) for i, img in enumerate(IMAGES + IMAGES[:1])])
        c.execute("CREATE INDEX ON public.t_hash USING hnsw (phash ext.bit_hamming_ops)")
        # train_projection learns from at least 10 rows
        c.execute("CREATE TABLE public.t_many (id bigint PRIMARY KEY, image bytea)")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO public.t_many VALUES (%s, %s)", list(enumerate(IMAGES * 3, 1)))
    with psycopg.connect(dsn(server, TROJAN_DB, user=MALLORY), autocommit=True) as c:
        plant(c)
    yield server
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {TROJAN_DB} WITH (FORCE)")


@pytest.fixture
def victim(trojans):
    """A superuser whose search_path puts public (and its trojans) before pg_catalog; the
    trojans' warnings are collected."""
    with psycopg.connect(dsn(trojans, TROJAN_DB), autocommit=True) as c:
        warnings = []
        c.add_notice_handler(lambda d: warnings.append(d.message_primary)
                             if d.message_primary.startswith("trojan") else None)
        c.execute("SET search_path = public, pg_catalog")
        c.warnings = warnings
        yield c


def test_trojans_are_planted_and_do_run(victim):
    """The planted trojans win where a name is not qualified: the test sees them."""
    victim.execute("SELECT 'a'::varchar = 'b'::varchar, 'x'::text, count(*) FROM pg_catalog.pg_am")
    assert any("=(varchar, varchar)" in w for w in victim.warnings)
    assert any("type text" in w for w in victim.warnings)
    assert any("count(*)" in w for w in victim.warnings)


TROJAN_CASES = [
    ("embed_table bigint key", "CALL pgvision.embed_table('public.t_bigint', 'image', 'feature', batch_size => 2)"),
    ("embed_table text key", "CALL pgvision.embed_table('public.t_text', 'image', 'feature', batch_size => 2)"),
    ("embed_table varchar key", "CALL pgvision.embed_table('public.t_varchar', 'image', 'feature', batch_size => 2)"),
    ("embed_table citext key", "CALL pgvision.embed_table('public.t_citext', 'image', 'feature', batch_size => 2)"),
    ("embed_table again", "CALL pgvision.embed_table('public.t_varchar', 'image', 'feature')"),
    ("embed_table retry_errors", "CALL pgvision.embed_table('public.t_varchar', 'image', 'feature', retry_errors => true)"),
    ("embed_table key_column", "CALL pgvision.embed_table('public.t_text', 'image', 'feature', key_column => 'id', retry_errors => true)"),
    ("enable_auto_embed", "SELECT pgvision.enable_auto_embed('public.t_auto', 'image', 'feature')"),
    ("auto embed insert", "INSERT INTO public.t_auto (id, image, album) VALUES (1, %(img)s, 1)"),
    ("auto embed insert 2", "INSERT INTO public.t_auto (id, image, album) VALUES (2, %(img2)s, 2)"),
    ("disable_auto_embed", "SELECT pgvision.disable_auto_embed('public.t_auto')"),
    ("create_index", "SELECT pgvision.create_index('public.t_bigint', 'feature')"),
    ("create_index l2 ivfflat", "SELECT pgvision.create_index('public.t_text', 'feature', metric => 'l2', method => 'ivfflat')"),
    ("create_index halfvec ip", "SELECT pgvision.create_index('public.t_varchar', 'feature', metric => 'ip', halfvec => true)"),
    ("check_index", "SELECT * FROM pgvision.check_index('public.t_bigint_feature_hnsw_cosine_idx')"),
    ("check_index halfvec ip", "SELECT * FROM pgvision.check_index('public.t_varchar_feature_hnsw_ip_half_idx', sample => 4)"),
    ("create_ann_index", "SELECT pgvision.create_ann_index('public.t_citext', 'feature', 'dim = 1280, hnsw_m = 8, distancemeasure = L2')"),
    ("search", "SELECT * FROM pgvision.search('public.t_bigint', %(img)s)"),
    ("search l2 thresholds", "SELECT * FROM pgvision.search('public.t_text', %(img)s, k => 2, metric => 'l2', max_distance => 100)"),
    ("search cosine similarity", "SELECT * FROM pgvision.search('public.t_bigint', %(img)s, metric => 'cosine', min_similarity => 0.1, max_distance => 1.5)"),
    ("search filter group_by", "SELECT * FROM pgvision.search('public.t_auto', %(img)s, filter => 'album IS NOT NULL', group_by => 'album')"),
    ("search expand", "SELECT * FROM pgvision.search('public.t_varchar', %(img)s, expand => 2)"),
    ("search_batch", "SELECT * FROM pgvision.search_batch('public.t_bigint', %(imgs)s, k => 2, group_by => 'note', expand => 1)"),
    ("search_like bigint", "SELECT * FROM pgvision.search_like('public.t_bigint', 1::bigint, k => 2)"),
    ("search_like text", "SELECT * FROM pgvision.search_like('public.t_text', '1', k => 2, metric => 'ip', min_similarity => -100)"),
    ("search_like varchar", "SELECT * FROM pgvision.search_like('public.t_varchar', '2', group_by => 'note', expand => 2)"),
    ("search_like citext", "SELECT * FROM pgvision.search_like('public.t_citext', '3', filter => 'note IS NULL')"),
    ("search_vector", "SELECT * FROM pgvision.search_vector('public.t_bigint', (SELECT feature FROM public.t_bigint WHERE id = 1), k => 2, metric => 'l2')"),
    ("search_rows", "SELECT * FROM pgvision.search_rows(NULL::public.t_varchar, %(img)s, k => 2)"),
    ("find_copies", "SELECT * FROM pgvision.find_copies('public.t_hash', %(img)s, k => 3)"),
    ("find_copies without hashes", "SELECT * FROM pgvision.find_copies('public.t_bigint', %(img)s, k => 3)"),
    ("find_duplicates", "SELECT * FROM pgvision.find_duplicates('public.t_hash')"),
    ("find_duplicates varchar key", "SELECT * FROM pgvision.find_duplicates('public.t_varchar', similar_distance => 0.5)"),
    ("phash thumbnail data_url", "SELECT pgvision.phash(%(img)s), pgvision.dhash(%(img)s), pgvision.thumbnail(%(img)s), pgvision.data_url(%(img)s, 64)"),
    ("create_sharded_table", "SELECT * FROM pgvision.create_sharded_table('public.t_shard')"),
    ("embed_shards", "SELECT * FROM pgvision.embed_shards('public.t_shard', 'image', 'feature')"),
    ("shard_backfill_progress", "SELECT * FROM pgvision.shard_backfill_progress('public.t_shard')"),
    ("shard_status", "SELECT * FROM pgvision.shard_status()"),
    ("query_vector", "SELECT pgvision.query_vector('public.t_bigint', 'feature', %(img)s)"),
    ("evaluate", "SELECT * FROM pgvision.evaluate('public.t_auto', 'album', k => 1, queries => 2)"),
    ("train_projection", "SELECT pgvision.train_projection('efficientnet_lite0', 'trojan_pca', 'public.t_many', 'image', dims => 2)"),
    ("quantize_model", "SELECT pgvision.quantize_model('efficientnet_lite0', 'trojan_int8',"
                       " 'SELECT h.image FROM public.t_hash h, pg_catalog.generate_series(1, 2) g')"),
    ("switch_model", "CALL pgvision.switch_model('public.t_hash', 'feature', 'efficientnet_lite0_int8')"),
    ("set_default_model", "SELECT pgvision.set_default_model('efficientnet_lite0')"),
    ("set_default_model back", "SELECT pgvision.set_default_model('efficientnet_lite0_normalized')"),
]


@pytest.mark.parametrize("case, statement", TROJAN_CASES, ids=[c[0] for c in TROJAN_CASES])
def test_no_trojan_runs_for_a_superuser_with_public_first(victim, case, statement):
    # the statements pass images as typed parameters: nothing in them is looked up by name
    params = {"img": IMAGES[0], "img2": IMAGES[1], "imgs": IMAGES[:2]}
    try:
        victim.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
    except psycopg.Error as e:
        # the sharded functions fail cleanly here: no shards
        assert case.startswith(("create_sharded", "embed_shards", "shard_")), e
    assert victim.warnings == [], victim.warnings


def test_the_backfills_under_trojans_did_their_work(trojans):
    with psycopg.connect(dsn(trojans, TROJAN_DB), autocommit=True) as c:
        for name in ("t_bigint", "t_text", "t_varchar", "t_citext"):
            done = c.execute(f"SELECT count(feature), count(*) FROM public.{name}").fetchone()
            assert done == (len(IMAGES), len(IMAGES) + 2), name
            assert c.execute("SELECT key FROM pgvision.backfill_errors WHERE tbl = %s::regclass",
                             [f"public.{name}"]).fetchall() == [(str(len(IMAGES) + 1),)], name
        assert c.execute("SELECT count(feature) FROM public.t_auto").fetchone()[0] == 2


# --- backfill bookkeeping: only a role that may write the feature writes its bookkeeping -----

@pytest.fixture
def note_writer(server, admin):
    """``app`` owns bk_t; ``pv_note_writer`` may read it and UPDATE only its note column."""
    role = "pv_note_writer"
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
        admin.execute(f"CREATE ROLE {role} LOGIN")
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as owner:
        owner.execute("DROP TABLE IF EXISTS bk_t")
        owner.execute("CREATE TABLE bk_t (id int PRIMARY KEY, image bytea, feature vector(1280), note text)")
        with owner.cursor() as cur:
            cur.executemany("INSERT INTO bk_t (id, image) VALUES (%s, %s)", list(enumerate(IMAGES, 1)))
        owner.execute(f"GRANT SELECT, UPDATE (note) ON bk_t TO {role}")
        with psycopg.connect(dsn(server, user=role), autocommit=True) as c:
            yield owner, c
        owner.execute("DROP TABLE IF EXISTS bk_t")


FORGERIES = [
    ("insert error", "INSERT INTO pgvision.backfill_errors (tbl, feature_column, key, model, error, sqlstate)"
                     " VALUES ('bk_t', 'feature', '1', 'efficientnet_lite0', 'forged', '22P03')"),
    ("insert progress", "INSERT INTO pgvision.backfill_progress (tbl, feature_column, image_column, key_column, model, batch_size)"
                        " VALUES ('bk_t', 'feature', 'image', 'id', 'efficientnet_lite0', 1)"),
]


@pytest.mark.parametrize("case, statement", FORGERIES, ids=[c[0] for c in FORGERIES])
def test_a_role_that_may_update_another_column_cannot_forge_bookkeeping(note_writer, case, statement):
    owner, c = note_writer
    with pytest.raises(psycopg.Error) as e:
        c.execute(statement)
    assert e.value.sqlstate == "42501", e.value
    owner.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")
    assert owner.execute("SELECT count(feature) FROM bk_t").fetchone()[0] == len(IMAGES)


@pytest.mark.parametrize("statement", [
    "UPDATE pgvision.backfill_errors SET error = 'forged' WHERE tbl = 'bk_t'::regclass",
    "DELETE FROM pgvision.backfill_errors WHERE tbl = 'bk_t'::regclass",
    "UPDATE pgvision.backfill_progress SET rows_done = 0 WHERE tbl = 'bk_t'::regclass",
    "DELETE FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass",
])
def test_a_role_that_may_update_another_column_cannot_change_bookkeeping(note_writer, statement):
    owner, c = note_writer
    owner.execute("UPDATE bk_t SET image = 'junk' WHERE id = 1")
    owner.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")
    before = owner.execute("SELECT * FROM pgvision.backfill_errors WHERE tbl = 'bk_t'::regclass").fetchall(), \
        owner.execute("SELECT rows_done FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchall()
    assert len(before[0]) == 1
    c.execute(statement)  # row-level security: the rows are not there for it to change
    after = owner.execute("SELECT * FROM pgvision.backfill_errors WHERE tbl = 'bk_t'::regclass").fetchall(), \
        owner.execute("SELECT rows_done FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchall()
    assert after == before


def test_a_role_that_may_update_the_feature_writes_its_bookkeeping(note_writer):
    owner, c = note_writer
    owner.execute("GRANT UPDATE (feature) ON bk_t TO pv_note_writer")
    c.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")
    assert owner.execute("SELECT count(feature) FROM bk_t").fetchone()[0] == len(IMAGES)
    assert c.execute("SELECT rows_done FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchone() \
        == (len(IMAGES),)


def test_bookkeeping_of_a_renamed_feature_column_breaks_no_query(note_writer):
    owner, c = note_writer
    owner.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")
    owner.execute("ALTER TABLE bk_t RENAME COLUMN feature TO feature_old")
    assert c.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchone() == (1,)
    c.execute("DELETE FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass")
    assert owner.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchone() == (1,)


# --- embed_table needs to COMMIT: it says so before it starts ---------------------------------

def call_in_transaction_block(c):
    with c.transaction():
        c.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")


def call_from_a_function(c):
    c.execute("CREATE OR REPLACE FUNCTION pg_temp.backfill() RETURNS void LANGUAGE plpgsql AS"
              " $$ BEGIN CALL pgvision.embed_table('bk_t', 'image', 'feature'); END $$")
    c.execute("SELECT pg_temp.backfill()")


def call_from_a_procedure_in_a_transaction_block(c):
    c.execute("CREATE OR REPLACE PROCEDURE pg_temp.backfill() LANGUAGE plpgsql AS"
              " $$ BEGIN CALL pgvision.embed_table('bk_t', 'image', 'feature'); END $$")
    with c.transaction():
        c.execute("CALL pg_temp.backfill()")


@pytest.mark.parametrize("call, words", [
    (call_in_transaction_block, "pgvision.embed_table cannot run inside a transaction block"),
    (call_from_a_function, "pgvision.embed_table cannot be called from a function"),
    (call_from_a_procedure_in_a_transaction_block, "pgvision.embed_table cannot run inside a transaction block"),
])
def test_embed_table_refuses_to_start_where_it_cannot_commit(note_writer, call, words):
    owner, _ = note_writer
    notices = []
    owner.add_notice_handler(lambda d: notices.append(d.message_primary))
    with pytest.raises(psycopg.Error) as e:
        call(owner)
    assert e.value.sqlstate == "2D000" and str(e.value).startswith(words), e.value
    assert "escapeSyntaxCallMode=callIfNoReturn" in e.value.diag.message_hint
    assert notices == []
    assert owner.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl = 'bk_t'::regclass").fetchone() == (0,)


def test_embed_table_runs_from_a_procedure_and_a_do_block_in_autocommit(note_writer):
    owner, _ = note_writer
    owner.execute("CREATE OR REPLACE PROCEDURE pg_temp.backfill() LANGUAGE plpgsql AS"
                  " $$ BEGIN CALL pgvision.embed_table('bk_t', 'image', 'feature', batch_size => 2); END $$")
    owner.execute("CALL pg_temp.backfill()")
    owner.execute("UPDATE bk_t SET feature = NULL")
    owner.execute("DO $$ BEGIN CALL pgvision.embed_table('bk_t', 'image', 'feature', batch_size => 2); END $$")
    assert owner.execute("SELECT count(feature) FROM bk_t").fetchone()[0] == len(IMAGES)


# --- the bookkeeping of dropped tables and columns goes with them ------------------------------

def bookkeeping(admin, oid):
    return (admin.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl::oid = %s", [oid]).fetchone()[0],
            admin.execute("SELECT count(*) FROM pgvision.backfill_errors WHERE tbl::oid = %s", [oid]).fetchone()[0])


@pytest.mark.parametrize("drop", [
    "DROP TABLE bk_t",
    "ALTER TABLE bk_t DROP COLUMN feature",
    "DROP SCHEMA bk CASCADE",
])
def test_dropping_a_table_or_its_feature_column_drops_its_bookkeeping(note_writer, admin, drop):
    owner, _ = note_writer
    if "SCHEMA" in drop:
        admin.execute(f"DROP SCHEMA IF EXISTS bk CASCADE; CREATE SCHEMA bk AUTHORIZATION {APP_ROLE}")
        owner.execute("ALTER TABLE bk_t SET SCHEMA bk")
        table = "bk.bk_t"
    else:
        table = "bk_t"
    owner.execute(f"UPDATE {table} SET image = 'junk' WHERE id = 1")
    owner.execute(f"CALL pgvision.embed_table('{table}', 'image', 'feature')")
    oid = owner.execute("SELECT %s::regclass::oid", [table]).fetchone()[0]
    assert bookkeeping(admin, oid) == (1, 1)
    owner.execute(drop)
    assert bookkeeping(admin, oid) == (0, 0)


def test_dropping_another_column_keeps_the_bookkeeping(note_writer, admin):
    owner, _ = note_writer
    owner.execute("UPDATE bk_t SET image = 'junk' WHERE id = 1")
    owner.execute("CALL pgvision.embed_table('bk_t', 'image', 'feature')")
    oid = owner.execute("SELECT 'bk_t'::regclass::oid").fetchone()[0]
    owner.execute("ALTER TABLE bk_t DROP COLUMN note")
    assert bookkeeping(admin, oid) == (1, 1)



# --- parameters that used to do the wrong thing without a word ------------------------------

@pytest.fixture
def small(conn):
    conn.execute("DROP TABLE IF EXISTS pv_small")
    conn.execute("CREATE TABLE pv_small (id int PRIMARY KEY, feature vector(3), image bytea)")
    conn.execute("INSERT INTO pv_small VALUES (1, '[1,0,0]', NULL), (2, '[0,1,0]', NULL), (3, '[0,0,1]', NULL)")
    conn.execute("DROP TABLE IF EXISTS pv_small_img")
    conn.execute("CREATE TABLE pv_small_img (id int PRIMARY KEY, feature vector(1280), image bytea)")
    yield conn
    conn.execute("DROP TABLE IF EXISTS pv_small, pv_small_img")


LIKE = "SELECT * FROM pgvision.search_like('pv_small', 1"
BAD_PARAMETERS = [
    ("max_distance NaN", LIKE + ", max_distance => 'NaN')", "22023", "max_distance must be a finite number, not NaN"),
    ("max_distance infinite", LIKE + ", max_distance => 'Infinity')", "22023", "max_distance must be a finite number"),
    ("max_distance -infinite", LIKE + ", metric => 'ip', max_distance => '-Infinity')", "22023", "max_distance must be a finite number"),
    ("max_distance negative l2", LIKE + ", metric => 'l2', max_distance => -1)", "22023", "max_distance must not be negative with the l2 metric"),
    ("max_distance negative cosine", LIKE + ", metric => 'cosine', max_distance => -0.5)", "22023", "must not be negative with the cosine metric"),
    ("min_similarity NaN", LIKE + ", metric => 'cosine', min_similarity => 'NaN')", "22023", "min_similarity must be a finite number, not NaN"),
    ("min_similarity infinite", LIKE + ", metric => 'ip', min_similarity => '-Infinity')", "22023", "min_similarity must be a finite number"),
    ("k null", LIKE + ", k => NULL)", "22004", "must not be null"),
    ("k negative", LIKE + ", k => -1)", "22023", "k must be at least 1, not -1"),
    ("expand null", LIKE + ", expand => NULL)", "22004", "must not be null"),
    ("expand too large", LIKE + ", expand => 1001)", "22023", "expand must be between 0 and 1000, not 1001"),
    ("table null", "SELECT * FROM pgvision.search_like(NULL, 1)", "22004", "must not be null"),
    ("search model null", "SELECT * FROM pgvision.search('pv_small', '\\x00'::bytea, model => NULL)", "22004", "model must not be null"),
    ("search query null", "SELECT * FROM pgvision.search('pv_small', NULL::bytea)", "22004", "query image must not be null"),
    ("search table null", "SELECT * FROM pgvision.search(NULL, '\\x00'::bytea)", "22004", "must not be null"),
    ("search_batch model null", "SELECT * FROM pgvision.search_batch('pv_small', ARRAY['\\x00'::bytea], model => NULL)", "22004", "model must not be null"),
    ("search_batch queries null", "SELECT * FROM pgvision.search_batch('pv_small', NULL::bytea[])", "22004", "queries must not be null"),
    ("embed_table batch_size null", "CALL pgvision.embed_table('pv_small_img', 'image', 'feature', batch_size => NULL)", "22004", "must not be null"),
    ("embed_table batch_size 0", "CALL pgvision.embed_table('pv_small_img', 'image', 'feature', batch_size => 0)", "22023", "batch_size must be at least 1, not 0"),
    ("embed_table retry_errors null", "CALL pgvision.embed_table('pv_small_img', 'image', 'feature', retry_errors => NULL)", "22004", "must not be null"),
    ("embed_table model null", "CALL pgvision.embed_table('pv_small_img', 'image', 'feature', model => NULL)", "22004", "must not be null"),
    ("embed_shards batch_size null", "SELECT * FROM pgvision.embed_shards('pv_small', 'image', 'feature', batch_size => NULL)", "22004", "batch_size must not be null"),
    ("embed_shards batch_size 0", "SELECT * FROM pgvision.embed_shards('pv_small', 'image', 'feature', batch_size => 0)", "22023", "batch_size must be at least 1"),
]


@pytest.mark.parametrize("case, statement, state, words", BAD_PARAMETERS, ids=[c[0] for c in BAD_PARAMETERS])
def test_bad_parameters_are_refused(small, case, statement, state, words):
    with pytest.raises(psycopg.Error) as e:
        small.execute(statement)
    assert e.value.sqlstate == state and words in str(e.value), e.value


def test_a_negative_ip_threshold_is_a_real_one(small):
    # the ip "distance" is the negative inner product: -0.5 keeps rows with an inner product of 0.5 or more
    rows = small.execute(LIKE + ", metric => 'ip', max_distance => -0.5)").fetchall()
    assert rows == []
    small.execute("INSERT INTO pv_small VALUES (4, '[0.9,0.1,0]', NULL)")
    rows = small.execute(LIKE + ", metric => 'ip', max_distance => -0.5)").fetchall()
    assert [r[2] for r in rows] == ["4"]

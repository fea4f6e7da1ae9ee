"""Moving a feature column to another model online (pgvision.switch_model and its steps):
the new column is kept current for writes while it backfills, gets an index like the old
one's, and is swapped in atomically; searches work before, during and after; a switch can
be interrupted and resumed, and abandoned without touching the old column."""

import threading

import numpy as np
import psycopg
import pytest

from conftest import dsn
from data import fashion_sample

OLD = "efficientnet_lite0_normalized"  # the default model, which embed_table fills with
NEW = "sm_other"  # the built-in's bytes with another mean: other features, same dimensions
PER_CLASS = 2     # 20 rows


@pytest.fixture(scope="module")
def rows():
    return [(i + 1, label, png) for i, (_, label, png) in enumerate(fashion_sample(PER_CLASS))]


@pytest.fixture
def other_model(admin):
    if not admin.execute("SELECT 1 FROM pgvision.models WHERE name = %s", [NEW]).fetchone():
        admin.execute("SELECT pgvision.register_model(%s, m.onnx, m.spec || '{\"mean\": [0.3, 0.4, 0.6]}')"
                      " FROM pgvision.models m WHERE m.name = %s", [NEW, OLD])
    yield NEW
    admin.execute("DROP TABLE IF EXISTS sm_t")
    admin.execute("SELECT pgvision.drop_model(%s)", [NEW])


@pytest.fixture
def table(conn, other_model, rows):
    """sm_t (id, label, image, feature) owned by app, embedded with the old model, with a cosine HNSW index."""
    conn.execute("DROP TABLE IF EXISTS sm_t")
    conn.execute("CREATE TABLE sm_t (id int PRIMARY KEY, label text, image bytea, feature vector(1280))")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO sm_t (id, label, image) VALUES (%s, %s, %s)", rows)
    conn.execute("CALL pgvision.embed_table('sm_t', 'image', 'feature')")
    conn.execute("SELECT pgvision.create_index('sm_t', 'feature')")
    return "sm_t"


def search(c, image, k=5):
    return c.execute("SELECT id, distance FROM pgvision.search('sm_t', %s, k => %s)", [image, k]).fetchall()


def exact(c, image, model, column="feature", k=5):
    """The k nearest rows by an exact scan, the query embedded with model."""
    c.execute("SET enable_indexscan = off")
    try:
        return c.execute(f"SELECT id::text, {column} <=> pgvision.embed(%s, %s) FROM sm_t"
                         f" WHERE {column} IS NOT NULL ORDER BY 2, 1 LIMIT %s", [image, model, k]).fetchall()
    finally:
        c.execute("RESET enable_indexscan")


def same(found, expected):
    """The same rows at the same distances (rows at equal distances in any order)."""
    assert [r[1] for r in found] == pytest.approx([r[1] for r in expected], abs=1e-5)
    assert sorted((round(d, 4), i) for i, d in found) == sorted((round(d, 4), i) for i, d in expected)


def rounded(found):
    return tuple((i, round(d, 4)) for i, d in found)


def columns(c):
    return c.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'sm_t'::regclass AND attnum > 0"
                     " AND NOT attisdropped ORDER BY attnum").fetchall()


def triggers(c):
    return c.execute("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'sm_t'::regclass"
                     " AND NOT tgisinternal ORDER BY 1").fetchall()


def indexes(c):
    return c.execute("SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
                     " WHERE indrelid = 'sm_t'::regclass ORDER BY 1").fetchall()


def records(c):
    return c.execute("SELECT feature_column, attnum, model FROM pgvision.feature_models"
                     " WHERE tbl = 'sm_t'::regclass ORDER BY 1").fetchall()


def model_of(c, column="feature"):
    return c.execute("SELECT pgvision.column_model('sm_t', %s)", [column]).fetchone()[0]


def features_are(c, model, column="feature"):
    """Every row with an image holds pgvision.embed(image, model) in column."""
    far = c.execute(f"SELECT count(*) FILTER (WHERE {column} IS NULL),"
                    f" max({column} <-> pgvision.embed(image, %s)) FROM sm_t WHERE image IS NOT NULL",
                    [model]).fetchone()
    assert far[0] == 0 and far[1] < 1e-4, far


def refused(c, statement, args=()):
    with pytest.raises(psycopg.Error) as info:
        c.execute(statement, args)
    return info.value


def test_a_full_switch(conn, table, rows):
    query = rows[3][2]
    before = search(conn, query)
    same(before, exact(conn, query, OLD))
    old_index = indexes(conn)
    assert any("sm_t_feature_hnsw_cosine_idx" in i[0] for i in old_index)

    conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s, batch_size => 6)", [NEW])

    assert model_of(conn) == NEW
    assert model_of(conn, "feature_previous") == OLD
    assert [r[0] for r in columns(conn)] == ["id", "label", "image", "feature_previous", "feature"]
    features_are(conn, NEW)
    features_are(conn, OLD, "feature_previous")
    after = search(conn, query)
    same(after, exact(conn, query, NEW))
    assert after[0][1] == pytest.approx(0, abs=1e-5)  # the query row itself
    # the search embeds with the new model: its distances are not the old ones
    assert [d for _, d in after[1:]] != pytest.approx([d for _, d in before[1:]], abs=1e-4)
    q, e = conn.execute("SELECT pgvision.query_vector('sm_t', 'feature', %s), pgvision.embed(%s, %s)",
                        [query, query, NEW]).fetchone()
    assert np.array_equal(q.to_numpy(), e.to_numpy())
    # the index: like the old one, under its name; the old one follows its column
    now = dict(indexes(conn))
    assert "USING hnsw (feature vector_cosine_ops) WITH (m='32', ef_construction='200')" in now["sm_t_feature_hnsw_cosine_idx"]
    assert "(feature_previous vector_cosine_ops)" in now["sm_t_feature_previous_hnsw_cosine_idx"]
    assert conn.execute("SELECT (pgvision._search_scan('sm_t', 'feature', NULL)).metric").fetchone()[0] == "cosine"
    # no trigger left behind, the bookkeeping follows the columns
    assert triggers(conn) == []
    progress = conn.execute("SELECT feature_column, model FROM pgvision.backfill_progress"
                            " WHERE tbl = 'sm_t'::regclass ORDER BY 1").fetchall()
    assert progress == [("feature", NEW), ("feature_previous", OLD)]
    # called again, there is nothing left to do
    conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s)", [NEW])
    assert [r[0] for r in columns(conn)] == ["id", "label", "image", "feature_previous", "feature"]
    # nothing is under way any more
    e = refused(conn, "SELECT pgvision.switch_model_finish('sm_t', 'feature')")
    assert e.sqlstate == "55000"
    assert conn.execute("SELECT pgvision.switch_model_abort('sm_t', 'feature')").fetchone()[0] is False
    # a second switch needs the name taken by the first one's old column
    conn.execute("SELECT pgvision.switch_model_start('sm_t', 'feature', %s)", [OLD])
    e = refused(conn, "SELECT pgvision.switch_model_finish('sm_t', 'feature')")
    assert e.sqlstate == "42701" and "feature_previous" in str(e) and "previous_column =>" in e.diag.message_hint


def test_drop_old(conn, table, rows):
    conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s, drop_old => true)", [NEW])
    assert [r[0] for r in columns(conn)] == ["id", "label", "image", "feature"]
    assert records(conn) == [("feature", 5, NEW)]
    assert [i[0] for i in indexes(conn)] == ["sm_t_feature_hnsw_cosine_idx", "sm_t_pkey"]
    assert conn.execute("SELECT feature_column, model FROM pgvision.backfill_progress"
                        " WHERE tbl = 'sm_t'::regclass").fetchall() == [("feature", NEW)]
    same(search(conn, rows[0][2]), exact(conn, rows[0][2], NEW))


def test_the_new_column_gets_indexes_like_the_old_ones(conn, table):
    conn.execute("SELECT pgvision.create_index('sm_t', 'feature', metric => 'l2', method => 'ivfflat', lists => 3)")
    conn.execute("SELECT pgvision.create_index('sm_t', 'feature', metric => 'ip', m => 8, ef_construction => 32, halfvec => true)")
    old = dict(indexes(conn))
    conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s)", [NEW])
    now = dict(indexes(conn))
    assert len(now) == 2 * len(old) - 1  # the primary key once
    for name, definition in old.items():
        if name == "sm_t_pkey":
            continue
        # the new column's index has the old one's name and definition
        assert now[name] == definition, name
        assert now[name.replace("sm_t_feature_", "sm_t_feature_previous_")] == definition.replace(
            name, name.replace("sm_t_feature_", "sm_t_feature_previous_")).replace("(feature", "(feature_previous"), name
    assert "USING ivfflat (feature) WITH (lists='3')" in now["sm_t_feature_ivfflat_l2_idx"]
    assert "((feature)::halfvec(1280)) halfvec_ip_ops) WITH (m='8', ef_construction='32')" in now["sm_t_feature_hnsw_ip_half_idx"]


def test_interrupted_resumed_and_writes_during_the_backfill(conn, table, rows):
    conn.execute("SELECT pgvision.enable_auto_embed('sm_t', 'image', 'feature')")
    query = rows[7][2]
    before = search(conn, query)
    # the backfill stops at row 15 (its batch fails): rows 1-12 are committed, in batches of 4
    conn.execute("""CREATE FUNCTION sm_stop() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = 15 AND NEW.feature_next IS NOT NULL AND current_setting('sm.stop', true) = 'on' THEN
                RAISE EXCEPTION 'stopped';
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER sm_stop BEFORE UPDATE ON sm_t FOR EACH ROW EXECUTE FUNCTION sm_stop()")
    try:
        conn.execute("SET sm.stop = on")
        e = refused(conn, "CALL pgvision.switch_model('sm_t', 'feature', %s, batch_size => 4)", [NEW])
        assert "stopped" in str(e)
        conn.execute("RESET sm.stop")
        done = conn.execute("SELECT array_agg(id ORDER BY id) FROM sm_t WHERE feature_next IS NOT NULL").fetchone()[0]
        assert done == list(range(1, 13))
        # mid-way: the column is searched with its old model, as before
        assert model_of(conn) == OLD and model_of(conn, "feature_next") == NEW
        same(search(conn, query), before)
        # writes get both features: the old column's by its automatic embedding, the new one's by the switch
        conn.execute("INSERT INTO sm_t (id, label, image) VALUES (100, 'x', %s)", [rows[0][2]])
        conn.execute("UPDATE sm_t SET image = %s WHERE id = 18", [rows[1][2]])
        conn.execute("UPDATE sm_t SET image = %s WHERE id = 2", [rows[2][2]])  # already backfilled
        for i in (100, 18, 2):
            old, new, e_old, e_new = conn.execute(
                "SELECT feature, feature_next, pgvision.embed(image, %s), pgvision.embed(image, %s)"
                " FROM sm_t WHERE id = %s", [OLD, NEW, i]).fetchone()
            assert np.allclose(old.to_numpy(), e_old.to_numpy(), atol=1e-5), i
            assert np.allclose(new.to_numpy(), e_new.to_numpy(), atol=1e-5), i
        # finishing before the backfill is done is refused, and says how to go on
        e = refused(conn, "SELECT pgvision.switch_model_finish('sm_t', 'feature')")
        assert e.sqlstate == "55000" and "7 rows" in str(e)
        assert "CALL pgvision.embed_table('public.sm_t', 'image', 'feature_next', 'sm_other')" in e.diag.message_hint
        # another model while this switch is under way is refused
        e = refused(conn, "SELECT pgvision.switch_model_start('sm_t', 'feature', %s)", [OLD])
        assert e.sqlstate in ("55000", "22023")
        # called again, it goes on where it stopped
        conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s, batch_size => 4)", [NEW])
    finally:
        conn.execute("DROP TRIGGER IF EXISTS sm_stop ON sm_t")
        conn.execute("DROP FUNCTION IF EXISTS sm_stop()")
    assert model_of(conn) == NEW
    features_are(conn, NEW)
    same(search(conn, query), exact(conn, query, NEW))
    # the automatic embedding now embeds with the new model
    assert [t[0] for t in triggers(conn)] == ["pgvision_auto_embed"]
    assert f"_auto_embed('image', 'feature', '{NEW}')" in triggers(conn)[0][1]
    conn.execute("INSERT INTO sm_t (id, label, image) VALUES (101, 'x', %s)", [rows[5][2]])
    features_are(conn, NEW)
    assert conn.execute("SELECT feature_previous FROM sm_t WHERE id = 101").fetchone()[0] is None


def test_the_steps_one_by_one_with_searches_running(server, conn, table, rows):
    query = rows[11][2]
    before = search(conn, query)
    stop = threading.Event()
    seen, errors = [], []

    def searcher():
        with psycopg.connect(dsn(server, user="app"), autocommit=True) as c:
            while not stop.is_set():
                try:
                    seen.append(rounded(search(c, query)))
                except psycopg.Error as e:  # pragma: no cover - the test fails on it
                    errors.append(e)

    t = threading.Thread(target=searcher)
    t.start()
    try:
        assert conn.execute("SELECT pgvision.switch_model_start('sm_t', 'feature', %s)", [NEW]).fetchone()[0] == "feature_next"
        # again: the same switch, nothing done twice
        assert conn.execute("SELECT pgvision.switch_model_start('sm_t', 'feature', %s)", [NEW]).fetchone()[0] == "feature_next"
        conn.execute("CALL pgvision.embed_table('sm_t', 'image', 'feature_next', %s, batch_size => 5)", [NEW])
        # the DBA builds the index without blocking writes; finish then builds none
        conn.execute("CREATE INDEX CONCURRENTLY sm_t_next_idx ON sm_t USING hnsw (feature_next vector_cosine_ops)")
        assert conn.execute("SELECT pgvision.switch_model_finish('sm_t', 'feature')").fetchone()[0] == "feature_previous"
        after = search(conn, query)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert len(seen) > 0
    same(after, exact(conn, query, NEW))
    # every search ranked with one model, the old or the new: the one of the column it read
    # (one whose snapshot predates the swap and that reads the table after it reads the new column)
    assert seen[0] == rounded(before)
    assert set(seen) <= {rounded(before), rounded(after)}
    assert dict(indexes(conn))["sm_t_feature_hnsw_cosine_idx"].endswith("USING hnsw (feature vector_cosine_ops)")
    assert len(indexes(conn)) == 3


def test_abort_leaves_the_table_as_it_was(conn, table, rows):
    conn.execute("SELECT pgvision.enable_auto_embed('sm_t', 'image', 'feature')")
    query = rows[4][2]
    state = (columns(conn), triggers(conn), indexes(conn), records(conn))
    before = search(conn, query)
    conn.execute("SELECT pgvision.switch_model_start('sm_t', 'feature', %s, new_column => 'f2')", [NEW])
    conn.execute("CALL pgvision.embed_table('sm_t', 'image', 'f2', %s)", [NEW])
    conn.execute("SELECT pgvision.create_index('sm_t', 'f2')")
    conn.execute("INSERT INTO sm_t (id, label, image) VALUES (100, 'x', %s)", [rows[0][2]])
    assert conn.execute("SELECT pgvision.switch_model_abort('sm_t', 'feature')").fetchone()[0] is True
    conn.execute("DELETE FROM sm_t WHERE id = 100")
    assert (columns(conn), triggers(conn), indexes(conn), records(conn)) == state
    assert conn.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl = 'sm_t'::regclass"
                        " AND feature_column = 'f2'").fetchone()[0] == 0
    same(search(conn, query), before)
    features_are(conn, OLD)
    # and it can start again
    conn.execute("CALL pgvision.switch_model('sm_t', 'feature', %s)", [NEW])
    assert model_of(conn) == NEW


def test_a_role_that_does_not_own_the_table_is_refused(admin, conn, table):
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'sm_writer'").fetchone():
        admin.execute("CREATE ROLE sm_writer")
    conn.execute("GRANT SELECT, INSERT, UPDATE ON sm_t TO sm_writer")
    admin.execute("SET ROLE sm_writer")
    try:
        for statement in ("SELECT pgvision.switch_model_start('sm_t', 'feature', 'sm_other')",
                          "SELECT pgvision.switch_model_finish('sm_t', 'feature')",
                          "SELECT pgvision.switch_model_abort('sm_t', 'feature')",
                          "CALL pgvision.switch_model('sm_t', 'feature', 'sm_other')"):
            e = refused(admin, statement)
            assert e.sqlstate == "42501" and "must be owner of table public.sm_t" in str(e), statement
    finally:
        admin.execute("RESET ROLE")
    assert [r[0] for r in columns(conn)] == ["id", "label", "image", "feature"]


@pytest.mark.parametrize("statement, state", [
    ("SELECT pgvision.switch_model_start('sm_t', 'feature', 'efficientnet_lite0_normalized')", "22023"),
    ("SELECT pgvision.switch_model_start('sm_t', 'feature', 'no_such_model')", "42704"),
    ("SELECT pgvision.switch_model_start('sm_t', 'label', 'sm_other')", "42804"),
    ("SELECT pgvision.switch_model_start('sm_t', 'feature', 'sm_other', image_column => 'label')", "42804"),
    ("SELECT pgvision.switch_model_start('sm_t', 'feature', 'sm_other', new_column => 'label')", "42701"),
    ("SELECT pgvision.switch_model_start('sm_t', 'feature', NULL)", "22004"),
    ("SELECT pgvision.switch_model_finish('sm_t', 'feature')", "55000"),
    ("CALL pgvision.switch_model('sm_t', 'feature', 'sm_other', batch_size => 0)", "22023"),
], ids=["same model", "unknown model", "not a vector column", "not an image column", "new column taken",
        "null model", "finish without start", "bad batch_size"])
def test_bad_calls_are_refused_and_change_nothing(conn, table, statement, state):
    before = (columns(conn), triggers(conn))
    assert refused(conn, statement).sqlstate == state
    assert (columns(conn), triggers(conn)) == before


def test_switch_model_refuses_a_transaction_block(conn, table):
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            conn.execute("CALL pgvision.switch_model('sm_t', 'feature', 'sm_other')")
    assert info.value.sqlstate == "2D000"
    assert "switch_model_start" in info.value.diag.message_hint
    assert [r[0] for r in columns(conn)] == ["id", "label", "image", "feature"]

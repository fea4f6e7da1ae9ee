"""pgvision.embed_table (backfill) and automatic embedding, as an ordinary role."""

import numpy as np
import psycopg
import pytest
from psycopg import sql

from conftest import APP_ROLE
from data import fashion_sample

# Small PNGs embed fast; a few dozen are plenty.
IMAGES = [png for _, _, png in fashion_sample(3, split="test")]
JUNK = b"junk"


@pytest.fixture
def notices(conn):
    got = []
    conn.add_notice_handler(lambda d: got.append(d.message_primary))
    return got


@pytest.fixture
def make_table(conn):
    """Creates a table (id int PRIMARY KEY, image bytea, feature vector(1280)) with images."""
    made = []

    def make(name, images, pk=True):
        ident = sql.Identifier(name)
        key = "PRIMARY KEY" if pk else ""
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE {} (id int {}, image bytea, feature vector(1280), "
                             "note text)").format(ident, sql.SQL(key)))
        made.append(ident)
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} (id, image) VALUES (%s, %s)").format(ident),
                            list(enumerate(images, 1)))
        return ident

    yield make
    for ident in made:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))


def backfill(conn, table, **kwargs):
    args = "".join(f", {k} => %s" for k in kwargs)
    conn.execute(f"CALL pgvision.embed_table(%s, 'image', 'feature'{args})",
                 [table] + list(kwargs.values()))


def progress(conn, table):
    cur = conn.execute("SELECT * FROM pgvision.backfill_progress WHERE tbl = %s::regclass", [table])
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def features(conn, ident):
    return dict(conn.execute(sql.SQL("SELECT id, feature FROM {} ORDER BY id").format(ident)).fetchall())


def xmins(conn, ident):
    return conn.execute(sql.SQL("SELECT id, xmin::text FROM {} ORDER BY id").format(ident)).fetchall()


def close(a, b):
    return np.abs(np.asarray(a.to_numpy()) - np.asarray(b.to_numpy())).max() < 1e-5


# --- backfill ---------------------------------------------------------------------------

def test_backfill_fills_every_null_feature_like_embed(conn, make_table):
    t = make_table("bf_fill", IMAGES[:7])
    conn.execute(sql.SQL("UPDATE {} SET feature = array_fill(0, ARRAY[1280])::vector WHERE id = 7")
                 .format(t))
    backfill(conn, "bf_fill", batch_size=3)
    got = features(conn, t)
    assert all(f is not None for f in got.values())
    for i, image in enumerate(IMAGES[:6], 1):
        single = conn.execute("SELECT pgvision.embed(%s)", [image]).fetchone()[0]
        assert close(got[i], single), i
    assert not got[7].to_numpy().any(), "a feature that was set is left alone"


def test_rerun_does_nothing(conn, make_table):
    t = make_table("bf_rerun", IMAGES[:4])
    backfill(conn, "bf_rerun", batch_size=2)
    before = xmins(conn, t)
    backfill(conn, "bf_rerun", batch_size=2)
    assert xmins(conn, t) == before
    p = progress(conn, "bf_rerun")
    assert (p["rows_done"], p["rows_left"], p["finished"] is not None) == (0, 0, True)


def test_rows_added_later_are_embedded_on_rerun(conn, make_table):
    t = make_table("bf_later", IMAGES[:3])
    backfill(conn, "bf_later", batch_size=2)
    conn.execute(sql.SQL("INSERT INTO {} (id, image) VALUES (0, %s), (10, %s)").format(t),
                 [IMAGES[3], IMAGES[4]])
    backfill(conn, "bf_later", batch_size=2)
    assert progress(conn, "bf_later")["rows_done"] == 2
    assert all(f is not None for f in features(conn, t).values())


def test_bad_image_is_recorded_and_the_rest_embedded(conn, make_table):
    t = make_table("bf_bad", IMAGES[:2] + [JUNK] + IMAGES[2:5])
    backfill(conn, "bf_bad", batch_size=4)
    got = features(conn, t)
    assert [i for i, f in got.items() if f is None] == [3]
    rows = conn.execute("SELECT key, sqlstate, error, model FROM pgvision.backfill_errors "
                        "WHERE tbl = 'bf_bad'::regclass").fetchall()
    assert len(rows) == 1
    key, sqlstate, error, model = rows[0]
    assert (key, sqlstate, model) == ("3", "22P03", "efficientnet_lite0_normalized")
    assert "not recognized" in error
    assert progress(conn, "bf_bad")["errors"] == 1


def test_recorded_bad_rows_are_skipped_unless_retry_errors(conn, make_table, notices):
    t = make_table("bf_retry", [IMAGES[0], JUNK, IMAGES[1]])
    backfill(conn, "bf_retry", batch_size=2)
    first_at = conn.execute("SELECT at FROM pgvision.backfill_errors "
                            "WHERE tbl = 'bf_retry'::regclass").fetchone()[0]
    notices.clear()
    backfill(conn, "bf_retry", batch_size=2)
    assert any("skipping 1 rows recorded in pgvision.backfill_errors" in n for n in notices), notices
    assert progress(conn, "bf_retry")["errors"] == 0
    assert conn.execute("SELECT at FROM pgvision.backfill_errors "
                        "WHERE tbl = 'bf_retry'::regclass").fetchone()[0] == first_at
    # once the image is fixed, retry_errors embeds it and clears the record
    conn.execute(sql.SQL("UPDATE {} SET image = %s WHERE id = 2").format(t), [IMAGES[2]])
    backfill(conn, "bf_retry", batch_size=2, retry_errors=True)
    assert all(f is not None for f in features(conn, t).values())
    assert conn.execute("SELECT count(*) FROM pgvision.backfill_errors "
                        "WHERE tbl = 'bf_retry'::regclass").fetchone()[0] == 0


def test_null_images_are_skipped_and_counted(conn, make_table):
    t = make_table("bf_null", [IMAGES[0], None, None, IMAGES[1]])
    backfill(conn, "bf_null", batch_size=2)
    got = features(conn, t)
    assert [i for i, f in got.items() if f is None] == [2, 3]
    p = progress(conn, "bf_null")
    assert (p["rows_done"], p["null_images"], p["errors"]) == (2, 2, 0)


def test_progress_row_and_notices(conn, make_table, notices):
    make_table("bf_progress", IMAGES[:4] + [JUNK, None])
    notices.clear()
    backfill(conn, "bf_progress", batch_size=4)
    p = progress(conn, "bf_progress")
    assert (p["image_column"], p["feature_column"], p["key_column"], p["model"], p["batch_size"]) == \
        ("image", "feature", "id", "efficientnet_lite0_normalized", 4)
    assert (p["rows_done"], p["rows_left"], p["errors"], p["null_images"]) == (4, 0, 1, 1)
    assert p["rate"] > 0 and p["started"] <= p["updated"] <= p["finished"]
    assert notices[0] == "public.bf_progress: 6 rows to embed"
    assert notices[1].startswith("public.bf_progress: 4 rows embedded, 2 left, 0 failed, 0 without image, ")
    assert notices[-1].startswith("public.bf_progress: embedded 4 rows in ")
    assert notices[-1].endswith("rows/s), 1 failed, 1 without image")


def test_interrupted_run_resumes_and_embeds_each_row_once(conn, make_table, admin):
    t = make_table("bf_interrupt", IMAGES[:8])
    # every update of a feature is logged, and slowed down so the run is cut short
    conn.execute("CREATE TABLE bf_log (id int)")
    try:
        conn.execute("""CREATE FUNCTION bf_log() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN INSERT INTO bf_log VALUES (NEW.id); PERFORM pg_sleep(0.25);
                        RETURN NEW; END $$""")
        conn.execute(sql.SQL("CREATE TRIGGER bf_log AFTER UPDATE OF feature ON {} "
                             "FOR EACH ROW EXECUTE FUNCTION bf_log()").format(t))
        conn.execute("SELECT pgvision.embed(%s)", [IMAGES[0]])  # model loaded before the clock runs
        conn.execute("SET statement_timeout = '1s'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            backfill(conn, "bf_interrupt", batch_size=1)
        conn.execute("RESET statement_timeout")
        # the committed batches are visible from another session; the run is not finished
        seen = admin.execute("SELECT rows_done, finished FROM pgvision.backfill_progress "
                             "WHERE tbl = 'bf_interrupt'::regclass").fetchone()
        done = conn.execute("SELECT count(*) FROM bf_log").fetchone()[0]
        assert 1 <= done < 8 and seen == (done, None)
        backfill(conn, "bf_interrupt", batch_size=1)
        assert progress(conn, "bf_interrupt")["rows_done"] == 8 - done
        counts = conn.execute("SELECT id, count(*) FROM bf_log GROUP BY id ORDER BY id").fetchall()
        assert counts == [(i, 1) for i in range(1, 9)]
    finally:
        conn.execute("DROP TABLE bf_log")
        conn.execute(sql.SQL("DROP TABLE {}").format(t))
        conn.execute("DROP FUNCTION IF EXISTS bf_log()")


def rss_anon_mb(conn):
    """Private resident memory of the connection's backend (the tests run on the server's host)."""
    with open(f"/proc/{conn.info.backend_pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kb / 1024


def test_backfill_keeps_activation_memory_between_batches_and_gives_it_back(conn, make_table):
    # about 9 MB of activations per image of a model call: 8 images make 70 MB to see
    conn.execute("SET pgvision.batch_size = 8")
    conn.execute("SELECT pgvision.embed(%s)", [IMAGES[0]])
    loaded = rss_anon_mb(conn)

    # what the backfill's batches do: each keeps the arena for the next
    conn.execute("SELECT pgvision._embed_batch_float4(%s, pgvision.default_model(), true)", [IMAGES[:8]])
    assert rss_anon_mb(conn) > loaded + 40
    assert conn.execute("SELECT pgvision._release_batch_memory()").fetchone()[0] == 1
    assert rss_anon_mb(conn) < loaded + 20

    ident = make_table("memory", IMAGES[:20])
    backfill(conn, "memory", batch_size=8)
    assert all(f is not None for f in features(conn, ident).values())
    assert rss_anon_mb(conn) < loaded + 20, "the run ended without giving the memory back"


def test_keep_batch_memory_setting(conn):
    conn.execute("SET pgvision.batch_size = 8")
    conn.execute("SELECT pgvision.embed(%s)", [IMAGES[0]])
    loaded = rss_anon_mb(conn)
    conn.execute("SELECT pgvision.embed_batch(%s)", [IMAGES[:8]])
    assert rss_anon_mb(conn) < loaded + 20
    conn.execute("SET pgvision.keep_batch_memory = on")
    conn.execute("SELECT pgvision.embed_batch(%s)", [IMAGES[:8]])
    assert rss_anon_mb(conn) > loaded + 40
    conn.execute("RESET pgvision.keep_batch_memory")
    conn.execute("SELECT pgvision.embed_batch(%s)", [IMAGES[:8]])
    assert rss_anon_mb(conn) < loaded + 20


def test_release_in_a_backend_that_never_embedded_loads_nothing(admin):
    admin.execute("CREATE FUNCTION pg_temp.runtime_loaded() RETURNS bool LANGUAGE plpython3u "
                  "AS $$import sys; return 'pgvision_runtime.sqlapi' in sys.modules$$")
    assert admin.execute("SELECT pgvision._release_batch_memory()").fetchone()[0] == 0
    assert admin.execute("SELECT pg_temp.runtime_loaded()").fetchone()[0] is False
    admin.execute("SELECT pgvision.embed(%s)", [IMAGES[0]])
    assert admin.execute("SELECT pg_temp.runtime_loaded()").fetchone()[0] is True
    assert admin.execute("SELECT pgvision._release_batch_memory()").fetchone()[0] == 1


def test_odd_table_and_column_names(conn, make_table, notices):
    name = 'My "odd" images'
    t = make_table(name, IMAGES[:3])
    notices.clear()
    conn.execute(sql.SQL('ALTER TABLE {} RENAME image TO "the ""image"""').format(t))
    conn.execute(sql.SQL('ALTER TABLE {} RENAME id TO "Key; DROP"').format(t))
    conn.execute(sql.SQL("CALL pgvision.embed_table(%s, 'the \"image\"', 'feature', batch_size => 2)"),
                 [sql.Identifier(name).as_string(conn)])
    assert conn.execute(sql.SQL("SELECT count(feature) FROM {}").format(t)).fetchone()[0] == 3
    assert notices[0] == 'public."My ""odd"" images": 3 rows to embed'


def test_no_primary_key_is_an_error(conn, make_table):
    t = make_table("bf_nopk", IMAGES[:2], pk=False)
    with pytest.raises(psycopg.Error) as info:
        backfill(conn, "bf_nopk")
    assert info.value.sqlstate == "55000"
    assert info.value.diag.message_primary == "table public.bf_nopk has no single-column primary key"
    assert "key_column" in info.value.diag.message_hint
    # a column that is not unique is refused too; a unique NOT NULL one works
    with pytest.raises(psycopg.Error) as info:
        backfill(conn, "bf_nopk", key_column="id")
    assert info.value.sqlstate == "55000"
    conn.execute(sql.SQL("ALTER TABLE {} ALTER id SET NOT NULL, ADD UNIQUE (id)").format(t))
    backfill(conn, "bf_nopk", key_column="id")
    assert all(f is not None for f in features(conn, t).values())


@pytest.mark.parametrize("kwargs,sqlstate,words", [
    ({"batch_size": 0}, "22023", "batch_size must be at least 1, not 0"),
    ({"model": "nope"}, "42704", 'model "nope" does not exist'),
])
def test_bad_arguments(conn, make_table, kwargs, sqlstate, words):
    make_table("bf_args", IMAGES[:1])
    with pytest.raises(psycopg.Error) as info:
        backfill(conn, "bf_args", **kwargs)
    assert info.value.sqlstate == sqlstate and info.value.diag.message_primary == words


def test_feature_column_of_other_dimensions_is_refused(conn, make_table):
    t = make_table("bf_dims", IMAGES[:1])
    conn.execute(sql.SQL("ALTER TABLE {} ADD small vector(512)").format(t))
    with pytest.raises(psycopg.Error) as info:
        conn.execute("CALL pgvision.embed_table('bf_dims', 'image', 'small')")
    assert info.value.sqlstate == "42804"
    assert "has 512 dimensions, but model" in info.value.diag.message_primary


def test_must_be_called_outside_a_transaction_block(conn, make_table):
    make_table("bf_tx", IMAGES[:1])
    with pytest.raises(psycopg.errors.InvalidTransactionTermination):
        with conn.transaction():
            backfill(conn, "bf_tx")


def test_needs_update_and_hides_other_tables_progress(conn, admin):
    admin.execute("DROP TABLE IF EXISTS bf_private")
    admin.execute("CREATE TABLE bf_private (id int PRIMARY KEY, image bytea, feature vector(1280))")
    try:
        admin.execute("INSERT INTO bf_private VALUES (1, %s)", [IMAGES[0]])
        admin.execute(f"GRANT SELECT ON bf_private TO {APP_ROLE}")
        with pytest.raises(psycopg.Error) as info:
            backfill(conn, "bf_private")
        assert info.value.sqlstate == "42501"
        assert info.value.diag.message_primary == "permission denied for table public.bf_private"
        admin.execute("CALL pgvision.embed_table('bf_private', 'image', 'feature')")
        assert progress(conn, "bf_private")["rows_done"] == 1
        admin.execute(f"REVOKE SELECT ON bf_private FROM {APP_ROLE}")
        assert conn.execute("SELECT count(*) FROM pgvision.backfill_progress "
                            "WHERE tbl = 'bf_private'::regclass").fetchone()[0] == 0
        # and it cannot forge rows for a table it cannot update
        with pytest.raises(psycopg.Error) as info:
            conn.execute("INSERT INTO pgvision.backfill_errors (tbl, feature_column, key, model, "
                         "error, sqlstate) VALUES ('bf_private', 'feature', '1', 'm', 'e', '22P03')")
        assert info.value.sqlstate == "42501"
    finally:
        admin.execute("DROP TABLE bf_private")


# --- automatic embedding ----------------------------------------------------------------

@pytest.fixture
def auto(conn, make_table):
    t = make_table("bf_auto", [])
    conn.execute("SELECT pgvision.enable_auto_embed('bf_auto', 'image', 'feature')")
    return t


def embed(conn, image):
    return conn.execute("SELECT pgvision.embed(%s)", [image]).fetchone()[0]


def test_auto_embed_on_insert(conn, auto):
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s), (2, NULL)", [IMAGES[0]])
    got = features(conn, auto)
    assert close(got[1], embed(conn, IMAGES[0])) and got[2] is None


def test_auto_embed_on_update_of_image(conn, auto):
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s), (2, %s)", [IMAGES[0], IMAGES[1]])
    conn.execute("UPDATE bf_auto SET image = %s WHERE id = 1", [IMAGES[2]])
    conn.execute("UPDATE bf_auto SET image = NULL WHERE id = 2")
    got = features(conn, auto)
    assert close(got[1], embed(conn, IMAGES[2])) and got[2] is None


def test_update_of_other_columns_keeps_the_feature(conn, auto):
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s)", [IMAGES[0]])
    # a marker feature: any recomputation would overwrite it
    conn.execute("UPDATE bf_auto SET feature = array_fill(0, ARRAY[1280])::vector")
    conn.execute("UPDATE bf_auto SET note = 'seen', id = 5")
    assert not features(conn, auto)[5].to_numpy().any()


def test_upsert_recomputes_the_feature(conn, auto):
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s)", [IMAGES[0]])
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s) "
                 "ON CONFLICT (id) DO UPDATE SET image = EXCLUDED.image", [IMAGES[1]])
    assert close(features(conn, auto)[1], embed(conn, IMAGES[1]))


def test_auto_embed_bad_image_is_an_error(conn, auto):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, 'junk'::bytea)")
    assert info.value.sqlstate == "22P03"
    assert conn.execute("SELECT count(*) FROM bf_auto").fetchone()[0] == 0


def test_disable_auto_embed_removes_the_trigger(conn, auto):
    conn.execute("SELECT pgvision.disable_auto_embed('bf_auto')")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'bf_auto'::regclass"
                        ).fetchone()[0] == 0
    conn.execute("INSERT INTO bf_auto (id, image) VALUES (1, %s)", [IMAGES[0]])
    assert features(conn, auto)[1] is None


def test_auto_embed_with_odd_names(conn, make_table):
    name = 'My "odd" images'
    t = make_table(name, [])
    conn.execute(sql.SQL('ALTER TABLE {} RENAME image TO "the ""image"""').format(t))
    conn.execute("SELECT pgvision.enable_auto_embed(%s, 'the \"image\"', 'feature')",
                 [sql.Identifier(name).as_string(conn)])
    conn.execute(sql.SQL("INSERT INTO {} (id, {}) VALUES (1, %s)").format(t, sql.Identifier('the "image"')),
                 [IMAGES[0]])
    assert close(features(conn, t)[1], embed(conn, IMAGES[0]))


def test_auto_embed_needs_ownership(conn, admin):
    admin.execute("DROP TABLE IF EXISTS bf_owned")
    admin.execute("CREATE TABLE bf_owned (id int PRIMARY KEY, image bytea, feature vector(1280))")
    try:
        admin.execute(f"GRANT ALL ON bf_owned TO {APP_ROLE}")
        for call in ("SELECT pgvision.enable_auto_embed('bf_owned', 'image', 'feature')",
                     "SELECT pgvision.disable_auto_embed('bf_owned')"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(call)
            assert info.value.sqlstate == "42501"
            assert info.value.diag.message_primary == "must be owner of table public.bf_owned"
    finally:
        admin.execute("DROP TABLE bf_owned")


def test_auto_embed_refuses_wrong_columns(conn, make_table):
    make_table("bf_cols", [])
    for args, sqlstate in ((("note", "feature"), "42804"), (("image", "note"), "42804"),
                           (("image", "nope"), "42703")):
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT pgvision.enable_auto_embed('bf_cols', %s, %s)", list(args))
        assert info.value.sqlstate == sqlstate, args


"""Index helpers (create_index, create_ann_index) and the search functions for BI tools.

Index and filter behaviour is tested on synthetic vectors (numpy), inserted directly; only
the image forms of search embed real photos. The synthetic table is 20 tight clusters
("albums") of 150 rows in 16 dimensions, with every 50th row of class 'rare' (2%), so the
nearest 40 rows of any row hold at most 3 rare ones.
"""

import numpy as np
import psycopg
import pytest
from psycopg.sql import Identifier

from conftest import APP_ROLE, dsn
from data import photo

DIM = 16
ALBUMS, PER_ALBUM = 20, 150
N = ALBUMS * PER_ALBUM
# a name that needs quoting twice over: spaces and double quotes
ITEMS = 'search forms "items"'
ITEMS_SQL = '"search forms ""items"""'
QUERY_ID = 7  # in album 0
PHOTO_NAMES = ["dog", "eagle", "giraffe", "horses"]


def synthetic():
    rng = np.random.default_rng(20240611)
    centres = rng.normal(size=(ALBUMS, DIM))
    ids = np.arange(1, N + 1)
    albums = (ids - 1) // PER_ALBUM
    features = (centres[albums] + 0.15 * rng.normal(size=(N, DIM))).astype(np.float32)
    classes = np.where(ids % 50 == 0, "rare", "common")
    return ids, albums, classes, features


IDS, ALBUM, CLASS, FEATURES = synthetic()


def sqlstate(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value.sqlstate, str(e.value)


@pytest.fixture(scope="module")
def items(server):
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        from pgvector.psycopg import register_vector
        register_vector(c)
        c.execute(f"DROP TABLE IF EXISTS {ITEMS_SQL}")
        c.execute(f"CREATE TABLE {ITEMS_SQL} (id bigint PRIMARY KEY, album int, class text,"
                  f" feature vector({DIM}))")
        with c.cursor() as cur, cur.copy(f"COPY {ITEMS_SQL} (id, album, class, feature) FROM STDIN") as cp:
            for i, a, k, f in zip(IDS, ALBUM, CLASS, FEATURES):
                cp.write_row([int(i), int(a), str(k), "[" + ",".join(map(repr, f.tolist())) + "]"])
        # l2, which the search functions then default to, and which the plain <-> SQL here uses
        index = c.execute("SELECT pgvision.create_index(%s, 'feature', metric => 'l2')",
                          [ITEMS_SQL]).fetchone()[0]
        c.execute(f"ANALYZE {ITEMS_SQL}")
    yield index


@pytest.fixture(scope="module")
def photos(server):
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS search_photos")
        c.execute("CREATE TABLE search_photos (id int PRIMARY KEY, name text, image bytea,"
                  " feature vector(1280))")
        for i, name in enumerate(PHOTO_NAMES, 1):
            c.execute("INSERT INTO search_photos VALUES (%s, %s, %s)", [i, name, photo(name)])
        c.execute("""
            WITH b AS (SELECT array_agg(id ORDER BY id) ids, array_agg(image ORDER BY id) imgs FROM search_photos)
            UPDATE search_photos p SET feature = e.feature
            FROM b, unnest(b.ids, pgvision.embed_batch(b.imgs)) AS e (id, feature) WHERE p.id = e.id""")
    yield "search_photos"


def small_table(conn, name="t", dim=8, rows=50, column_type=None):
    """A temporary table of random vectors for the index helpers."""
    rng = np.random.default_rng(1)
    conn.execute(f"CREATE TEMP TABLE {name} (id int PRIMARY KEY, class text, image bytea,"
                 f" feature {column_type or f'vector({dim})'})")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {name} (id, class, feature) VALUES (%s, 'x', %s)",
                        [(i, rng.normal(size=dim).astype(np.float32)) for i in range(rows)])


def indexdef(conn, index):
    return conn.execute("SELECT pg_get_indexdef(c.oid) FROM pg_class c WHERE c.relname = %s",
                        [index]).fetchone()[0]


def l2(i):
    """Exact l2 distances from row i to every row."""
    return np.linalg.norm(FEATURES.astype(np.float64) - FEATURES[i - 1], axis=1)


# ---------------------------------------------------------------------------------------
# create_index

def test_create_index_defaults_to_hnsw_cosine(conn):
    small_table(conn)
    name = conn.execute("SELECT pgvision.create_index('t', 'feature')").fetchone()[0]
    assert name == "t_feature_hnsw_cosine_idx"
    d = indexdef(conn, name)
    assert "USING hnsw (feature vector_cosine_ops) WITH (m='32', ef_construction='200')" in d, d


def test_create_index_ivfflat_cosine_lists_default_is_clamped(conn):
    small_table(conn)
    name = conn.execute("SELECT pgvision.create_index('t', 'feature', metric => 'cosine',"
                        " method => 'ivfflat')").fetchone()[0]
    d = indexdef(conn, name)
    assert "USING ivfflat (feature vector_cosine_ops) WITH (lists='10')" in d, d


def test_create_index_halfvec_is_used_by_the_halfvec_query(conn):
    small_table(conn)
    name = conn.execute("SELECT pgvision.create_index('t', 'feature', metric => 'ip', halfvec => true,"
                        " m => 8, ef_construction => 32, name => 'my half')").fetchone()[0]
    assert name == "my half"
    assert "((feature)::halfvec(8)) halfvec_ip_ops" in indexdef(conn, name)
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM t ORDER BY feature::halfvec(8) <#> %s::halfvec(8) LIMIT 3",
        [np.ones(8, np.float32)]))
    assert 'Index Scan using "my half"' in plan, plan


def test_create_index_numbers_a_taken_name(conn):
    small_table(conn)
    first = conn.execute("SELECT pgvision.create_index('t', 'feature')").fetchone()[0]
    second = conn.execute("SELECT pgvision.create_index('t', 'feature')").fetchone()[0]
    assert (first, second) == ("t_feature_hnsw_cosine_idx", "t_feature_hnsw_cosine_idx1")


INDEX_ERRORS = [
    ("unknown metric", "SELECT pgvision.create_index('t', 'feature', metric => 'hamming')", "22023",
     'unknown metric "hamming"'),
    ("unknown method", "SELECT pgvision.create_index('t', 'feature', method => 'diskann')", "22023",
     'unknown index method "diskann"'),
    ("lists with hnsw", "SELECT pgvision.create_index('t', 'feature', lists => 100)", "22023",
     "lists applies to ivfflat indexes only"),
    ("column not vector", "SELECT pgvision.create_index('t', 'class')", "42804",
     'column "class" of relation t is of type text, not vector'),
    ("no such column", "SELECT pgvision.create_index('t', 'nope')", "42703", 'column "nope"'),
    ("unknown table", "SELECT pgvision.create_index('no_such_table', 'feature')", "42P01", "no_such_table"),
    ("pgvector range check", "SELECT pgvision.create_index('t', 'feature', m => 1)", "22023", "m"),
]


@pytest.mark.parametrize("case, sql, state, words", INDEX_ERRORS, ids=[c[0] for c in INDEX_ERRORS])
def test_create_index_errors(conn, case, sql, state, words):
    small_table(conn)
    got, message = sqlstate(conn, sql)
    assert got == state and words in message, message


def test_create_index_column_without_dimensions(conn):
    small_table(conn, column_type="vector")
    state, message = sqlstate(conn, "SELECT pgvision.create_index('t', 'feature')")
    assert state == "22023" and "has no dimensions" in message


# ---------------------------------------------------------------------------------------
# create_ann_index: AnalyticDB's options

def test_ann_index_runs_the_seed_ddl_options(conn):
    # CREATE INDEX ON images USING ann (feature) WITH (dim=1280, hnsw_m=16, pq_enable=0)
    small_table(conn, name="images", dim=1280, rows=20)
    name = conn.execute("SELECT pgvision.create_ann_index('images', 'feature',"
                        " 'dim=1280, hnsw_m=16, pq_enable=0')").fetchone()[0]
    assert name == "images_feature_hnsw_l2_idx"
    assert "USING hnsw (feature vector_l2_ops) WITH (m='16'" in indexdef(conn, name)


def test_ann_index_accepts_the_with_clause_as_copied(conn):
    small_table(conn)
    name = conn.execute("""SELECT pgvision.create_ann_index('t', 'feature',
        $$WITH (DIM = '8', DISTANCEMEASURE = 'Cosine', HNSW_M = '12', HNSW_EF_CONSTRUCTION = '40',
                PQ_ENABLE = '0', EXTERNAL_STORAGE = '0')$$)""").fetchone()[0]
    d = indexdef(conn, name)
    assert "vector_cosine_ops) WITH (m='12', ef_construction='40')" in d, d


def test_ann_index_accepts_jsonb(conn):
    small_table(conn)
    name = conn.execute("SELECT pgvision.create_ann_index('t', 'feature',"
                        """ '{"dim": 8, "distancemeasure": "InnerProduct"}'::jsonb)""").fetchone()[0]
    assert "vector_ip_ops" in indexdef(conn, name)


def test_ann_index_pq_enable_builds_without_it_and_says_so(conn):
    small_table(conn)
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    name = conn.execute("SELECT pgvision.create_ann_index('t', 'feature', 'dim=8, pq_enable=1,"
                        " pq_segments=4')").fetchone()[0]
    assert "USING hnsw" in indexdef(conn, name)
    assert any("product quantization is not supported" in n for n in notices), notices


ANN_ERRORS = [
    ("dim differs", "'dim=1280'", "22023", 'dim is 1280, but column "feature"'),
    ("unknown option", "'dim=8, lists=100'", "22023", 'unknown ann index option "lists"'),
    ("bad distancemeasure", "'distancemeasure=hamming'", "22023", "invalid value for distancemeasure"),
    ("not an integer", "'hnsw_m=many'", "22023", 'invalid value for hnsw_m: "many"'),
    ("not key = value", "'dim 8'", "22023", 'invalid ann index option "dim 8"'),
    ("json not an object", "'[1]'::jsonb", "22023", "must be a json object"),
]


@pytest.mark.parametrize("case, options, state, words", ANN_ERRORS, ids=[c[0] for c in ANN_ERRORS])
def test_ann_index_errors(conn, case, options, state, words):
    small_table(conn)
    got, message = sqlstate(conn, f"SELECT pgvision.create_ann_index('t', 'feature', {options})")
    assert got == state and words in message, message


def test_ann_index_unknown_option_hint_lists_known_ones(conn):
    small_table(conn)
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT pgvision.create_ann_index('t', 'feature', 'nlist=5')")
    assert "hnsw_m" in e.value.diag.message_hint and "pq_enable" in e.value.diag.message_hint


# ---------------------------------------------------------------------------------------
# search by image, search_batch

def test_search_by_image_finds_itself_first(conn, photos):
    rows = conn.execute("SELECT query_no, rank, id, distance, similarity, item"
                        " FROM pgvision.search('search_photos', %s, k => 3, metric => 'l2')", [photo("eagle")]).fetchall()
    assert [r[1] for r in rows] == [1, 2, 3]
    assert rows[0][0] == 1 and rows[0][2] == "2" and rows[0][3] < 1e-4
    assert all(abs(r[4] - 1 / (1 + r[3])) < 1e-9 for r in rows)  # l2: 1 / (1 + distance)
    # item: the row without the vector and the image bytes
    assert rows[0][5] == {"id": 2, "name": "eagle"}


def test_search_batch_tags_rows_with_the_query_position(conn, photos):
    rows = conn.execute("SELECT query_no, rank, item ->> 'name' FROM pgvision.search_batch("
                        "'search_photos', ARRAY[%s, NULL, %s], k => 2)",
                        [photo("horses"), photo("dog")]).fetchall()
    assert [(q, r) for q, r, _ in rows] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert rows[0][2] == "horses" and rows[2][2] == "dog"


def test_search_batch_refuses_more_than_100_images(conn, photos):
    state, message = sqlstate(conn, "SELECT * FROM pgvision.search_batch('search_photos',"
                              " array_fill('\\x00'::bytea, ARRAY[101]))")
    assert state == "54000" and "too many query images: 101" in message


def test_search_cosine_reports_similarity(conn, photos):
    rows = conn.execute("SELECT distance, similarity FROM pgvision.search('search_photos', %s,"
                        " metric => 'cosine')", [photo("dog")]).fetchall()
    assert len(rows) == len(PHOTO_NAMES)
    assert all(abs(s - (1 - d)) < 1e-9 for d, s in rows)
    assert rows[0][1] > 0.9999


# ---------------------------------------------------------------------------------------
# search_like, metrics, thresholds, expansion (synthetic vectors)

def test_search_like_leaves_the_row_out_and_sorts_by_distance(conn, items):
    rows = conn.execute("SELECT id, distance FROM pgvision.search_like(%s, %s, k => 5)",
                        [ITEMS_SQL, QUERY_ID]).fetchall()
    assert len(rows) == 5 and str(QUERY_ID) not in [r[0] for r in rows]
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    exact = [i for i in np.argsort(l2(QUERY_ID)) + 1 if i != QUERY_ID][:5]
    assert len({int(r[0]) for r in rows} & set(exact)) >= 4
    assert abs(rows[0][1] - l2(QUERY_ID)[int(rows[0][0]) - 1]) < 1e-5


def test_search_metric_defaults_to_the_column_index(conn):
    small_table(conn)
    like = "SELECT id, distance, similarity FROM pgvision.search_like('t', 1, k => 5{})"
    unindexed = conn.execute(like.format("")).fetchall()
    # no index: the default metric, cosine
    assert unindexed == conn.execute(like.format(", metric => 'cosine'")).fetchall()
    l2 = conn.execute(like.format(", metric => 'l2'")).fetchall()
    # an index on an expression serves no search, so it sets no metric
    conn.execute("SELECT pgvision.create_index('t', 'feature', metric => 'ip', halfvec => true)")
    assert conn.execute(like.format("")).fetchall() == unindexed
    conn.execute("SELECT pgvision.create_index('t', 'feature')")
    cosine = conn.execute(like.format("")).fetchall()
    assert cosine == conn.execute(like.format(", metric => 'cosine'")).fetchall()
    assert all(abs(s - (1 - d)) < 1e-9 for _, d, s in cosine)
    assert conn.execute(like.format(", metric => 'l2'")).fetchall() == l2
    # several metrics: the default metric's, what the search functions do without an index
    conn.execute("SELECT pgvision.create_index('t', 'feature', metric => 'l2')")
    assert conn.execute(like.format("")).fetchall() == unindexed


def test_search_like_takes_an_untyped_key(conn, items):
    rows = conn.execute(f"SELECT id FROM pgvision.search_like('{ITEMS_SQL}', '7', k => 2)").fetchall()
    assert len(rows) == 2


def test_ip_reports_the_inner_product_as_similarity(conn, items):
    rows = conn.execute("SELECT id, distance, similarity FROM pgvision.search_like(%s, %s, k => 3,"
                        " metric => 'ip')", [ITEMS_SQL, QUERY_ID]).fetchall()
    q = FEATURES[QUERY_ID - 1].astype(np.float64)
    for i, d, s in rows:
        assert abs(s - q @ FEATURES[int(i) - 1]) < 1e-4 and d == -s
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)


def test_max_distance_drops_farther_rows(conn, items):
    cut = float(np.sort(l2(QUERY_ID))[3])  # itself and the two nearest are closer
    rows = conn.execute("SELECT distance FROM pgvision.search_like(%s, %s, k => 10, max_distance => %s)",
                        [ITEMS_SQL, QUERY_ID, cut]).fetchall()
    assert 1 <= len(rows) <= 3 and all(r[0] <= cut for r in rows)


def test_min_similarity_drops_less_similar_rows(conn, items):
    rows = conn.execute("SELECT similarity FROM pgvision.search_like(%s, %s, k => 10, metric => 'cosine',"
                        " min_similarity => 0.999)", [ITEMS_SQL, QUERY_ID]).fetchall()
    assert len(rows) < 10 and all(r[0] >= 0.999 for r in rows)


def test_expand_searches_with_half_query_half_mean_of_its_neighbours(conn, items):
    first = conn.execute("SELECT id FROM pgvision.search_like(%s, %s, k => 3)",
                         [ITEMS_SQL, QUERY_ID]).fetchall()
    rows = conn.execute("SELECT id, distance FROM pgvision.search_like(%s, %s, k => 3, expand => 3)",
                        [ITEMS_SQL, QUERY_ID]).fetchall()
    neighbours = np.mean([FEATURES[int(r[0]) - 1] for r in first], axis=0)
    mean = 0.5 * FEATURES[QUERY_ID - 1] + 0.5 * neighbours
    i, d = rows[0]
    assert abs(d - np.linalg.norm(FEATURES[int(i) - 1].astype(np.float64) - mean)) < 1e-4


def test_group_by_returns_k_groups_best_first(conn, items):
    # album 0 holds the query's 149 nearest rows: k albums need far more candidates than k.
    # The truth below is exact; the widest search list makes the HNSW scan find it on 3,000
    # rows whatever graph the build drew (at the default 40 it sometimes misses an album's
    # best row: the index is approximate).
    conn.execute("SET hnsw.ef_search = 1000")
    rows = conn.execute("SELECT id, distance, (item ->> 'album')::int FROM pgvision.search_like(%s, %s,"
                        " k => 5, group_by => 'album')", [ITEMS_SQL, QUERY_ID]).fetchall()
    albums = [r[2] for r in rows]
    assert len(rows) == 5 and len(set(albums)) == 5 and albums[0] == 0
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    d = l2(QUERY_ID)
    best = {a: d[(ALBUM == a) & (IDS != QUERY_ID)].min() for a in range(ALBUMS)}
    assert albums == sorted(best, key=best.get)[:5]


# ---------------------------------------------------------------------------------------
# filters and iterative index scans: a 2% filter, k = 10

RARE_PLAIN = (f"SELECT id FROM {ITEMS_SQL} WHERE class = 'rare'"
              f" ORDER BY feature <-> (SELECT feature FROM {ITEMS_SQL} WHERE id = {QUERY_ID}) LIMIT 10")


def force_index(conn):
    # At 3,000 rows the planner rightly prefers a seq scan and a sort for a 2% filter (from
    # about 20,000 rows it picks the index by itself); force the index to test its behaviour.
    conn.execute("SET enable_seqscan = off")


def test_plain_index_scan_returns_fewer_than_k_rows_under_a_selective_filter(conn, items):
    force_index(conn)
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + RARE_PLAIN))
    assert f"Index Scan using {Identifier(items).as_string(conn)}" in plan, plan
    assert len(conn.execute(RARE_PLAIN).fetchall()) < 10


def test_plain_sql_with_iterative_scan_returns_k_rows(conn, items):
    force_index(conn)
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    rows = conn.execute(RARE_PLAIN).fetchall()
    assert len(rows) == 10 and all(CLASS[int(r[0]) - 1] == "rare" for r in rows)


def test_search_returns_k_rows_under_a_selective_filter(conn, items):
    force_index(conn)
    rows = conn.execute("SELECT id, distance FROM pgvision.search_like(%s, %s, k => 10,"
                        " filter => $$class = 'rare'$$)", [ITEMS_SQL, QUERY_ID]).fetchall()
    assert len(rows) == 10 and all(CLASS[int(r[0]) - 1] == "rare" for r in rows)
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)


def test_search_uses_the_index_under_a_selective_filter(admin, items):
    notices = []
    admin.add_notice_handler(lambda d: notices.append(d.message_primary))
    for s in ["LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
              "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_level = notice",
              "SET enable_seqscan = off"]:
        admin.execute(s)
    n = admin.execute("SELECT count(*) FROM pgvision.search_like(%s, %s, k => 10,"
                      " filter => $$class = 'rare'$$)", [ITEMS_SQL, QUERY_ID]).fetchone()[0]
    assert n == 10
    index = Identifier(items).as_string(admin)
    assert any(f"Index Scan using {index}" in m and "class = 'rare'" in m for m in notices), notices


def test_filter_may_hold_percent_signs_and_comments(conn, items):
    rows = conn.execute("SELECT id FROM pgvision.search_like(%s, %s, k => 3,"
                        " filter => $$class LIKE 'ra%%' -- rare only$$)", [ITEMS_SQL, QUERY_ID]).fetchall()
    assert len(rows) == 3 and all(CLASS[int(r[0]) - 1] == "rare" for r in rows)


def test_filter_runs_with_the_callers_privileges(conn, items):
    state, message = sqlstate(conn, "SELECT * FROM pgvision.search_like(%s, %s,"
                              " filter => 'id IN (SELECT 1 FROM pg_authid)')", [ITEMS_SQL, QUERY_ID])
    assert state == "42501" and "pg_authid" in message


def test_filter_syntax_error_propagates(conn, items):
    state, _ = sqlstate(conn, "SELECT * FROM pgvision.search_like(%s, %s, filter => 'class = = 1')",
                        [ITEMS_SQL, QUERY_ID])
    assert state == "42601"


SEARCH_ERRORS = [
    ("unknown metric", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 7, metric => 'hamming')",
     "22023", 'unknown metric "hamming"'),
    ("k = 0", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 7, k => 0)", "22023",
     "k must be at least 1, not 0"),
    ("negative expand", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 7, expand => -1)", "22023",
     "expand must be between 0 and 1000"),
    ("unknown table", "SELECT * FROM pgvision.search('no_such_table', '\\x00'::bytea)", "42P01", "no_such_table"),
    ("column not a vector", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 7, feature_column => 'class')",
     "42804", "is of type text, not vector"),
    ("unknown group column", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 7, group_by => 'nope')",
     "42703", 'column "nope"'),
    ("no such key", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 999999)", "P0002",
     "has no row with key 999999"),
    ("key of the wrong type", f"SELECT * FROM pgvision.search_like('{ITEMS_SQL}', 'seven')", "22P02", "seven"),
]


@pytest.mark.parametrize("case, sql, state, words", SEARCH_ERRORS, ids=[c[0] for c in SEARCH_ERRORS])
def test_search_errors(conn, items, case, sql, state, words):
    got, message = sqlstate(conn, sql)
    assert got == state and words in message, message


def test_search_like_needs_a_primary_key(conn):
    small_table(conn)
    conn.execute("ALTER TABLE t DROP CONSTRAINT t_pkey")
    state, message = sqlstate(conn, "SELECT * FROM pgvision.search_like('t', 1)")
    assert state == "42P16" and "has no primary key" in message


def test_search_without_a_primary_key_has_no_id(conn, photos):
    conn.execute("CREATE TEMP TABLE nokey AS SELECT name, feature FROM search_photos")
    rows = conn.execute("SELECT id, item FROM pgvision.search('nokey', %s, k => 1)", [photo("dog")]).fetchall()
    assert rows == [(None, {"name": "dog"})]

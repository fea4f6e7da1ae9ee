"""pgvision.search_vector (a vector as the query), similarity for every metric, and joining
search results back to their rows (typed key, thumbnails), as an ordinary role."""

import base64
import io

import numpy as np
import psycopg
import pytest
from PIL import Image

from data import photo

# no two distances equal from the queries below, with any metric
POINTS = [(1, "a", [1, 0, 0]), (2, "a", [0.9, 0.15, 0]), (3, "b", [0.1, 1, 0]), (4, "b", [0, 0.8, 0.3]),
          (5, "c", [0.05, 0.02, 1]), (6, "c", [-1, 0, 0.2]), (7, "a", [2, 0.1, 0.05]), (8, None, None)]
OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>"}


@pytest.fixture(scope="module")
def points(server):
    from conftest import APP_ROLE, dsn
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS vpoints")
        c.execute("CREATE TABLE vpoints (id int PRIMARY KEY, label text, feature vector(3))")
        for pid, label, vec in POINTS:
            c.execute("INSERT INTO vpoints VALUES (%s, %s, %s::vector)",
                      [pid, label, None if vec is None else str(vec)])
    return "vpoints"


def search(conn, sql, params=()):
    return conn.execute(sql, params).fetchall()


def test_a_stored_vector_finds_its_row_first(conn, points):
    rows = search(conn, "SELECT query_no, rank, id, distance FROM pgvision.search_vector("
                        "'vpoints', (SELECT feature FROM vpoints WHERE id = 3), 3)")
    assert [r[:3] for r in rows] == [(1, 1, "3"), (1, 2, "4"), (1, 3, "2")]
    assert rows[0][3] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("metric", sorted(OPERATORS))
def test_same_rows_and_distances_as_the_plain_query(conn, points, metric):
    q = "[0.6,0.3,0.15]"
    got = search(conn, "SELECT id, distance, similarity FROM pgvision.search_vector("
                       "'vpoints', %s::vector, 5, metric => %s)", [q, metric])
    want = search(conn, f"SELECT id::text, feature {OPERATORS[metric]} %s::vector FROM vpoints "
                        f"WHERE feature IS NOT NULL ORDER BY 2, 1 LIMIT 5", [q])
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want])
    for _, distance, similarity in got:
        expected = {"l2": 1 / (1 + distance), "cosine": 1 - distance, "ip": -distance}[metric]
        assert similarity == pytest.approx(expected)
    # larger is nearer, for every metric
    sims = [g[2] for g in got]
    assert sims == sorted(sims, reverse=True)


def test_min_similarity_works_with_l2(conn, points):
    # 1 / (1 + d) >= 0.5 is d <= 1
    by_sim = search(conn, "SELECT id FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 10,"
                          " metric => 'l2', min_similarity => 0.5)")
    by_dist = search(conn, "SELECT id FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 10,"
                           " metric => 'l2', max_distance => 1)")
    assert by_sim == by_dist and 0 < len(by_sim) < 7


def test_options(conn, points):
    rows = search(conn, "SELECT id FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 3,"
                        " filter => 'label = ''b''')")
    assert sorted(r[0] for r in rows) == ["3", "4"]
    rows = search(conn, "SELECT item->>'label' FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 3,"
                        " group_by => 'label')")
    assert rows[0][0] == "a" and {r[0] for r in rows} == {"a", "b", "c"}
    rows = search(conn, "SELECT id FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 2, expand => 2)")
    assert len(rows) == 2


def test_a_mean_of_vectors_as_the_query(conn, points):
    rows = search(conn, "SELECT id FROM pgvision.search_vector('vpoints',"
                        " (SELECT avg(feature) FROM vpoints WHERE label = 'a'), 3)")
    assert {r[0] for r in rows} == {"1", "2", "7"}


def test_search_like_is_search_vector_without_the_row(conn, points):
    like = search(conn, "SELECT id, distance FROM pgvision.search_like('vpoints', 1, 4)")
    vec = search(conn, "SELECT id, distance FROM pgvision.search_vector('vpoints',"
                       " (SELECT feature FROM vpoints WHERE id = 1), 5) WHERE id <> '1'")
    assert like == vec[:4]


@pytest.mark.parametrize("case,sql,sqlstate,words", [
    ("null vector", "SELECT * FROM pgvision.search_vector('vpoints', NULL::vector)", "22004",
     "query vector must not be null"),
    ("null table", "SELECT * FROM pgvision.search_vector(NULL, '[1,0,0]'::vector)", "22004", "must not be null"),
    ("wrong dimensions", "SELECT * FROM pgvision.search_vector('vpoints', '[1,0]'::vector)", "22000",
     "expected 3 dimensions, not 2"),
    ("k 0", "SELECT * FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, 0)", "22023",
     "k must be at least 1"),
    ("not a vector column", "SELECT * FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector,"
     " feature_column => 'label')", "42804", "not vector"),
    ("unknown metric", "SELECT * FROM pgvision.search_vector('vpoints', '[1,0,0]'::vector, metric => 'hamming')",
     "22023", 'unknown metric "hamming"'),
])
def test_bad_input(conn, points, case, sql, sqlstate, words):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert info.value.sqlstate == sqlstate, str(info.value)
    assert words in info.value.diag.message_primary


@pytest.fixture(scope="module")
def pictures(server):
    from conftest import APP_ROLE, dsn
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS vpictures")
        c.execute("CREATE TABLE vpictures (id int PRIMARY KEY, name text, image bytea, feature vector(1280))")
        for i, name in enumerate(["dog", "eagle", "kite"], 1):
            c.execute("INSERT INTO vpictures VALUES (%s, %s, %s, pgvision.embed(%s))",
                      [i, name, photo(name), photo(name)])
    return "vpictures"


def test_search_by_image_is_search_by_its_vector(conn, pictures):
    by_image = search(conn, "SELECT id, distance FROM pgvision.search('vpictures', %s, 3)", [photo("eagle")])
    by_vector = search(conn, "SELECT id, distance FROM pgvision.search_vector('vpictures',"
                             " pgvision.embed(%s), 3)", [photo("eagle")])
    assert [r[0] for r in by_image] == [r[0] for r in by_vector] and by_image[0][0] == "2"
    assert [r[1] for r in by_image] == pytest.approx([r[1] for r in by_vector], abs=1e-6)


def test_an_untyped_image_parameter_still_finds_the_image_form(conn, pictures):
    """Drivers that send parameters untyped (node-postgres, asyncpg) reach search(tbl, $1):
    there is one function of that name and shape for them to find."""
    # psycopg sends a str parameter untyped (OID 0), as those drivers send every parameter
    hexed = "\\x" + photo("kite").hex()
    assert conn.execute("SELECT id FROM pgvision.search('vpictures', %s, 1)", [hexed]).fetchone()[0] == "3"


def test_join_back_with_a_typed_key_and_a_thumbnail(conn, pictures):
    """The README's form: results joined to their rows on the key (the cast on the result's
    side), with a data: URL thumbnail of each for a BI tool to show."""
    rows = search(conn, """
        SELECT s.rank, t.id, t.name, pgvision.data_url(t.image, 64) AS thumbnail
        FROM pgvision.search('vpictures', %s, 3) s
        JOIN vpictures t ON t.id = s.id::int
        ORDER BY s.rank""", [photo("dog")])
    assert [r[0] for r in rows] == [1, 2, 3] and rows[0][1:3] == (1, "dog")
    for _, _, _, url in rows:
        assert url.startswith("data:image/jpeg;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert max(img.size) == 64


def test_item_keeps_the_key_typed(conn, pictures):
    """item is jsonb: (item->>'id')::int, or item->'id' as a JSON number."""
    row = conn.execute("SELECT item->'id', jsonb_typeof(item->'id') FROM pgvision.search('vpictures', %s, 1)",
                       [photo("dog")]).fetchone()
    assert row == (1, "number")
    assert np.isfinite(conn.execute("SELECT similarity FROM pgvision.search('vpictures', %s, 1, metric => 'l2')",
                                    [photo("dog")]).fetchone()[0])

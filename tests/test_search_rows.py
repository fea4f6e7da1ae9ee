"""pgvision.search_rows: search results as the table's own typed rows, for BI tools."""

import psycopg
import pytest

from data import PHOTOS, photo


@pytest.fixture(scope="module")
def pets(server):
    from conftest import APP_ROLE, dsn

    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS pets")
        c.execute("CREATE TABLE pets (id bigint PRIMARY KEY, name text, image bytea, feature vector(1280))")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO pets VALUES (%s, %s, %s, pgvision.embed(%s))",
                            [(i * 10, n, photo(n), photo(n)) for i, n in enumerate(PHOTOS, 1)])
        c.execute("SELECT pgvision.create_index('pets', 'feature')")
    return "pets"


def test_rows_come_back_typed_and_in_the_order_of_search(conn, pets):
    rows = conn.execute("SELECT s.rank, s.distance, (s.found).id, (s.found).name, pg_typeof((s.found).id)::text,"
                        " length((s.found).image) FROM pgvision.search_rows(NULL::pets, %s, k => 3) s",
                        [photo("dog")]).fetchall()
    plain = conn.execute("SELECT rank, id, distance FROM pgvision.search('pets', %s, k => 3)", [photo("dog")]).fetchall()
    assert [(r[0], str(r[2]), r[1]) for r in rows] == plain
    assert rows[0][3] == "dog" and rows[0][4] == "bigint" and rows[0][5] == len(photo("dog"))
    # a join on the key needs no cast, and a picture needs no join
    joined = conn.execute("SELECT p.name, left(pgvision.data_url((s.found).image, 32), 23)"
                          " FROM pgvision.search_rows(NULL::pets, %s, k => 2, filter => 'name <> ''dog''') s"
                          " JOIN pets p ON p.id = (s.found).id ORDER BY s.rank", [photo("dog")]).fetchall()
    assert len(joined) == 2 and "dog" not in [j[0] for j in joined]
    assert joined[0][1] == "data:image/jpeg;base64,"


def test_what_it_refuses(conn, pets):
    with pytest.raises(psycopg.errors.DatatypeMismatch) as e:
        conn.execute("SELECT * FROM pgvision.search_rows(NULL::int, %s)", [photo("dog")])
    assert "NULL::images" in e.value.diag.message_hint
    conn.execute("DROP TABLE IF EXISTS pets_nokey")
    conn.execute("CREATE TABLE pets_nokey AS SELECT * FROM pets")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("SELECT * FROM pgvision.search_rows(NULL::pets_nokey, %s)", [photo("dog")])
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM pgvision.search_rows(NULL::pets, %s, k => 0)", [photo("dog")])

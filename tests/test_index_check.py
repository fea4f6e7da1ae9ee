"""pgvision.check_index and create_index's check of a new HNSW graph.

pgvector builds an HNSW graph in table order; rows loaded first as a loose group of their
own, before thousands of rows of another kind, lose the links later rows would give them,
and some cannot be found even by their own feature. The synthetic table: 300 rows spread
around one direction, then 10,000 tight ones around another (16 dimensions; 10,000 rows or
more, where the search functions, and so the check, read an m 32 graph at ef_search 200).
The check must miss at least 5 of the 200 rows it samples from the table's first twentieth,
and none after a CLUSTER in hashed key order.
"""

import numpy as np
import psycopg
import pytest

DIM = 16


def island_rows():
    rng = np.random.default_rng(1)
    loose = np.eye(DIM)[0] + 0.5 * rng.standard_normal((300, DIM))
    tight = np.eye(DIM)[1] + 0.05 * rng.standard_normal((10000, DIM))
    return np.concatenate([loose, tight]).astype(np.float32)


def load(conn, name, rows):
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, feature vector({DIM}))")
    with conn.cursor().copy(f"COPY {name} (id, feature) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int8", "vector"])
        for i, f in enumerate(rows):
            cp.write_row((i, f))


def warnings_of(conn):
    """The WARNINGs the connection receives from now on, as (message, hint); a notice's
    fields are readable only inside the handler."""
    said = []
    conn.add_notice_handler(lambda d: said.append((d.message_primary, d.message_hint))
                            if d.severity_nonlocalized == "WARNING" else None)
    return said


def check(conn, index):
    return {part: (sampled, reached) for part, sampled, reached, _ in
            conn.execute("SELECT * FROM pgvision.check_index(%s)", [index]).fetchall()}


def test_rows_loaded_first_apart_are_reported_and_a_cluster_mends_them(conn):
    load(conn, "loaded_apart", island_rows())
    said = warnings_of(conn)
    index = conn.execute("SELECT pgvision.create_index('loaded_apart', 'feature')").fetchone()[0]
    assert len(said) == 1, said
    assert "cannot be found by their own feature" in said[0][0]
    assert "hashtext(id::text)" in said[0][1] and "CLUSTER public.loaded_apart USING mix" in said[0][1]
    got = check(conn, "public." + index)
    sampled, reached = got["first twentieth"]
    assert sampled == 200 and reached <= 195, got
    # the hint's remedy: the rows in hashed key order, every index built again
    conn.execute("CREATE INDEX mix ON loaded_apart ((pg_catalog.hashtext(id::text)))")
    conn.execute("CLUSTER loaded_apart USING mix")
    conn.execute("DROP INDEX mix")
    assert check(conn, index) == {"first twentieth": (200, 200), "whole table": (200, 200)}


def test_a_graph_of_mixed_rows_passes_without_a_warning(conn):
    rows = island_rows()
    load(conn, "loaded_mixed", rows[np.random.default_rng(2).permutation(len(rows))])
    said = warnings_of(conn)
    index = conn.execute("SELECT pgvision.create_index('loaded_mixed', 'feature')").fetchone()[0]
    assert not said
    got = check(conn, index)
    assert got["first twentieth"][0] == 200 and got["whole table"][0] == 200
    assert got["first twentieth"][1] >= 198 and got["whole table"][1] >= 198, got


def test_a_halfvec_index_and_a_small_sample(conn):
    rows = island_rows()[::10]
    load(conn, "loaded_half", rows[np.random.default_rng(3).permutation(len(rows))])
    index = conn.execute("SELECT pgvision.create_index('loaded_half', 'feature', halfvec => true)").fetchone()[0]
    # the table's first twentieth is its first page here
    first_page = conn.execute("SELECT count(*) FROM loaded_half WHERE ctid < '(1,0)'").fetchone()[0]
    got = check(conn, index)
    assert got["first twentieth"][0] == min(200, first_page) and got["whole table"][0] == 200, got
    assert got["whole table"][1] >= 196 and got["first twentieth"][1] >= got["first twentieth"][0] - 2, got
    rows = conn.execute("SELECT part, sampled FROM pgvision.check_index(%s, sample => 10)", [index]).fetchall()
    assert rows == [("first twentieth", 5), ("whole table", 5)]


@pytest.mark.parametrize("sql, state, words", [
    ("SELECT * FROM pgvision.check_index('loaded_ivf_feature_ivfflat_cosine_idx')", "42809", "not an HNSW index"),
    ("SELECT * FROM pgvision.check_index('loaded_ivf')", "42809", "not an HNSW index"),
    ("SELECT * FROM pgvision.check_index('loaded_ivf_feature_ivfflat_cosine_idx', sample => 1)", "22023", "sample"),
    ("SELECT * FROM pgvision.check_index('loaded_ivf_feature_ivfflat_cosine_idx', sample => 20000)", "22023", "sample"),
    ("SELECT * FROM pgvision.check_index(NULL)", "22004", "must not be null"),
])
def test_check_index_errors(conn, sql, state, words):
    load(conn, "loaded_ivf", island_rows()[::20])
    conn.execute("SELECT pgvision.create_index('loaded_ivf', 'feature', method => 'ivfflat', lists => 4)")
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert e.value.sqlstate == state and words in str(e.value), str(e.value)


def test_a_partitioned_table_is_indexed_and_its_partitions_checked(conn):
    conn.execute("DROP TABLE IF EXISTS loaded_parts")
    conn.execute(f"CREATE TABLE loaded_parts (id bigint, feature vector({DIM})) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE loaded_parts_1 PARTITION OF loaded_parts FOR VALUES FROM (0) TO (1000)")
    conn.execute("CREATE TABLE loaded_parts_2 PARTITION OF loaded_parts FOR VALUES FROM (1000) TO (5000)")
    rows = island_rows()[::4]
    rows = rows[np.random.default_rng(4).permutation(len(rows))]
    with conn.cursor().copy("COPY loaded_parts (id, feature) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int8", "vector"])
        for i, f in enumerate(rows):
            cp.write_row((i, f))
    conn.execute("SELECT pgvision.create_index('loaded_parts', 'feature')")
    part_index = conn.execute("SELECT indexrelid::regclass::text FROM pg_index"
                              " WHERE indrelid = 'loaded_parts_1'::regclass").fetchone()[0]
    got = check(conn, part_index)
    assert got["whole table"][0] == 200 and got["whole table"][1] >= 196, got
    parent = conn.execute("SELECT indexrelid::regclass::text FROM pg_index"
                          " WHERE indrelid = 'loaded_parts'::regclass").fetchone()[0]
    with pytest.raises(psycopg.Error) as e:
        check(conn, parent)
    assert e.value.sqlstate == "42809"

"""pgvision.evaluate against the same measures computed with numpy.

The table is synthetic (no model needed): 300 rows in 16 dimensions, 10 labels whose
centres overlap enough that rankings mix them, plus one label with a single row, rows
without a label and rows without a feature. Column "feature" has no index, so its search
is exact; "feature_ivf" holds the same vectors under an ivfflat index of 100 lists, read at the
search functions' 2·sqrt(lists) = 20 probes, whose
recall is below 1.
"""

import hashlib

import numpy as np
import psycopg
import pytest

TBL = "evaluate_items"
NOPK = "evaluate_nopk"
DIM, LABELS, PER_LABEL, K, Q = 16, 10, 30, 10, 60


def synthetic():
    rng = np.random.default_rng(20261201)
    centres = rng.normal(size=(LABELS, DIM))
    n = LABELS * PER_LABEL
    ids = np.arange(1, n + 1)
    labels = [f"c{(i - 1) % LABELS}" for i in ids]
    features = (centres[(ids - 1) % LABELS] + 1.2 * rng.normal(size=(n, DIM))).astype(np.float32)
    labels[4] = "solo"          # a label with one row: no other relevant row, AP 0
    labels[5] = labels[17] = None  # unlabelled: neither queries nor results
    present = np.ones(n, bool)
    present[[8, 29]] = False    # no feature
    return ids, labels, features, present


IDS, LABEL, FEATURES, PRESENT = synthetic()


def vec(f):
    return "[" + ",".join(map(repr, f.tolist())) + "]"


@pytest.fixture(scope="module")
def table(server):
    from conftest import APP_ROLE, dsn
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {TBL}, {NOPK}")
        c.execute(f"CREATE TABLE {TBL} (id int PRIMARY KEY, label text, nolabel text,"
                  f" feature vector({DIM}), feature_ivf vector({DIM}))")
        with c.cursor() as cur, cur.copy(f"COPY {TBL} (id, label, feature, feature_ivf) FROM STDIN") as cp:
            for i, lab, f, p in zip(IDS, LABEL, FEATURES, PRESENT):
                v = vec(f) if p else None
                cp.write_row([int(i), lab, v, v])
        c.execute(f"SELECT pgvision.create_index('{TBL}', 'feature_ivf', method => 'ivfflat', lists => 100)")
        c.execute(f"ANALYZE {TBL}")
        c.execute(f"CREATE TABLE {NOPK} (id int, label text, feature vector({DIM}))")
        yield TBL
        c.execute(f"DROP TABLE IF EXISTS {TBL}, {NOPK}")


def sample():
    """The query rows as evaluate picks them: a feature and a label, by md5 of the key."""
    ok = [i for i, lab, p in zip(IDS, LABEL, PRESENT) if lab is not None and p]
    return sorted(ok, key=lambda i: (hashlib.md5(str(i).encode()).hexdigest(), i))[:Q]


def exact(q):
    """Ids of the rows searched (feature and label, not q), nearest first by cosine."""
    rows = [j for j in range(len(IDS)) if LABEL[j] is not None and PRESENT[j] and IDS[j] != q]
    f = FEATURES[rows].astype(np.float64)
    x = FEATURES[q - 1].astype(np.float64)
    d = 1 - f @ x / (np.linalg.norm(f, axis=1) * np.linalg.norm(x))
    order = np.argsort(d, kind="stable")
    return [int(IDS[rows[o]]) for o in order], np.sort(d)


def measures(ranked, q):
    """precision@K, AP@K of a ranked id list for query q."""
    lab = LABEL[q - 1]
    rel = [LABEL[i - 1] == lab for i in ranked[:K]]
    hits, s = 0, 0.0
    for rank, r in enumerate(rel, 1):
        if r:
            hits += 1
            s += hits / rank
    others = sum(1 for j in range(len(IDS)) if LABEL[j] == lab and PRESENT[j]) - 1
    return hits / K, (s / min(K, others) if others > 0 else 0.0)


def expected(results):
    """Rows as evaluate returns them from {q: (precision, ap, recall)}: per label, then all."""
    by = {}
    for q, m in results.items():
        by.setdefault(LABEL[q - 1], []).append(m)
    rows = [(lab, len(ms), *np.mean(ms, axis=0)) for lab, ms in sorted(by.items())]
    return rows + [(None, len(results), *np.mean(list(results.values()), axis=0))]


def assert_rows(got, want):
    assert [(r[0], r[1]) for r in got] == [(r[0], r[1]) for r in want]
    for g, w in zip(got, want):
        assert g[2:] == pytest.approx(w[2:], abs=1e-9), g[0]


def evaluate(conn, column):
    return conn.execute("SELECT * FROM pgvision.evaluate(%s, 'label', k => %s, queries => %s,"
                        " feature_column => %s)", [TBL, K, Q, column]).fetchall()


def test_exact_column_against_numpy(conn, table):
    want = {}
    for q in sample():
        p, ap = measures(exact(q)[0], q)
        want[q] = (p, ap, 1.0)
    got = evaluate(conn, None)  # NULL: the column "feature"
    assert_rows(got, expected(want))
    assert got == evaluate(conn, "feature")  # the same queries, the same figures
    assert got[-1][0] is None and got[-1][1] == Q


def test_indexed_column_against_numpy(conn, table):
    # small table: keep the planner on the index, as it would be on a large one
    conn.execute("SET enable_seqscan = off")
    want = {}
    for q in sample():
        approx = conn.execute(
            "SELECT id::int, distance FROM pgvision.search_like(%s, %s, k => %s,"
            " feature_column => 'feature_ivf', filter => 'label IS NOT NULL')", [TBL, q, K]).fetchall()
        ids, d = exact(q)
        kth = d[min(K, len(d)) - 1]
        within = sum(1 for _, dist in approx if dist <= kth + 1e-6)
        p, ap = measures([i for i, _ in approx], q)
        want[q] = (p, ap, within / min(K, len(d)))
    got = evaluate(conn, "feature_ivf")
    assert_rows(got, expected(want))
    plain = evaluate(conn, "feature")
    assert plain[-1][4] == 1.0
    assert got[-1][4] < 1.0  # the index misses rows the exact scan finds
    # the same query rows in both columns
    assert [(r[0], r[1]) for r in got] == [(r[0], r[1]) for r in plain]


def test_all_rows_and_a_solo_label(conn, table):
    assert conn.execute(f"SELECT query_count FROM pgvision.evaluate('{TBL}', 'label')"
                        " WHERE label IS NULL").fetchone() == (200,)  # the default
    rows = conn.execute(f"SELECT * FROM pgvision.evaluate('{TBL}', 'label', queries => 1000)").fetchall()
    n = sum(1 for lab, p in zip(LABEL, PRESENT) if lab is not None and p)
    assert rows[-1][:2] == (None, n)
    solo = next(r for r in rows if r[0] == "solo")
    assert solo[1:4] == (1, 0.0, 0.0)


@pytest.mark.parametrize("args, state", [
    ("NULL, 'label'", "22004"),
    (f"'{TBL}', NULL", "22004"),
    (f"'{TBL}', 'label', k => NULL", "22004"),
    (f"'{TBL}', 'label', queries => NULL", "22004"),
    (f"'{TBL}', 'label', k => 0", "22023"),
    (f"'{TBL}', 'label', k => -5", "22023"),
    (f"'{TBL}', 'label', queries => 0", "22023"),
    (f"'{TBL}', 'no_such_label'", "42703"),
    (f"'{TBL}', 'label', feature_column => 'no_such_feature'", "42703"),
    (f"'{TBL}', 'label', feature_column => 'label'", "42804"),
    (f"'{TBL}', 'nolabel'", "P0002"),
    (f"'{NOPK}', 'label'", "42P16"),
])
def test_bad_arguments(conn, table, args, state):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(f"SELECT * FROM pgvision.evaluate({args})")
    assert e.value.sqlstate == state, str(e.value)


def test_reads_only_what_the_caller_may(conn, admin, table):
    admin.execute("DROP TABLE IF EXISTS evaluate_private")
    admin.execute(f"CREATE TABLE evaluate_private (id int PRIMARY KEY, label text, feature vector({DIM}))")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgvision.evaluate('evaluate_private', 'label')")
    finally:
        admin.execute("DROP TABLE evaluate_private")

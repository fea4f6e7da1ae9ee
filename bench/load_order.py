"""Load order and create_index's HNSW graph: what its check says, and the CLUSTER that mends it.

    build/venv/bin/python bench/load_order.py [ROWS] ['photos first'] [shuffled]

The mixed collection of bench/search.py (its cached features; run that first), ROWS rows
(default 100,000) loaded photos first or shuffled, indexed by pgvision.create_index's
defaults. Prints create_index's WARNING, pgvision.check_index, and the top-1 agreement with
an exact scan (float64 numpy) of the plain form at ef_search 100, 200, 400 and of
pgvision.search_vector; for photos first, the same again after the hint's remedy (CLUSTER in
hashed key order, which rebuilds the index). Figures go to bench/results/load_order.json, which search.py's mixed-collection section reports.
Timings here are for orientation: search.py measures them side by side.
"""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np, psycopg
import common, search
from pgvector.psycopg import register_vector

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
orders = sys.argv[2:] or ["photos first", "shuffled"]
small, kinds, filler, queries, qkinds, cached = search.mixed_data()
qphoto = np.array([k != "fashion" for k in qkinds])
res = []

def measure(ci, t, label, u, uq, true_dist, efs=(200,)):
    out = {}
    conn = psycopg.connect(ci, autocommit=True); register_vector(conn)
    forms = [(f"plain ef {e}", f"SELECT id FROM {t} ORDER BY feature <=> %b LIMIT 10", [f"SET hnsw.ef_search = {e}", "SET enable_seqscan = off"]) for e in efs]
    forms.append(("search_vector", f"SELECT id::bigint FROM pgvision.search_vector('{t}', %b, 10) WHERE rank = 1", ["RESET hnsw.ef_search", "RESET enable_seqscan"]))
    for name, sql, sets in forms:
        for s in sets:
            conn.execute(s)
        for q in queries[:50]:
            conn.execute(sql, (q,), prepare=True).fetchone()
        got, times = [], []
        for q in queries:
            s = time.perf_counter()
            got.append(conn.execute(sql, (q,), prepare=True).fetchone()[0]); times.append(time.perf_counter() - s)
        got = np.array(got)
        ok = (1.0 - np.einsum("ij,ij->i", u[got], uq)) <= true_dist + 1e-6
        r = dict(label=label, form=name, agreement=float(ok.mean()), photo=float(ok[qphoto].mean()),
                 fashion=float(ok[~qphoto].mean()), p50=1e3 * float(np.median(times)))
        res.append(r)
        print("   %-28s %-14s agree %.4f photo %.4f fash %.4f p50 %.2f ms" % (label, name, r["agreement"], r["photo"], r["fashion"], r["p50"]), flush=True)
    conn.close()

def notices(conn):
    msgs = []
    conn.add_notice_handler(lambda d: msgs.append(f"{d.severity}: {d.message_primary} | {d.message_hint}"))
    return msgs

with common.Server("load-order", 55442, search.MIXED_SETTINGS) as server:
    ci = server.conninfo
    with psycopg.connect(ci, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgvision CASCADE")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    for order in orders:
        rows, perm = search.mixed_rows(small, filler, cached, N, order)
        true_ids, true_dist, u, uq = search.mixed_truth(rows, queries)
        t = "remedy_" + order.replace(" ", "_")
        with psycopg.connect(ci, autocommit=True) as c:
            register_vector(c)
            msgs = notices(c)
            search.mixed_table(c, t, rows)
            s = time.perf_counter()
            name = c.execute(f"SELECT pgvision.create_index('{t}', 'feature')").fetchone()[0]
            build = time.perf_counter() - s
            s = time.perf_counter()
            chk = c.execute("SELECT * FROM pgvision.check_index(%s)", [name]).fetchall()
            chk_s = time.perf_counter() - s
            print(f"{order}: create_index {build:.0f} s (with its check), check_index {chk_s:.1f} s: {chk}", flush=True)
            print("   " + "\n   ".join(msgs), flush=True)
            res.append(dict(order=order, build_s=build, check_s=chk_s, check=[list(map(str, r)) for r in chk], notices=list(msgs)))
            c.execute(f"SELECT pg_prewarm('{name}'::regclass)"); c.execute(f"SELECT pg_prewarm('{t}'::regclass)")
        measure(ci, t, order, u, uq, true_dist, efs=(100, 200, 400))
        if order == "photos first":
            with psycopg.connect(ci, autocommit=True) as c:
                msgs.clear()
                s = time.perf_counter()
                c.execute(f"CREATE INDEX mix ON {t} ((pg_catalog.hashtext(id::text)))")
                c.execute(f"CLUSTER {t} USING mix")
                c.execute("DROP INDEX mix")
                cl = time.perf_counter() - s
                chk = c.execute("SELECT * FROM pgvision.check_index(%s)", [name]).fetchall()
                print(f"  after CLUSTER ({cl:.0f} s): check_index {chk}", flush=True)
                res.append(dict(order=order + ", clustered", cluster_s=cl, check=[list(map(str, r)) for r in chk]))
                c.execute(f"SELECT pg_prewarm('{name}'::regclass)"); c.execute(f"SELECT pg_prewarm('{t}'::regclass)")
            measure(ci, t, order + ", clustered", u, uq, true_dist, efs=(100, 200, 400))
        with psycopg.connect(ci, autocommit=True) as c:
            c.execute(f"DROP TABLE {t}")
        json.dump({"rows": N, "runs": res}, open(common.RESULTS / "load_order.json", "w"), indent=1)

"""Fashion-MNIST end to end on a throwaway server: load, embed, index, then search quality.

    build/venv/bin/python bench/ingest.py [--images 70000] [--queries 1000] [--dir /var/tmp/pgvision-bench]

One command: writes the images as PNG files, loads them with the client's binary COPY,
embeds them in the database with CALL pgvision.embed_table, builds the HNSW index with
pgvector's defaults, and prints wall times, images per second, recall@10 of the HNSW
search against an exact scan (vector and halfvec), and precision@10 by class with and
without query expansion.
"""

import argparse
import os
import pathlib
import random
import sys
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "client"))
from pgvision_client import db, demo, load  # noqa: E402

TABLE = "images"


def write_pngs(folder, n):
    """The first n images of train + test as PNGs; returns load items."""
    items = []
    for split in ("train", "test"):
        data = demo.Fashion(split)
        for i in range(len(data.labels)):
            if len(items) == n:
                return items
            cls = demo.FASHION_CLASSES[data.labels[i]]
            path = folder / split / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                data.image(i).save(path)
            items.append(load.Item(path, cls))
    return items


def timed(label, fn, count=None):
    t = time.monotonic()
    out = fn()
    took = time.monotonic() - t
    rate = f", {count / took:.1f} images/s" if count else ""
    print(f"{label:<34} {took:8.1f} s{rate}", flush=True)
    return out, took


def exact_top(conn, queries, k):
    # not prepared: a cached plan made with the index turned off would outlive the RESET
    conn.execute("SET enable_indexscan = off")
    out = [{r[0] for r in conn.execute(f"SELECT id FROM {TABLE} ORDER BY feature <-> %s LIMIT {k}",
                                       [q], prepare=False)}
           for q in queries]
    conn.execute("RESET enable_indexscan")
    return out


def recall(conn, queries, exact, k, order_expr, cast=""):
    """Mean overlap of the index's top-k with the exact top-k."""
    hits = 0
    for q, truth in zip(queries, exact):
        found = {r[0] for r in conn.execute(
            f"SELECT id FROM {TABLE} ORDER BY {order_expr} <-> %s{cast} LIMIT {k}", [q], prepare=False)}
        hits += len(truth & found)
    return hits / (k * len(queries))


def precision(conn, ids, k, expand, metric):
    hits = 0
    for i in ids:
        rows = conn.execute(
            "SELECT s.item ->> 'class' = q.class FROM images q, pgvision.search_like("
            "'images', %s, k => %s, metric => %s, expand => %s) s WHERE q.id = %s",
            [i, k, metric, expand, i]).fetchall()
        hits += sum(1 for r in rows if r[0])
    return hits / (k * len(ids))


def quality(conn, args):
    """recall@10 of HNSW (vector, halfvec) against exact search; precision@10 with expansion."""
    register_vector(conn)
    count = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    rng = random.Random(0)
    ids = rng.sample(range(1, count + 1), args.queries)
    queries = [r[0] for r in conn.execute(f"SELECT feature FROM {TABLE} WHERE id = ANY(%s)", [ids])]
    size = conn.execute("SELECT pg_size_pretty(pg_relation_size(i.indexrelid)) FROM pg_index i "
                        "WHERE i.indrelid = 'images'::regclass AND i.indexrelid::regclass::text "
                        "LIKE '%%hnsw_l2_idx'").fetchone()
    exact, _ = timed(f"exact top-10, {args.queries} queries", lambda: exact_top(conn, queries, 10))
    r, _ = timed(f"recall@10 vector, {args.queries} queries",
                 lambda: recall(conn, queries, exact, 10, "feature"))
    print(f"  recall@10 HNSW vs exact, vector, ef_search 40: {r:.4f}  (index {size[0]})")
    if not conn.execute("SELECT 1 FROM pg_indexes WHERE tablename = 'images' "
                        "AND indexdef LIKE '%%halfvec%%'").fetchone():
        timed("halfvec HNSW index", lambda: conn.execute(
            "SELECT pgvision.create_index('images', 'feature', halfvec => true)"))
    rh, _ = timed(f"recall@10 halfvec, {args.queries} queries",
                  lambda: recall(conn, queries, exact, 10, "feature::halfvec(1280)", "::halfvec(1280)"))
    print(f"  recall@10 HNSW vs exact, halfvec, ef_search 40: {rh:.4f}")
    # search_like with cosine scans the table (the index is for l2): keep the sample small
    sample = ids[:300]
    for metric, n in (("l2", 0), ("l2", 3), ("cosine", 0), ("cosine", 3)):
        p, _ = timed(f"precision@10, {metric}, expand {n}",
                     lambda: precision(conn, sample, 10, n, metric))  # noqa: B023
        print(f"  precision@10 by class ({len(sample)} queries), {metric}, expand => {n}: {p:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=70000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", default="/var/tmp/pgvision-bench")
    ap.add_argument("--port", type=int, default=54330)
    ap.add_argument("--quality-only", metavar="DSN",
                    help="skip loading: measure recall and precision on a server that has the table")
    args = ap.parse_args()
    if args.quality_only:
        with psycopg.connect(args.quality_only, autocommit=True) as conn:
            quality(conn, args)
        return
    folder = pathlib.Path(args.dir)
    server = demo.Server(folder / "server", args.port)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    server.prepare()
    start = time.monotonic()
    try:
        server.start()
        items, _ = timed("write PNG files", lambda: write_pngs(folder / "png", args.images))
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgvision CASCADE")
        with db.connect(server.conninfo) as conn:
            load.ensure_table(conn, TABLE, None)
            result = load.Result()
            timed("load (binary COPY)", lambda: load.copy_files(conn, TABLE, items, 500, result),
                  len(items))
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.add_notice_handler(lambda n: None)
            timed(
                "embed (CALL pgvision.embed_table)",
                lambda: conn.execute("CALL pgvision.embed_table('images', 'image', 'feature', "
                                     "batch_size => %s)", [args.batch]), len(items))
            timed("HNSW index (m 16, ef_construction 64)",
                  lambda: conn.execute("SELECT pgvision.create_index('images', 'feature')"))
            conn.execute("ANALYZE images")
            total = time.monotonic() - start
            print(f"{'end to end (server start to index)':<34} {total:8.1f} s, "
                  f"{len(items) / total:.1f} images/s", flush=True)

            quality(conn, args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""First-call and per-image latency of pgvision.embed against onnxruntime called directly.

    build/venv/bin/python bench/latency.py --dsn "host=... user=postgres dbname=..." [--runs 7]

The server must have pgvision installed. Both contenders use the same model bytes, the
same preprocessing code, the same images and the same thread count, alternating run by
run; the script prints medians and the ratio.
"""

import argparse
import json
import statistics
import time

import numpy as np
import psycopg

from pgvision_client.datasets import photos
from pgvision_runtime import models, spec as specs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default="")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    images = photos()

    with psycopg.connect(args.dsn, autocommit=True) as c:
        onnx_bytes, spec_json = c.execute(
            "SELECT onnx, spec::text FROM pgvision.models WHERE name = 'efficientnet_lite0'").fetchone()
    model_spec = specs.validate(json.loads(spec_json))
    limits = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}

    cold_sql, cold_direct, sql_ms, direct_ms = [], [], [], []
    for _ in range(args.runs):
        # cold: a fresh backend's first embed (import, model fetch, session) vs a fresh session
        with psycopg.connect(args.dsn, autocommit=True) as c:
            c.execute(f"SET pgvision.threads = {args.threads}")
            t = time.perf_counter()
            c.execute("SELECT pgvision.embed(%s)", [images[0]]).fetchone()
            cold_sql.append((time.perf_counter() - t) * 1000)
            # warm: one image per statement, the vector kept in the server as an
            # UPDATE ... SET feature = pgvision.embed(image) keeps it
            for img in images:
                t = time.perf_counter()
                c.execute("SELECT vector_dims(pgvision.embed(%s))", [img]).fetchone()
                sql_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        direct = models.Model(onnx_bytes, model_spec, threads=args.threads)
        direct.embed(images[0], limits)
        cold_direct.append((time.perf_counter() - t) * 1000)
        for img in images:
            t = time.perf_counter()
            direct.embed(img, limits)
            direct_ms.append((time.perf_counter() - t) * 1000)

    med = statistics.median
    print(f"runs={args.runs} images/run={len(images)} threads={args.threads or 'onnxruntime default'}")
    print(f"first embed in a fresh backend   median {med(cold_sql):8.1f} ms")
    print(f"first embed, direct new session  median {med(cold_direct):8.1f} ms")
    print(f"per image, pgvision.embed        median {med(sql_ms):8.2f} ms")
    print(f"per image, onnxruntime direct    median {med(direct_ms):8.2f} ms")
    print(f"ratio direct/embed (1.0 = no overhead): {med(direct_ms) / med(sql_ms):.3f}")


if __name__ == "__main__":
    main()

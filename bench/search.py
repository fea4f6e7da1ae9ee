"""Figure 3: the HNSW index on 60,000 image features, against exact search and against FAISS.

    build/venv/bin/python bench/search.py [--ef 10 20 40 80 120 200 400] [--chunks 10]
    build/venv/bin/python bench/search.py --mixed-only   # the mixed collection's table alone

Base: the pooled features of the 60,000 Fashion-MNIST train images (bench/features.py,
bit-identical to pgvision.embed); queries: the 10,000 test images' features. The truth is
exact top-10 in float64 over the full float32 vectors (numpy) by the metric searched:
cosine, the default of pgvision.create_index and of the search functions (bench/quality.py
has why), or l2 with ``--metric l2``. Contenders, all with m = 16 and ef_construction = 64:

- **vector**: pgvector's HNSW index on the vector(1280) column (pgvision.create_index);
- **halfvec**: the same on feature::halfvec(1280) (create_index(..., halfvec => true)),
  judged against the same full-precision truth;
- **FAISS**: IndexHNSWFlat(1280, 16), efConstruction 64, one OpenMP thread; for cosine on
  L2-normalised vectors (the same ranking; pgvector's cosine HNSW index normalises too).

One client, one query at a time: a prepared ``SELECT id ... ORDER BY ... LIMIT 10`` with
the query vector as a binary parameter, timed in the client around execute + fetch; FAISS
is timed the same way around ``index.search`` of one query. Every ef_search runs all 10,000
queries for every contender, in chunks, the contenders alternating chunk by chunk in a
rotating order, so a slow patch of the shared machine hits all three. Recall is over all
10,000 queries; latency is p50/p99 of the per-query times; QPS is queries over the sum of
those times (one client).

Index builds: serial on both sides (max_parallel_maintenance_workers = 0, one FAISS
thread), the same thread count as the searches, with maintenance_work_mem large enough for
pgvector to build the whole graph in memory (the path pgvector's own notice asks for).
"""

import argparse
import time

import numpy as np
import psycopg

import common
import features

M, EF_CONSTRUCTION, K = 16, 64, 10
# 1 GB holds the 60k graph (about 330 MB for vector) with room; shared_buffers holds the
# table and both indexes, so searches read memory, as on a server sized for its index.
SETTINGS = {"maintenance_work_mem": "1GB", "max_parallel_maintenance_workers": "0",
            "shared_buffers": "2GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}
# The same client, driver and vector parameter, with no search: what of pgvector's latency
# is the round trip and not the index.
FLOOR_SQL = "SELECT %b::vector IS NULL"
OPERATOR = {"l2": "<->", "cosine": "<=>"}
SQL = {
    "vector": "SELECT id FROM items ORDER BY feature {op} %b LIMIT 10",
    "halfvec": "SELECT id FROM items ORDER BY feature::halfvec(1280) {op} %b::halfvec(1280) LIMIT 10",
}
CONTENDERS = ("vector", "halfvec", "FAISS")
# the mixed collection's tables build with parallel workers (several tables, two of 100,000 rows)
MIXED_SETTINGS = {**SETTINGS, "max_parallel_maintenance_workers": "2", "shared_buffers": "4GB"}


# ---------------------------------------------------------------- exact search

def sqdist(base, q, ids):
    """Squared L2 from one query to some base rows, in float64, as differences (no
    cancellation, unlike the |b|^2 - 2qb + |q|^2 form the brute force ranks with)."""
    diff = base[ids].astype(np.float64) - q.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def exact(base, queries, k=K, block=500):
    """Exact top-(k + 1) by squared L2 in float64: ids and distances [Q, k + 1], the k + 1st
    to see ties at the kth place. Ranked by the expanded form, then re-measured and re-ranked
    on direct differences among a margin of candidates."""
    base64 = base.astype(np.float64)
    norms = np.einsum("ij,ij->i", base64, base64)
    margin = 4 * k
    ids = np.empty((len(queries), k + 1), dtype=np.int64)
    dist = np.empty((len(queries), k + 1))
    for s in range(0, len(queries), block):
        q = queries[s:s + block].astype(np.float64)
        d = norms[None, :] - 2.0 * q @ base64.T
        part = np.argpartition(d, margin, axis=1)[:, :margin]
        for j, row in enumerate(part):
            dd = sqdist(base, queries[s + j], row)
            order = np.lexsort((row, dd))[:k + 1]  # by distance, then by id
            ids[s + j], dist[s + j] = row[order], dd[order]
    return ids, dist


def truth(base, queries, metric):
    """``base`` and ``queries`` already normalised for cosine, where L2 ranks the same."""
    path = features.folder(features.load_model()) / f"search-truth-{metric}-{len(base)}-{len(queries)}.npz"
    if path.exists():
        t = np.load(path)
        return t["ids"], t["dist"]
    with common.Clock() as c:
        ids, dist = exact(base, queries)
    print(f"exact top-{K} of {len(queries)} queries in {c.seconds:.0f} s", flush=True)
    np.savez(path, ids=ids, dist=dist)
    return ids, dist


def recall(found, truth_ids, truth_dist, base, queries):
    """Recall@10, and the tie-aware form: a returned row counts when its exact distance is
    at most the true 10th distance (a tie with the 10th is as right as the 10th)."""
    strict = np.mean([len(set(f) & set(t[:K])) for f, t in zip(found, truth_ids)]) / K
    hits = 0
    for q, f, d in zip(queries, found, truth_dist):
        hits += min(K, int(np.sum(sqdist(base, q, np.asarray(f, dtype=np.int64)) <= d[K - 1])))
    return float(strict), hits / (K * len(queries))


# ---------------------------------------------------------------- contenders

class Pg:
    def __init__(self, name, conninfo, index, metric):
        from pgvector.psycopg import register_vector

        self.name = name
        self.conn = psycopg.connect(conninfo, autocommit=True)
        register_vector(self.conn)
        self.cur = self.conn.cursor()
        self.sql = SQL[name].format(op=OPERATOR[metric])
        self.index = index

    def set_ef(self, ef):
        self.conn.execute(f"SET hnsw.ef_search = {int(ef)}")

    def plan(self, q):
        rows = self.conn.execute("EXPLAIN (COSTS OFF) " + self.sql, [q]).fetchall()
        return "\n".join(r[0] for r in rows)

    def run(self, queries, sql=None):
        cur, sql, clock = self.cur, sql or self.sql, time.perf_counter
        ids, times = [], []
        for q in queries:
            t = clock()
            cur.execute(sql, (q,), prepare=True)
            rows = cur.fetchall()
            times.append(clock() - t)
            ids.append([r[0] - 1 for r in rows])
        return ids, times


class Faiss:
    name = "FAISS"

    def __init__(self, index):
        self.index = index

    def set_ef(self, ef):
        self.index.hnsw.efSearch = int(ef)

    def run(self, queries):
        index, clock = self.index, time.perf_counter
        ids, times = [], []
        for i in range(len(queries)):
            q = queries[i:i + 1]
            t = clock()
            _, found = index.search(q, K)
            times.append(clock() - t)
            ids.append(found[0].tolist())
        return ids, times


# ---------------------------------------------------------------- equal recall

def at_recall(points, target):
    """(QPS, p50 ms) where the curve crosses ``target`` recall: linear in recall between the
    two sweep points around it, log-linear in QPS and latency. None if never reached."""
    pts = sorted(points, key=lambda p: p["ef_search"])
    for a, b in zip(pts, pts[1:]):
        if a["recall"] < target <= b["recall"]:
            w = (target - a["recall"]) / (b["recall"] - a["recall"])
            geo = lambda x, y: float(np.exp((1 - w) * np.log(x) + w * np.log(y)))  # noqa: E731
            return geo(a["qps"], b["qps"]), geo(a["p50_ms"], b["p50_ms"])
    if pts and pts[0]["recall"] >= target:
        return pts[0]["qps"], pts[0]["p50_ms"]
    return None


# ---------------------------------------------------------------- report

def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    style = {"vector": ("#4c72b0", "o"), "halfvec": ("#55a868", "s"), "FAISS": ("#dd8452", "^")}
    for name in CONTENDERS:
        pts = result["sweep"][name]
        color, marker = style[name]
        r = [p["recall"] for p in pts]
        axes[0].plot([p["p50_ms"] for p in pts], r, marker=marker, color=color, label=name)
        axes[1].plot([p["qps"] for p in pts], r, marker=marker, color=color, label=name)
        for p in pts:
            axes[0].annotate(str(p["ef_search"]), (p["p50_ms"], p["recall"]), fontsize=6,
                             xytext=(3, -8), textcoords="offset points", color=color)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in axes:
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axvline(3.0, color="grey", linestyle=":", linewidth=1)
    axes[0].set_xticks([0.1, 0.2, 0.5, 1, 2, 5, 10])
    axes[1].set_xticks([100, 200, 500, 1000, 2000, 5000, 10000])
    axes[0].set_xlabel("p50 latency per query, ms (one client)")
    axes[1].set_xlabel("queries per second (one client)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"HNSW m {M}, ef_construction {EF_CONSTRUCTION}, {result['metric']}: "
                 f"{result['base']:,} Fashion-MNIST features (1280-d), {result['queries']:,} queries; "
                 "labels: ef_search", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(result, plot_file):
    b = result["builds"]
    cosine = result["metric"] == "cosine"
    op = OPERATOR[result["metric"]]
    lines = [
        "## 3. Search",
        "",
        f"{result['base']:,} Fashion-MNIST train features (1280-d, the default model's pooled "
        f"output, bit-identical to `pgvision.embed`) as the table, the {result['queries']:,} test "
        "features as queries; the truth is exact top-10 in float64 (numpy) by "
        + ("cosine distance, the metric `pgvision.create_index` and the search functions use by "
           "default (section 4 has why)" if cosine else "L2") + ". HNSW with "
        f"m {M}, ef_construction {EF_CONSTRUCTION} everywhere: pgvector's "
        f"`{'vector_cosine_ops' if cosine else 'vector_l2_ops'}` index on the `vector` "
        "column and on `feature::halfvec(1280)` (both from `pgvision.create_index`, on one "
        "throwaway server with shared_buffers 2GB, so the table and both indexes stay in memory), "
        f"and FAISS `IndexHNSWFlat(1280, {M})` with efConstruction {EF_CONSTRUCTION} as the "
        "dedicated-library reference"
        + (" (on L2-normalised vectors, which rank as cosine does; pgvector's cosine index "
           "normalises too)" if cosine else "") + ". Single client, one query at a time, one thread on each "
        "side: pgvector runs each query in one backend; FAISS runs with "
        "`faiss.omp_set_num_threads(1)`. Latency is measured in the client around a prepared "
        f"`SELECT id FROM items ORDER BY feature {op} $1 LIMIT 10` (vector as a binary parameter) "
        "and around FAISS's `index.search` of one query; QPS is queries over the sum of those "
        "times. Every ef_search runs all queries for every contender, in "
        f"{result['chunks']} chunks, the contenders alternating chunk by chunk in a rotating "
        "order. Of pgvector's latency, the round trip alone (the same prepared statement, "
        f"driver and vector parameter, `SELECT $1::vector IS NULL`) is {result['round_trip_p50_ms']:.2f} "
        "ms p50. Recall@10 counts a returned row as right when its exact distance is at most the "
        f"true 10th distance ({result['ties']} of the queries have a tie at the 10th place; the "
        f"strict form differs by at most {result['strict_gap']:.4f}).",
        "",
        "| ef_search | vector recall@10 | p50 ms | p99 ms | QPS | halfvec recall@10 | p50 ms | p99 ms | QPS "
        "| FAISS recall@10 | p50 ms | p99 ms | QPS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, ef in enumerate(result["ef_search"]):
        cells = [str(ef)]
        for name in CONTENDERS:
            p = result["sweep"][name][i]
            cells += [f"{p['recall']:.4f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}", f"{p['qps']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "At equal recall, each curve interpolated between the two sweep points around the "
              "target (linearly in recall, log-linearly in QPS and latency). Two ratios: of QPS "
              "(queries over the summed times, so a burst of load on the shared machine weighs in), "
              "and of the medians (FAISS p50 over pgvector p50, what a burst does not move); each "
              "ef_search ran the three contenders alternately, so a burst in one ef_search block "
              "hits all three.", "",
              "| recall@10 | vector / FAISS, QPS | by p50 | halfvec / FAISS, QPS | by p50 "
              "| vector p50 ms | halfvec p50 ms | FAISS p50 ms |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for target, row in result["equal_recall"].items():
        def ms(name):
            v = row[name]
            return "not reached" if v is None else f"{v[1]:.2f}"

        def ratio(name, i):
            v, f = row[name], row["FAISS"]
            if v is None or f is None:
                return "–"
            r = v[0] / f[0] if i == 0 else f[1] / v[1]
            return f"**{r:.2f}**"
        lines.append(f"| {target} | {ratio('vector', 0)} | {ratio('vector', 1)} | {ratio('halfvec', 0)} "
                     f"| {ratio('halfvec', 1)} | {ms('vector')} | {ms('halfvec')} | {ms('FAISS')} |")
    target = result["target"]
    lines += [
        "",
        f"Target: recall@10 at least 0.99 at p50 under 3 ms. Smallest ef_search that reaches 0.99: "
        + "; ".join(f"{n} {t['ef_search']} (recall {t['recall']:.4f}, p50 {t['p50_ms']:.2f} ms) "
                    f"**{'met' if t['met'] else 'not met'}**" if t else f"{n} never"
                    for n, t in target.items()) + ".",
        "",
        "| index build (serial, one thread) | time | size |",
        "|---|---:|---:|",
        f"| table ({result['base']:,} rows, heap + TOAST) | | {result['table_mb']:.0f} MB |",
    ]
    for name in CONTENDERS:
        lines.append(f"| {name} | {b[name]['seconds']:.1f} s | {b[name]['mb']:.0f} MB |")
    lines += [
        "",
        f"pgvector builds with maintenance_work_mem {SETTINGS['maintenance_work_mem']} (the "
        "whole graph fits, so no slower on-disk phase) and max_parallel_maintenance_workers 0; "
        "sizes are `pg_relation_size` of the index and FAISS's serialised index.",
        "",
        f"![recall against latency and QPS]({plot_file})",
        "",
        f"Reproduce: `make bench BENCH=search` or `build/venv/bin/python bench/search.py "
        f"--ef {' '.join(map(str, result['ef_search']))} --chunks {result['chunks']}"
        + ("" if cosine else " --metric l2")
        + ("" if (result["base"], result["queries"]) == (60000, 10000)
           else f" --base {result['base']} --queries {result['queries']}") + "` "
        "(the features come from `bench/features.py`, computed once).",
    ]
    if result.get("mixed"):
        lines += ["", mixed_report(result["mixed"]), "",
                  "Reproduce the mixed collection's table alone: `build/venv/bin/python bench/search.py "
                  "--mixed-only " + result["mixed"]["args"] + "`"
                  + "".join(f", then `--mixed-only --mixed-append '{n}' {a}`" for n, a in result["mixed"].get("appended", []))
                  + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------- mixed collection (issue 14)
#
#     build/venv/bin/python bench/search.py --mixed-only [--mixed-rows 1000 2000 3279 100000]
#
# Fashion-MNIST alone is one tight cluster, where HNSW finds the nearest rows easily. Real
# collections mix photos, cut-outs and thumbnails (bench/mixed.py); there a photo's nearest
# row lies in a sparse region the greedy graph search reaches late. Tables: the mixed
# collection (279 originals, 3,000 distractors), alone and grown to 100,000 rows with stored
# Fashion-MNIST features (train, the unused test images, then the features of mirrored train
# images), rows in a fixed shuffled order. Queries: edited copies of every original (all of
# mixed.EDITS) and Fashion-MNIST test images that are not in the table. The truth is the
# exact top-1 by cosine distance in float64 (numpy); a returned top-1 counts when its exact
# distance is at most the true one's plus 1e-6 (ties, float32 rounding).

MIXED_QUERIES_FASHION = 500
MIXED_EF = (40, 100, 200, 400)  # on create_index's default graph; the m16 variant goes to 1000, pgvector's largest
MIXED_PLAIN = "SELECT id FROM {t} ORDER BY feature <=> %b LIMIT 10"
# a halfvec index is read by ordering by its own expression; the 10 it returns are put in
# order by their full-precision distance, as a user's query would re-rank them
MIXED_HALF = ("SELECT id FROM (SELECT id, feature FROM {t} ORDER BY feature::halfvec(1280) <=> %b::halfvec(1280) "
              "LIMIT 10) c ORDER BY feature <=> %b LIMIT 10")
# The indexes a table of the mixed collection may get besides pgvision.create_index's
# default: create_index's arguments, the query form and the settings each choice runs with.
MIXED_VARIANTS = {
    "m16": (", m => 16, ef_construction => 64", MIXED_PLAIN, [("hnsw.ef_search", e) for e in (100, 400, 1000)]),
    "m32": (", m => 32, ef_construction => 200", MIXED_PLAIN, [("hnsw.ef_search", e) for e in (40, 100, 200, 400)]),
    "m32-halfvec": (", m => 32, ef_construction => 200, halfvec => true", MIXED_HALF,
                    [("hnsw.ef_search", e) for e in (100, 200, 400)]),
    "ivfflat": (", method => 'ivfflat'", MIXED_PLAIN, [("ivfflat.probes", p) for p in (1, 3, 10, 20, 30)]),
    "ivfflat-sqrt": (", method => 'ivfflat', lists => {sqrt}", MIXED_PLAIN,
                     [("ivfflat.probes", p) for p in (3, 10, 30)]),
}
MIXED_FUNCTION = "SELECT id::bigint FROM pgvision.search_vector('{t}', %b, 10) WHERE rank = 1"


def mixed_cached(name, compute):
    path = features.folder(features.load_model()) / name
    if not path.exists():
        print(f"computing {path.name} (runs once)", flush=True)
        arrays = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").rename(path)
    return np.load(path)


def mixed_embed(items):
    """Features of (name, bytes) items through the runtime, as pgvision.embed computes them."""
    model = features.load_model()
    out = []
    for s in range(0, len(items), 16):
        batch = np.stack([model.prepare(b, common.LIMITS) for _, b in items[s:s + 16]])
        out.append(model.run(batch, ("feature",))[0])
    return np.concatenate(out)


def mixed_data():
    import mixed

    def collection():
        originals, others = mixed.collection()
        return {"originals": mixed_embed(originals), "distractors": mixed_embed(others),
                "onames": np.array([n for n, _ in originals]), "dnames": np.array([n for n, _ in others])}

    def queries():
        originals, _ = mixed.collection()
        items = [(f"{n}|{e}", mixed.edited(n, b, e)) for e in mixed.EDITS for n, b in originals]
        return {"queries": mixed_embed(items), "names": np.array([n for n, _ in items])}

    def mirrored(n=32000):
        images, _ = common.fashion("train")
        model = features.load_model()
        out = []
        for s in range(0, n, 32):
            batch = np.stack([model.prepare(common.png_bytes(p[:, ::-1].copy()), common.LIMITS)
                              for p in images[s:s + 32]])
            out.append(model.run(batch, ("feature",))[0])
        return {"feature": np.concatenate(out)}

    c = mixed_cached("mixed-collection.npz", collection)
    q = mixed_cached("mixed-queries.npz", queries)
    test = features.load("test")
    in_table = {int(n.split("/")[1]) for n in c["dnames"] if n.startswith("fashion/")}
    free = [i for i in range(len(test)) if i not in in_table]
    fq = free[::len(free) // MIXED_QUERIES_FASHION][:MIXED_QUERIES_FASHION]
    rest = [i for i in free if i not in set(fq)]
    small = np.concatenate([c["originals"], c["distractors"]])
    kinds = ["photo"] * len(c["originals"]) + ["fashion" if n.startswith("fashion/") else "wallpaper"
                                               for n in c["dnames"]]
    filler = [features.load("train"), test[rest], mirrored]
    queries = np.concatenate([q["queries"], test[fq]])
    qkinds = [n.split("|")[1] for n in q["names"]] + ["fashion"] * len(fq)
    return small, kinds, filler, queries, qkinds, mixed_cached


def mixed_rows(small, filler, mixed_cached, n, order="shuffled"):
    """``n`` rows: the mixed collection, then Fashion-MNIST features, in ``order``: shuffled
    (seed 14), loaded as listed (the photos first), or reversed (the photos last)."""
    parts, have = [small], len(small)
    for f in filler:
        if have >= n:
            break
        if callable(f):
            f = mixed_cached("train-mirrored-feature.npz", f)["feature"]
        parts.append(f[:n - have])
        have += len(parts[-1])
    rows = np.ascontiguousarray(np.concatenate(parts)[:n], dtype=np.float32)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} stored features for {n} rows")
    if order == "shuffled":
        perm = np.random.default_rng(14).permutation(n)
    else:
        perm = np.arange(n) if order == "photos first" else np.arange(n)[::-1]
    return rows[perm], perm  # order[i]: which source row the table's row i holds


def mixed_truth(rows, queries):
    """Index of the exact top-1 by cosine and its distance, float64 (float32 products pick
    20 candidates, re-measured in float64)."""
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    uq = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    u64 = u.astype(np.float64)
    ids, dist = [], []
    for s in range(0, len(uq), 256):
        sim = uq[s:s + 256] @ u.T
        cand = np.argpartition(-sim, 20, axis=1)[:, :20]
        for j, row in enumerate(cand):
            d = 1.0 - u64[row] @ uq[s + j].astype(np.float64)
            ids.append(int(row[np.argmin(d)]))
            dist.append(float(d.min()))
    return np.array(ids), np.array(dist), u64, uq.astype(np.float64)


def mixed_table(c, table, rows):
    """Creates ``table`` (id = position, feature) on connection ``c`` (with pgvector's
    adapter registered) from ``rows``, loaded by binary COPY in that order, then vacuumed
    and analyzed."""
    c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, feature vector(1280) NOT NULL)")
    with c.cursor() as cur, cur.copy(f"COPY {table} (id, feature) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for i, f in enumerate(rows):
            copy.write_row((i, f))
    c.execute(f"VACUUM ANALYZE {table}")


def mixed_index(conninfo, table, rows, args):
    """A table of ``rows`` (id = position) with a cosine index from pgvision.create_index
    (``args``: its arguments after the column, its defaults when empty); returns the index's
    parameters as its definition gives them and the build seconds."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(conninfo, autocommit=True) as c:
        register_vector(c)
        mixed_table(c, table, rows)
        with common.Clock() as clock:
            name = c.execute(f"SELECT pgvision.create_index('{table}', 'feature'{args})").fetchone()[0]
        c.execute("SELECT pg_prewarm(%s::regclass)", [name])
        c.execute(f"SELECT pg_prewarm('{table}'::regclass)")
        c.execute(f"SELECT pg_prewarm(reltoastrelid) FROM pg_class WHERE oid = '{table}'::regclass")
        d = c.execute("SELECT pg_get_indexdef(%s::regclass)", [name]).fetchone()[0]
        size = c.execute("SELECT pg_relation_size(%s::regclass)", [name]).fetchone()[0]
    import re

    got = {k: int(v) for k, v in re.findall(r"(m|ef_construction|lists)='(\d+)'", d)}
    method = "ivfflat" if "ivfflat" in d else "hnsw"
    if method == "hnsw":
        got.setdefault("m", 16)
        got.setdefault("ef_construction", 64)
    return {"method": method, "halfvec": "halfvec" in d, **got, "seconds": clock.seconds, "bytes": size}


def mixed_label(b):
    """How a report names an index: its method and parameters."""
    if b.get("method", "hnsw") == "ivfflat":
        return f"ivfflat, lists {b['lists']}"
    return f"m {b['m']}, ef_construction {b['ef_construction']}" + (", halfvec" if b.get("halfvec") else "")


class MixedChoice:
    """One way to search: a connection with its settings, one SQL form, the queries it runs."""

    def __init__(self, label, conninfo, sql, settings, every=1):
        from pgvector.psycopg import register_vector

        self.label, self.sql, self.every = label, sql, every
        self.conn = psycopg.connect(conninfo, autocommit=True)
        register_vector(self.conn)
        for s in settings:
            self.conn.execute(s)
        self.cur = self.conn.cursor()
        self.found, self.times = {}, []

    def run(self, queries, lo, hi):
        cur, clock = self.cur, time.perf_counter
        for i in range(lo, hi):
            if i % self.every:
                continue
            t = clock()
            row = cur.execute(self.sql, (queries[i],) * self.sql.count("%b"), prepare=True).fetchone()
            self.times.append(clock() - t)
            self.found[i] = int(row[0])


def mixed_measure(conninfo, n, small, filler, cached, queries, qkinds, chunks, order="shuffled", variants=("m16",)):
    rows, _ = mixed_rows(small, filler, cached, n, order)
    with common.Clock() as c:
        true_ids, true_dist, u, uq = mixed_truth(rows, queries)
    print(f"{n} rows: exact top-1 of {len(queries)} queries in {c.seconds:.0f} s", flush=True)
    builds, forms = {}, {"default": ("", MIXED_PLAIN, [("hnsw.ef_search", e) for e in MIXED_EF])}
    forms.update((v, MIXED_VARIANTS[v]) for v in variants)
    for key, (args, _, _) in forms.items():
        table = f"mixed_{n}_{key.replace('-', '_')}"
        bd = mixed_index(conninfo, table, rows, args.format(sqrt=max(10, round(n ** 0.5))))
        builds[key] = {"table": table, **bd}
        print(f"  {table}: {mixed_label(bd)}, built in {bd['seconds']:.1f} s, {bd['bytes'] / 2**20:.0f} MB", flush=True)
    d = builds["default"]
    exact_every = 1 if n <= 10000 else 50
    index = ["SET enable_seqscan = off"]  # the index, also where the planner would sort
    choices = []
    for key, (_, sql, knobs) in forms.items():
        b = builds[key]
        for setting, value in knobs:
            knob = "ef_search" if setting == "hnsw.ef_search" else "probes"
            choices.append(MixedChoice(f"{mixed_label(b)}, {knob} {value}", conninfo, sql.format(t=b["table"]),
                                       index + [f"SET {setting} = {value}"]))
    choices.append(MixedChoice("exact scan", conninfo, MIXED_PLAIN.format(t=d["table"]),
                               ["SET enable_indexscan = off"], every=exact_every))
    choices.append(MixedChoice("pgvision.search_vector, default settings", conninfo,
                               MIXED_FUNCTION.format(t=d["table"]), []))
    for key in variants:  # the search functions' own choice of probes on an IVFFlat index
        if builds[key]["method"] == "ivfflat":
            choices.append(MixedChoice(f"pgvision.search_vector, {mixed_label(builds[key])}", conninfo,
                                       MIXED_FUNCTION.format(t=builds[key]["table"]), []))
    for ct in choices:  # warm the prepared statements and the caches
        ct.run(queries, 0, min(len(queries), 50 * ct.every))
        ct.found, ct.times = {}, []
    bounds = np.linspace(0, len(queries), chunks + 1).astype(int)
    for turn, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        k = turn % len(choices)
        for ct in choices[k:] + choices[:k]:
            ct.run(queries, lo, hi)
    out = []
    kinds = sorted(set(qkinds), key=list(dict.fromkeys(qkinds)).index)
    for ct in choices:
        idx = np.array(sorted(ct.found))
        got = np.array([ct.found[i] for i in idx])
        d_got = 1.0 - np.einsum("ij,ij->i", u[got], uq[idx])
        ok = d_got <= true_dist[idx] + 1e-6
        by_kind = {kd: float(np.mean([o for o, i in zip(ok, idx) if qkinds[i] == kd])) for kd in kinds}
        t = np.asarray(ct.times)
        point = {"choice": ct.label, "queries": len(idx), "agreement": float(ok.mean()),
                 "worst_kind": min(by_kind, key=by_kind.get), "worst_agreement": min(by_kind.values()),
                 "photo_agreement": float(np.mean([o for o, i in zip(ok, idx) if qkinds[i] != "fashion"])),
                 "fashion_agreement": float(np.mean([o for o, i in zip(ok, idx) if qkinds[i] == "fashion"])),
                 "by_kind": by_kind, "p50_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * common.percentile(t, 99)}
        out.append(point)
        print(f"  {n:>6} {ct.label:<48} top-1 agreement {point['agreement']:.4f} (edited photos "
              f"{point['photo_agreement']:.4f}, Fashion {point['fashion_agreement']:.4f}, worst {point['worst_kind']} "
              f"{point['worst_agreement']:.3f}) p50 {point['p50_ms']:.2f} ms p99 {point['p99_ms']:.2f} ms", flush=True)
        ct.conn.close()
    with psycopg.connect(conninfo, autocommit=True) as c:
        for bd in builds.values():
            c.execute(f"DROP TABLE {bd['table']}")
    return {"rows": n, "order": order, "builds": builds, "choices": out, "exact_every": exact_every}


def mixed_run(conninfo, sizes, orders, m32_rows, m32_orders, chunks, variants=("m16",)):
    small, _, filler, queries, qkinds, cached = mixed_data()
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgvision CASCADE")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    runs = [mixed_measure(conninfo, n, small, filler, cached, queries, qkinds, chunks, order,
                          () if (m32_rows is not None and n not in m32_rows) or order not in m32_orders else variants)
            for n in sizes for order in orders]
    kinds = list(dict.fromkeys(qkinds))
    return {"queries": len(queries), "edited": sum(k != "fashion" for k in qkinds),
            "fashion_queries": qkinds.count("fashion"), "edits": [k for k in kinds if k != "fashion"],
            "chunks": chunks, "runs": runs}


def mixed_report(mx):
    lines = [
        "### Mixed collection: photos, cut-outs and thumbnails",
        "",
        "Fashion-MNIST above is one tight cluster. `bench/mixed.py` builds what users store: 279 "
        "originals (uneven tiles of Debian's wallpapers, the 7 darknet photos) and 3,000 "
        "distractors (the whole wallpapers and their other files, Fashion-MNIST test thumbnails); "
        f"queries are edited copies of every original ({len(mx['edits'])} edits: "
        + ", ".join(mx["edits"]) + f"; {mx['edited']:,} queries) and {mx['fashion_queries']} "
        "Fashion-MNIST test images not in the table. Tables of 1,000 and 2,000 rows are the "
        "collection's first rows (the originals, then distractors); 100,000 rows is the collection "
        "grown with stored features (bench/features.py): the 60,000 Fashion-MNIST train images, "
        "the unused test images, then mirrored train images, computed the same way. Rows are "
        "loaded in one of two orders: **photos first** (the collection as listed, then the "
        "thumbnails: the order in which pgvector's HNSW graph reaches the photos worst) or "
        "**shuffled** (seed 14). The truth is the exact top-1 by cosine distance (float64, numpy); "
        "agreement is the share of queries whose returned top-1 is at that distance (1e-6 for "
        "ties). The index rows run the plain form `SELECT id FROM t ORDER BY feature <=> $1 LIMIT "
        "10` (prepared, enable_seqscan off so the index is read where the planner would sort), "
        "the exact scan the same with enable_indexscan off (at 100,000 rows every "
        f"{mx['runs'][-1]['exact_every']}th query), and `pgvision.search_vector(t, $1, 10)` with the "
        "session's defaults, which chooses its own scan (pgvision._search_scan). All choices of "
        f"a table ran alternately, in {mx['chunks']} chunks in a rotating order, one client, on the "
        "shared 2-core machine while other jobs ran: compare the rows of one table, not across "
        "tables. pgvision.search_vector reads a table below 1,500 rows exactly and a larger one "
        "through its HNSW index at hnsw.ef_search 1000 for m below 32, 200 from m 32 "
        "(pgvision._hnsw_ef_search; the plain-SQL row at that ef_search plus the function's own "
        "work), or its IVFFlat index at ivfflat.probes 2·sqrt(lists) (rows `pgvision.search_vector, "
        "ivfflat, ...`: the same table as the IVFFlat rows). Runs marked with a note were added "
        "later with `--mixed-append`; create_index's default was m 16 / ef_construction 64 (and "
        "search_vector's ef_search 1000) before the run marked 'defaults m 32', m 32 / 200 from it. "
        "The m 32 builds include create_index's check of the new graph (pgvision.check_index, "
        "400 self-searches, a few seconds).",
        "",
        "| rows | order | choice | top-1 agreement | edited copies | Fashion | worst edit | p50 ms | p99 ms |",
        "|---:|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in mx["runs"]:
        for p in r["choices"]:
            lines.append(f"| {r['rows']:,} | {r['order']}{' (' + r['note'] + ')' if r.get('note') else ''} | {p['choice']} | **{p['agreement']:.4f}** "
                         f"| {p['photo_agreement']:.4f} | {p['fashion_agreement']:.4f} "
                         f"| {p['worst_kind']} {p['worst_agreement']:.3f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} |")
    builds = "; ".join(f"{r['rows']:,} {r['order']}: " + ", ".join(
        f"{mixed_label(b)} {b['seconds']:.1f} s" + (f" ({b['bytes'] / 2**20:,.0f} MB)" if "bytes" in b else "")
        for b in r["builds"].values()) for r in mx["runs"])
    lines += ["", f"Index builds (pgvision.create_index, max_parallel_maintenance_workers 2): {builds}."]
    lines += load_order_report()
    return "\n".join(lines)


def load_order_report():
    """bench/load_order.py's figures: create_index's check of the graph and the CLUSTER remedy."""
    import json

    path = common.RESULTS / "load_order.json"
    if not path.exists():
        return []
    lo = json.loads(path.read_text())
    lines = ["", "#### Load order: create_index's check and the CLUSTER that mends it", "",
             f"`build/venv/bin/python bench/load_order.py {lo['rows']}`: the same {lo['rows']:,} rows, "
             "indexed by create_index's defaults (m 32, ef_construction 200); pgvision.check_index "
             "(200 sampled rows from the table's first twentieth, 200 from the whole table, each searched "
             "for by its own feature), then top-1 agreement with the exact scan; for photos first, again "
             "after the hint's CLUSTER in hashed key order (which builds the index again). Agreement only: "
             "this script's timings ran beside other jobs, and the rows above measure them side by side.", "",
             "| rows loaded | pgvision.check_index: reached of sampled | agreement at ef_search 100 | 200 | 400 | pgvision.search_vector |",
             "|---|---|---:|---:|---:|---:|"]
    order = None
    for r in lo["runs"]:
        if "check" in r:
            order = r["order"]
            said = "; ".join(f"{c[0]} {c[2]} of {c[1]}" for c in r["check"])
            got = {x["form"]: x["agreement"] for x in lo["runs"] if x.get("label") == order}
            lines.append(f"| {order} | {said} | " + " | ".join(
                f"{got[f]:.4f}" for f in ("plain ef 100", "plain ef 200", "plain ef 400", "search_vector")) + " |")
    return lines


# ---------------------------------------------------------------- main

def load_table(conninfo, base):
    from pgvector.psycopg import register_vector

    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgvision CASCADE")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        register_vector(c)
        c.execute("CREATE TABLE items (id bigint PRIMARY KEY, feature vector(1280) NOT NULL)")
        with common.Clock() as clock:
            with c.cursor() as cur, cur.copy("COPY items (id, feature) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "vector"])
                for i, f in enumerate(base):
                    copy.write_row((i + 1, f))
        c.execute("VACUUM ANALYZE items")
        print(f"{len(base)} rows loaded by binary COPY in {clock.seconds:.1f} s", flush=True)
        return c.execute("SELECT pg_total_relation_size('items') - pg_indexes_size('items')").fetchone()[0]


def build_pg(conninfo, halfvec, metric):
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.add_notice_handler(lambda n: print("  server:", n.message_primary))
        with common.Clock() as clock:
            name = c.execute("SELECT pgvision.create_index('items', 'feature', metric => %s, m => %s, "
                             "ef_construction => %s, halfvec => %s)",
                             [metric, M, EF_CONSTRUCTION, halfvec]).fetchone()[0]
        size = c.execute("SELECT pg_relation_size(%s::regclass)", [name]).fetchone()[0]
        c.execute("SELECT pg_prewarm(%s::regclass)", [name])
    return name, clock.seconds, size


def build_faiss(base):
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(base.shape[1], M)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    with common.Clock() as clock:
        index.add(base)
    return index, clock.seconds, faiss.serialize_index(index).nbytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ef", type=int, nargs="+", default=[10, 20, 40, 80, 120, 200, 400])
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--port", type=int, default=54333)
    ap.add_argument("--base", type=int, default=60000, help="first N train images (a quick run)")
    ap.add_argument("--queries", type=int, default=10000, help="first N test images")
    ap.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite search.md and the plot from search.json, measuring nothing")
    ap.add_argument("--mixed-only", action="store_true",
                    help="measure only the mixed collection's table, keeping the other figures of search.json")
    ap.add_argument("--no-mixed", action="store_true", help="leave the mixed collection out")
    ap.add_argument("--mixed-rows", type=int, nargs="+", default=[1000, 2000, 3279, 100000])
    ap.add_argument("--mixed-orders", nargs="+", default=["photos first", "shuffled"],
                    choices=["photos first", "shuffled", "photos last"])
    ap.add_argument("--mixed-variants", nargs="*", default=["m16"], choices=sorted(MIXED_VARIANTS),
                    help="indexes besides create_index's default (m16: m 16, ef_construction 64, its default before; m32: m 32, ef_construction 200 spelled out; "
                         "m32-halfvec: the same on column::halfvec; ivfflat: lists rows/1000; "
                         "ivfflat-sqrt: lists sqrt(rows))")
    ap.add_argument("--mixed-m32-rows", type=int, nargs="*", default=None,
                    help="table sizes that also get the --mixed-variants indexes (default all)")
    ap.add_argument("--mixed-m32-orders", nargs="+", default=["photos first", "shuffled"],
                    help="row orders that get the --mixed-variants indexes too")
    ap.add_argument("--mixed-chunks", type=int, default=10)
    ap.add_argument("--mixed-append", metavar="NOTE",
                    help="with --mixed-only: add these runs to the mixed table of search.json, marked NOTE")
    args = ap.parse_args()
    mixed_args = " ".join(["--mixed-rows", *map(str, args.mixed_rows), "--mixed-orders",
                           *(f"'{o}'" for o in args.mixed_orders), "--mixed-chunks", str(args.mixed_chunks)]
                          + ([] if args.mixed_m32_rows is None else ["--mixed-m32-rows", *map(str, args.mixed_m32_rows)])
                          + ["--mixed-m32-orders", *(f"'{o}'" for o in args.mixed_m32_orders)]
                          + ["--mixed-variants", *args.mixed_variants])

    def run_mixed(conninfo):
        mx = mixed_run(conninfo, args.mixed_rows, args.mixed_orders, args.mixed_m32_rows, args.mixed_m32_orders,
                       args.mixed_chunks, args.mixed_variants)
        mx["args"] = mixed_args
        mx["settings"] = MIXED_SETTINGS
        return mx

    if args.mixed_only:
        import json

        result = json.loads((common.RESULTS / "search.json").read_text())
        # the figures above keep the date, machine and command of their own run
        meta = {k: result.pop(k) for k in ("benchmark", "measured", "machine", "command") if k in result}
        result.setdefault("fashion_run", meta)
        with common.Server("search-mixed", args.port, MIXED_SETTINGS) as server:
            server.run("pg_ctl", "-D", str(server.data), "-l", str(server.folder / "server.log"),
                       "-w", "-t", "120", "restart")
            mx = run_mixed(server.conninfo)
        if args.mixed_append and result.get("mixed"):
            for r in mx["runs"]:
                r["note"] = args.mixed_append
            result["mixed"]["runs"] += mx["runs"]
            result["mixed"]["appended"] = result["mixed"].get("appended", []) + [[args.mixed_append, mx["args"]]]
        else:
            result["mixed"] = mx
        common.write_results("search", result, report(result, common.plot_path("search", "recall").name))
        return
    if args.report_only:
        import json

        result = json.loads((common.RESULTS / "search.json").read_text())
        for row in result["equal_recall"].values():
            for name in ("vector", "halfvec"):
                row[f"{name}/FAISS by p50"] = (row["FAISS"][1] / row[name][1]
                                               if row[name] and row["FAISS"] else None)
        path = common.plot_path("search", "recall")
        plot(result, path)
        (common.RESULTS / "search.md").write_text(report(result, path.name).strip() + "\n")
        (common.RESULTS / "search.json").write_text(json.dumps(result, indent=1) + "\n")
        return

    base = np.ascontiguousarray(features.load("train")[:args.base], dtype=np.float32)
    queries = np.ascontiguousarray(features.load("test")[:args.queries], dtype=np.float32)
    # the table holds what pgvision.embed returns; the truth and FAISS see the vectors the
    # metric compares (unit vectors for cosine, where L2 ranks as cosine does)
    unit = ((lambda x: np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32))
            if args.metric == "cosine" else (lambda x: x))
    ubase, uqueries = unit(base), unit(queries)
    truth_ids, truth_dist = truth(ubase, uqueries, args.metric)
    ties = int(np.sum(truth_dist[:, K - 1] == truth_dist[:, K]))
    print(f"{len(base)} base, {len(queries)} queries; {ties} with a tie at the 10th place", flush=True)

    builds = {}
    with common.Server("search", args.port, SETTINGS) as server:
        # shared_buffers takes a restart; pg_ctl restart keeps the start options
        server.run("pg_ctl", "-D", str(server.data), "-l", str(server.folder / "server.log"),
                   "-w", "-t", "120", "restart")
        table_bytes = load_table(server.conninfo, base)
        # builds alternate the two sides: vector, FAISS, halfvec
        name, secs, size = build_pg(server.conninfo, False, args.metric)
        builds["vector"] = {"index": name, "seconds": secs, "mb": size / 2**20}
        print(f"vector index {name}: {secs:.1f} s, {size / 2**20:.0f} MB", flush=True)
        index, secs, size = build_faiss(ubase)
        builds["FAISS"] = {"seconds": secs, "mb": size / 2**20}
        print(f"FAISS index: {secs:.1f} s, {size / 2**20:.0f} MB", flush=True)
        name, secs, size = build_pg(server.conninfo, True, args.metric)
        builds["halfvec"] = {"index": name, "seconds": secs, "mb": size / 2**20}
        print(f"halfvec index {name}: {secs:.1f} s, {size / 2**20:.0f} MB", flush=True)

        contenders = [Pg("vector", server.conninfo, builds["vector"]["index"], args.metric),
                      Pg("halfvec", server.conninfo, builds["halfvec"]["index"], args.metric), Faiss(index)]
        inputs = {"vector": queries, "halfvec": queries, "FAISS": uqueries}
        for ct in contenders[:2]:
            plan = ct.plan(queries[0])
            if ct.index not in plan:
                raise SystemExit(f"{ct.name}: the query does not use {ct.index}:\n{plan}")
            ct.set_ef(40)
            ct.run(queries[:200])  # warm the prepared statement and the caches
        contenders[2].run(uqueries[:200])

        bounds = np.linspace(0, len(queries), args.chunks + 1).astype(int)
        sweep = {ct.name: [] for ct in contenders}
        turn = 0
        for ef in args.ef:
            found = {ct.name: [] for ct in contenders}
            times = {ct.name: [] for ct in contenders}
            for ct in contenders:
                ct.set_ef(ef)
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                order = contenders[turn % 3:] + contenders[:turn % 3]
                turn += 1
                for ct in order:
                    ids, ts = ct.run(inputs[ct.name][lo:hi])
                    found[ct.name] += ids
                    times[ct.name] += ts
            for ct in contenders:
                strict, tie_aware = recall(found[ct.name], truth_ids, truth_dist, ubase, uqueries)
                t = np.asarray(times[ct.name])
                point = {"ef_search": ef, "recall": tie_aware, "recall_strict": strict,
                         "p50_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * common.percentile(t, 99),
                         "qps": len(t) / float(t.sum())}
                sweep[ct.name].append(point)
                print(f"ef_search {ef:>4} {ct.name:<8} recall@10 {tie_aware:.4f} (strict {strict:.4f}) "
                      f"p50 {point['p50_ms']:.2f} ms p99 {point['p99_ms']:.2f} ms {point['qps']:,.0f} QPS",
                      flush=True)
        floor = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            floor += contenders[0].run(queries[lo:lo + 200], FLOOR_SQL)[1]
        floor_ms = 1e3 * float(np.median(floor))
        print(f"round trip without a search: p50 {floor_ms:.2f} ms", flush=True)
        for ct in contenders[:2]:
            ct.conn.close()
        mixed_result = None
        if not args.no_mixed:
            with psycopg.connect(server.conninfo, autocommit=True) as c:
                c.execute("DROP TABLE items")
                for k, v in MIXED_SETTINGS.items():
                    c.execute(f"ALTER SYSTEM SET {k} = '{v}'")
            server.run("pg_ctl", "-D", str(server.data), "-l", str(server.folder / "server.log"),
                       "-w", "-t", "120", "restart")
            mixed_result = run_mixed(server.conninfo)

    equal = {}
    for target in (0.95, 0.98, 0.99, 0.995):
        row = {name: at_recall(sweep[name], target) for name in CONTENDERS}
        for name in ("vector", "halfvec"):
            row[f"{name}/FAISS"] = (row[name][0] / row["FAISS"][0]
                                    if row[name] and row["FAISS"] else None)
            row[f"{name}/FAISS by p50"] = (row["FAISS"][1] / row[name][1]
                                           if row[name] and row["FAISS"] else None)
        equal[str(target)] = row
    target = {}
    for name in CONTENDERS:
        ok = [p for p in sweep[name] if p["recall"] >= 0.99]
        target[name] = ({**ok[0], "met": ok[0]["p50_ms"] < 3.0} if ok else None)

    result = {"base": len(base), "queries": len(queries), "metric": args.metric, "m": M, "ef_construction": EF_CONSTRUCTION,
              "ef_search": args.ef, "chunks": args.chunks, "settings": SETTINGS, "ties": ties,
              "strict_gap": max(abs(p["recall"] - p["recall_strict"]) for n in CONTENDERS for p in sweep[n]),
              "round_trip_p50_ms": floor_ms, "table_mb": table_bytes / 2**20, "builds": builds, "sweep": sweep,
              "equal_recall": equal, "target": target, "mixed": mixed_result}
    for t, row in equal.items():
        print(f"recall {t}: " + ", ".join(f"{k} {v if v is None or isinstance(v, float) else v[0]:.3g}"
                                           if v is not None else f"{k} n/a" for k, v in row.items()))
    path = common.plot_path("search", "recall")
    plot(result, path)
    common.write_results("search", result, report(result, path.name))


if __name__ == "__main__":
    main()

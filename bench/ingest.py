"""Figure 2: image files on disk to searchable rows with an HNSW index, three ways.

    build/venv/bin/python bench/ingest.py [--images 60000] [--chunks 6]

pgvision: COPY the image bytes in, CALL pgvision.embed_table with efficientnet_lite0 (named,
not left to the install's default), build the HNSW index.
pgvision int8: the same into a table of its own, with the built-in 8-bit model
efficientnet_lite0_int8.
Seed recipe: extract the features in this (client) process with the same float model, the
same preprocessing code and the same thread count, write them as pgvector text, COPY them in,
build the same index. All on one throwaway server, on the Fashion-MNIST train set as PNG
files. The files are processed in chunks and the contenders take turns chunk by chunk, the
order rotating (then index by index), so a slow patch of a shared machine hits all. Between
chunks the pure inference limit is measured, of each model: images/s of onnxruntime alone on
prepared batches of the same size. Prints the phases, images/s, the ratios to the seed
recipe and to the limit.
"""

import argparse
import io
import json
import time

import numpy as np
import psycopg

import common

FP32, INT8 = "efficientnet_lite0", "efficientnet_lite0_int8"
BATCH = 32          # images per model call in every contender (pgvision.batch_size's default)
ROWS_PER_TXN = 64   # embed_table's batch_size: rows per transaction
HNSW = "USING hnsw (feature vector_l2_ops) WITH (m = 16, ef_construction = 64)"
# Both index builds get the same memory; enough for 60k x 1280-d graphs to be built in
# memory (pgvector's advice), which a user ingesting this much should set too. No
# autovacuum: it would clean pgvision's table (its UPDATE leaves a dead version of every
# row) at a moment of its choosing, during the other contender's phase as like as not;
# pgvision is charged a VACUUM of its own table instead.
# Both index builds get the same parallel workers. PostgreSQL would give them by the size of
# the table's main fork: 2 for pgvision's (the images live there), none for the seed's,
# whose rows are a key, a path and a TOAST pointer to the vector (under
# min_parallel_table_scan_size); 2 is max_parallel_maintenance_workers' default.
TABLE_OPTIONS = "parallel_workers = 2"
SETTINGS = {"maintenance_work_mem": "2GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
            "autovacuum": "off"}


def vector_text(row):
    return "[" + ",".join(map(repr, row.tolist())) + "]"


class Pgvision:
    def __init__(self, conn, name="pgvision", table="images", model=FP32):
        self.conn, self.name, self.table, self.model = conn, name, table, model
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, path text NOT NULL, "
                     f"image bytea NOT NULL, feature vector(1280)) WITH ({TABLE_OPTIONS})")
        self.phases = {"copy bytes": 0.0, "embed in the database": 0.0, "VACUUM": 0.0, "HNSW index": 0.0}

    def chunk(self, ids, paths):
        with common.Clock() as c:
            with self.conn.cursor() as cur, cur.copy(
                    f"COPY {self.table} (id, path, image) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "bytea"])
                for i, p in zip(ids, paths):
                    copy.write_row((i, str(p), p.read_bytes()))
        self.phases["copy bytes"] += c.seconds
        with common.Clock() as c:
            self.conn.execute("CALL pgvision.embed_table(%s, 'image', 'feature', model => %s, "
                              "batch_size => %s)", [self.table, self.model, ROWS_PER_TXN])
        self.phases["embed in the database"] += c.seconds

    def index(self):
        # the dead row versions the UPDATE of every row left
        with common.Clock() as c:
            self.conn.execute(f"VACUUM {self.table}")
        self.phases["VACUUM"] += c.seconds
        with common.Clock() as c:
            self.conn.execute("SELECT pgvision.create_index(%s, 'feature', metric => 'l2', m => 16, "
                              "ef_construction => 64)", [self.table])
        self.phases["HNSW index"] += c.seconds


class Seed:
    name = "seed recipe"

    def __init__(self, conn, model):
        self.conn = conn
        self.model = model
        conn.execute("CREATE TABLE seed (id bigint PRIMARY KEY, path text NOT NULL, "
                     f"feature vector(1280)) WITH ({TABLE_OPTIONS})")
        self.phases = {"extract in the client": 0.0, "text + COPY": 0.0, "": 0.0, "HNSW index": 0.0}

    def chunk(self, ids, paths):
        with common.Clock() as c:
            features = self.model.embed_many([p.read_bytes() for p in paths], common.LIMITS,
                                             batch_size=BATCH)
        self.phases["extract in the client"] += c.seconds
        with common.Clock() as c:
            text = io.StringIO()
            for i, p, f in zip(ids, paths, features):
                text.write(f"{i}\t{p}\t{vector_text(f)}\n")
            with self.conn.cursor() as cur, cur.copy("COPY seed (id, path, feature) FROM STDIN") as copy:
                copy.write(text.getvalue())
        self.phases["text + COPY"] += c.seconds

    def index(self):
        with common.Clock() as c:
            self.conn.execute(f"CREATE INDEX seed_feature_idx ON seed {HNSW}")
        self.phases["HNSW index"] += c.seconds


def int8_model(threads=0):
    """The built-in 8-bit model as the database registers it, loaded directly with onnxruntime."""
    spec = common.specs.validate(json.loads((common.MODEL_DIR / f"{INT8}.json").read_text()))
    return common.models.Model((common.MODEL_DIR / f"{INT8}.onnx").read_bytes(), spec, threads=threads)


def inference_limit(model, tensors, seconds=20.0):
    """images/s of session.run alone on prepared batches of BATCH images."""
    batches = [tensors[i:i + BATCH] for i in range(0, len(tensors) - BATCH + 1, BATCH)]
    model.run(batches[0])  # warm
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in batches:
            model.run(b)
            done += len(b)
    return done / (time.perf_counter() - start)


def arena_effect(model, images, rounds=5):
    """images/s of embed_many over batches of ROWS_PER_TXN images, giving onnxruntime's
    activation memory back after every batch (what each embed_batch call does) against
    keeping it (what embed_table does), alternating; medians."""
    def rate(release):
        start = time.perf_counter()
        for i in range(0, len(images), ROWS_PER_TXN):
            model.embed_many(images[i:i + ROWS_PER_TXN], common.LIMITS, batch_size=BATCH, release=release)
        return len(images) / (time.perf_counter() - start)
    rate(True)
    runs = {"release": [], "keep": []}
    for r in range(rounds):
        for release in ((True, False) if r % 2 == 0 else (False, True)):
            runs["release" if release else "keep"].append(rate(release))
    return {k: common.median(v) for k, v in runs.items()}


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("pgvision", "pgvision int8", "seed recipe")
    widest = max(result["contenders"][c]["seconds"] for c in names)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#4c72b0", "#dd8452", "#8172b3", "#55a868"]
    for row, c in enumerate(names):
        left = 0.0
        for (phase, secs), color in zip(result["contenders"][c]["phases"].items(), colors):
            ax.barh(row, secs, left=left, color=color, edgecolor="white")
            if secs > 0.04 * widest:  # room for its label in the drawn bar
                ax.text(left + secs / 2, row, f"{phase}\n{secs:.0f} s", ha="center", va="center",
                        fontsize=7, color="white")
            left += secs
    limit = result["images"] / result["inference_limit_images_per_s"]
    ax.axvline(limit, color="black", linestyle="--", linewidth=1)
    ax.text(limit, 2.45, f" float inference alone: {limit:.0f} s", fontsize=7, va="center")
    limit8 = result["images"] / result["inference_limit_int8_images_per_s"]
    ax.plot([limit8, limit8], [0.6, 1.4], color="black", linestyle=":", linewidth=1)
    ax.text(limit8, 1.5, f" 8-bit inference alone: {limit8:.0f} s", fontsize=7, va="center")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, 2.7)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds, {result['images']:,} Fashion-MNIST PNG files to an HNSW-indexed table")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(result, plot_file):
    p, q, s = (result["contenders"][n] for n in ("pgvision", "pgvision int8", "seed recipe"))
    lim, lim8 = result["inference_limit_images_per_s"], result["inference_limit_int8_images_per_s"]
    lines = [
        "## 2. End-to-end ingest",
        "",
        f"{result['images']:,} Fashion-MNIST train images as PNG files on disk to rows searchable "
        "through an HNSW index (m 16, ef_construction 64, L2), on one throwaway server "
        f"(maintenance_work_mem {SETTINGS['maintenance_work_mem']} and 2 parallel workers for all three "
        "index builds: PostgreSQL gives them by the size of a table's main fork, here "
        f"{result['main_fork_bytes']['images'] / 2**20:.0f} MB for pgvision's, where the images are "
        f"({result['main_fork_bytes']['images_int8'] / 2**20:.0f} MB for the 8-bit one's), and "
        f"{result['main_fork_bytes']['seed'] / 2**20:.0f} MB for the seed's, a key, a path and a TOAST "
        "pointer to the vector a row, under the 8 MB of min_parallel_table_scan_size that one worker takes). "
        f"**pgvision**: binary COPY of the file bytes, `CALL pgvision.embed_table(..., model => '{FP32}')` "
        f"({ROWS_PER_TXN} rows per transaction, {BATCH} images per model call), "
        "`VACUUM` (the UPDATE leaves a dead version of every row; autovacuum is off for the run, so "
        "that it cannot clean up during the other contender's turn), `pgvision.create_index`. "
        f"**pgvision int8**: the same, into a table of its own, with the built-in 8-bit model, "
        f"`model => '{INT8}'` (registered by CREATE EXTENSION). "
        "**Seed recipe**: the same float model, preprocessing code and "
        "thread count in the client process, vectors written as text and COPYed in, the same "
        f"index. The files go through in {result['chunks']} chunks, the contenders taking turns "
        "chunk by chunk (the order rotating) and then index by index. The *inference limit* is "
        f"onnxruntime's `session.run` alone on prepared batches of {BATCH}, of the float model "
        "and of the 8-bit one, measured between chunks "
        f"(medians of {len(result['inference_limit_samples'])}).",
        "",
        "| | pgvision | pgvision int8 | seed recipe |",
        "|---|---:|---:|---:|",
    ]
    for (pp, ps), qs, (sp, ss) in zip(p["phases"].items(), q["phases"].values(), s["phases"].items()):
        if sp:
            lines.append(f"| {pp} / {sp} | {ps:.1f} s | {qs:.1f} s | {ss:.1f} s |")
        else:
            lines.append(f"| {pp} | {ps:.1f} s | {qs:.1f} s | |")
    lines += [
        f"| **end to end** | **{p['seconds']:.1f} s** | **{q['seconds']:.1f} s** | **{s['seconds']:.1f} s** |",
        f"| images/s | {p['images_per_s']:.1f} | {q['images_per_s']:.1f} | {s['images_per_s']:.1f} |",
        f"| of the inference limit ({lim:.1f} images/s float, {lim8:.1f} 8-bit) "
        f"| {p['images_per_s'] / lim:.3f} | {q['images_per_s'] / lim8:.3f} (8-bit) "
        f"| {s['images_per_s'] / lim:.3f} |",
        "",
        f"pgvision / seed recipe: **{result['ratio_to_seed']:.3f}** (target at least 1); "
        f"pgvision int8 / seed recipe: **{result['ratio_int8_to_seed']:.3f}** (target at least 2); "
        f"pgvision / inference limit: **{result['ratio_to_limit']:.3f}** (target at least 0.8). "
        f"Features of both float tables compared on {result['compared_rows']} rows: max |diff| "
        f"{result['max_abs_diff']:.1e}; the 8-bit features differ by design, median cosine to the "
        f"float ones {result['int8_median_cosine']:.4f} (min {result['int8_min_cosine']:.4f}) on the same rows.",
        "",
        f"![ingest phases]({plot_file})",
        "",
        "What changed, and why:",
        "",
        "- `embed_table` keeps onnxruntime's activation memory (about 9 MB an image of a model "
        "call, 280 MB at 32) from batch to batch and gives it back when the run ends; a lone "
        "`embed_batch` still gives it back at once. Regrowing it for every batch of "
        f"{ROWS_PER_TXN} rows cost: `Model.embed_many` on {result['arena']['images']} of these "
        f"PNGs, {ROWS_PER_TXN} a call, {result['arena']['keep']:.1f} images/s keeping it against "
        f"{result['arena']['release']:.1f} giving it back each call "
        f"({result['arena']['keep'] / result['arena']['release']:.2f}x; medians of 5, alternating).",
        "- The features go from the model to the column as float4 bytes, copied into a vector by "
        "one C function, instead of pgvector text formatted in Python and parsed again (figure 1).",
        "",
        f"Reproduce: `make bench BENCH=ingest` or `build/venv/bin/python bench/ingest.py "
        f"--images {result['images']} --chunks {result['chunks']}`.",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--port", type=int, default=54331)
    args = ap.parse_args()

    with common.Clock() as c:
        paths = common.fashion_pngs("train", args.images)
    print(f"{len(paths)} PNG files under {paths[0].parent} ({c.seconds:.1f} s to write the missing ones)")
    model = common.default_model()
    model8 = int8_model()
    sample = np.stack([model.prepare(p.read_bytes(), common.LIMITS) for p in paths[:10 * BATCH]])
    sample8 = np.stack([model8.prepare(p.read_bytes(), common.LIMITS) for p in paths[:10 * BATCH]])
    limits, limits8 = [], []
    arena_images = [p.read_bytes() for p in paths[:10 * ROWS_PER_TXN]]
    arena = dict(arena_effect(model, arena_images), images=len(arena_images))
    print(f"embed_many, {ROWS_PER_TXN} images a call: {arena['keep']:.1f} images/s keeping the "
          f"activation memory, {arena['release']:.1f} giving it back each call", flush=True)

    with common.Server("ingest", args.port, SETTINGS) as server:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgvision CASCADE")
            conn.add_notice_handler(lambda n: None)
            contenders = [Pgvision(conn), Seed(conn, model),
                          Pgvision(conn, "pgvision int8", "images_int8", INT8)]
            ids = np.arange(1, len(paths) + 1)
            bounds = np.linspace(0, len(paths), args.chunks + 1).astype(int)
            for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                limits.append(inference_limit(model, sample))
                limits8.append(inference_limit(model8, sample8))
                # each contender goes first, second and third in turn
                order = contenders[n % 3:] + contenders[:n % 3]
                for ct in order:
                    ct.chunk(ids[lo:hi].tolist(), paths[lo:hi])
                print(f"chunk {n + 1}/{args.chunks}: {hi} images; inference limit {limits[-1]:.1f} "
                      f"images/s, 8-bit {limits8[-1]:.1f}; "
                      + "; ".join(f"{ct.name} {sum(ct.phases.values()):.0f} s" for ct in contenders),
                      flush=True)
            limits.append(inference_limit(model, sample))
            limits8.append(inference_limit(model8, sample8))
            for ct in contenders:
                ct.index()
                print(f"{ct.name} index {ct.phases['HNSW index']:.1f} s", flush=True)
            conn.execute("ANALYZE images; ANALYZE seed; ANALYZE images_int8")
            diff = conn.execute(
                "SELECT count(*), max(abs(d)) FROM (SELECT unnest(i.feature::real[]) - "
                "unnest(s.feature::real[]) AS d FROM images i JOIN seed s USING (id) "
                "WHERE i.id % 97 = 0) x").fetchone()
            rows = conn.execute("SELECT count(*) FROM images WHERE id % 97 = 0").fetchone()[0]
            cos8 = conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY c), min(c) FROM (SELECT "
                "1 - (q.feature <=> i.feature) AS c FROM images i JOIN images_int8 q USING (id) "
                "WHERE i.id % 97 = 0) x").fetchone()
            sizes = {t: conn.execute("SELECT pg_relation_size(%s::regclass)", [t]).fetchone()[0]
                     for t in ("images", "seed", "images_int8")}
            missing = conn.execute("SELECT (SELECT count(*) FROM images WHERE feature IS NULL) + "
                                   "(SELECT count(*) FROM seed WHERE feature IS NULL) + "
                                   "(SELECT count(*) FROM images_int8 WHERE feature IS NULL)").fetchone()[0]
            if missing:
                raise SystemExit(f"{missing} rows without a feature: the comparison is void")

    result = {"images": len(paths), "chunks": args.chunks, "batch": BATCH, "settings": SETTINGS,
              "inference_limit_samples": limits,
              "inference_limit_images_per_s": common.median(limits),
              "inference_limit_int8_samples": limits8,
              "inference_limit_int8_images_per_s": common.median(limits8),
              "arena": arena, "main_fork_bytes": sizes, "compared_rows": rows, "max_abs_diff": float(diff[1] or 0.0),
              "int8_median_cosine": float(cos8[0]), "int8_min_cosine": float(cos8[1]), "contenders": {}}
    for ct in contenders:
        total = sum(ct.phases.values())
        result["contenders"][ct.name] = {"phases": ct.phases, "seconds": total,
                                         "images_per_s": len(paths) / total}
    p = result["contenders"]["pgvision"]["images_per_s"]
    result["ratio_to_seed"] = p / result["contenders"]["seed recipe"]["images_per_s"]
    # images/s over images/s: the seed recipe's seconds over the 8-bit contender's
    result["ratio_int8_to_seed"] = (result["contenders"]["pgvision int8"]["images_per_s"]
                                    / result["contenders"]["seed recipe"]["images_per_s"])
    result["ratio_to_limit"] = p / result["inference_limit_images_per_s"]
    for name, r in result["contenders"].items():
        print(f"{name:<13} " + ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items() if k)
              + f"; end to end {r['seconds']:.1f} s = {r['images_per_s']:.1f} images/s")
    print(f"inference limit {result['inference_limit_images_per_s']:.1f} images/s; "
          f"8-bit {result['inference_limit_int8_images_per_s']:.1f}; "
          f"pgvision/seed {result['ratio_to_seed']:.3f}; int8/seed {result['ratio_int8_to_seed']:.3f}; "
          f"pgvision/limit {result['ratio_to_limit']:.3f}; "
          f"max |diff| {result['max_abs_diff']:.1e} over {rows} rows; "
          f"int8 to float cosine median {result['int8_median_cosine']:.4f}, min {result['int8_min_cosine']:.4f}")
    path = common.plot_path("ingest", "phases")
    plot(result, path)
    common.write_results("ingest", result, report(result, path.name))


if __name__ == "__main__":
    main()

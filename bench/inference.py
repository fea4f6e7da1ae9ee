"""Figure 1: what running the model inside PostgreSQL costs over calling onnxruntime directly.

    build/venv/bin/python bench/inference.py [--rounds 9] [--threads 0 1] [--baseline REV]

One throwaway server with pgvision. The contenders get the same image bytes, the same
model, the same preprocessing code (pgvision_runtime) and the same thread count
(pgvision.threads = the direct Model's threads), and take turns image by image or call by
call, so a slow patch of a shared machine hits them alike:

- one at a time: ``SELECT pgvision.embed($1)`` per image (the vector fetched in binary)
  against ``Model.embed`` per image in this process;
- batch: ``SELECT pgvision.embed_batch($1)`` with BATCH_IMAGES images against
  ``Model.embed_many`` on the same list, both pgvision.batch_size (32) per model call;
- batch from a table: the same images stored in a table, ``SELECT
  pgvision.embed_batch(array_agg(image ORDER BY id))``, as a backfill reads them.

Both on Debian's darknet photos (JPEG, a few hundred kB, decoding is a large share) and on
Fashion-MNIST PNGs (28x28, inference is nearly all). Figures are medians over rounds of
images per second (wall clock) and of images per CPU-second of the contender's process,
and the ratios pgvision / direct. Also: onnxruntime alone on prepared inputs by batch size.

The time of one ``pgvision.embed`` is broken down inside the backend: the stages of the
real call (registry lookup, decode, preprocess, inference, feature bytes) are timed by
wrapping the runtime's functions, the PL/Python call and transfer by the client's clock,
and the same stages of the direct call likewise.

A third contender, "pgvision before", runs the SQL forms with the runtime package as it was
at git revision ``--baseline`` (by default the commit before the changes measured here;
``none`` leaves it out), on the same installed dependencies, for a before/after.
"""

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import psycopg

import common

PORT = 54881
# the runtime package before the changes measured here (the commit before them)
BASELINE = "a2a2a6b"
BATCH_IMAGES = 64
SMALL_IMAGES = 32
NAME = "inference"
FORMS = ("one at a time", "batch", "batch from a table")
SIZES = (1, 2, 4, 8, 16, 32, 64)
SIZES_LABELS = [str(s) for s in SIZES]

# Timers around the stages of an embed: installed in the backend (see BREAKDOWN_SQL) and
# in this process, so that both sides measure the same functions the same way.
INSTRUMENT = r'''
import time as _time

def _instrument(models, images, preprocess, sqlapi=None):
    totals, undo = {}, []

    def wrap(owner, name, stage):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = _time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[stage] = totals.get(stage, 0.0) + _time.perf_counter() - start
        setattr(owner, name, timed)
        undo.append(lambda: setattr(owner, name, original))

    wrap(images, "decode", "decode")
    wrap(preprocess, "prepare", "preprocess")
    wrap(models.Model, "run", "inference")
    if sqlapi is not None:
        wrap(sqlapi, "model", "registry lookup")
        wrap(sqlapi, "vector_bytes", "feature bytes")

    def restore():
        for u in reversed(undo):
            u()
    return totals, restore
'''

BREAKDOWN_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.embed_timed(image bytea, model text DEFAULT 'efficientnet_lite0')
RETURNS bytea LANGUAGE plpython3u AS $python$
import json
from pgvision_runtime import images, models, preprocess, sqlapi
%(instrument)s
totals, restore = _instrument(models, images, preprocess, sqlapi)
start = _time.perf_counter()
try:
    out = sqlapi.embed_float4(plpy, GD, image, model)
finally:
    restore()
totals["python"] = _time.perf_counter() - start
GD["bench_timings"] = json.dumps(totals)
return out
$python$;
CREATE OR REPLACE FUNCTION bench.last_timings() RETURNS text LANGUAGE plpython3u AS $python$
return GD.get("bench_timings")
$python$;
-- the same call with the work left out: what the PL/Python call and the transfers cost,
-- and, returning a stored feature's bytes, what making the vector of them adds
CREATE OR REPLACE FUNCTION bench.noop(image bytea, vec bytea) RETURNS bytea
LANGUAGE plpython3u AS $python$
return vec
$python$;
CREATE OR REPLACE FUNCTION bench.noop_void(image bytea, vec bytea) RETURNS void
LANGUAGE plpython3u AS $python$
return None
$python$;
-- what a batch from a table costs before the runtime gets it: the images as Python bytes
CREATE OR REPLACE FUNCTION bench.python_args(images bytea[]) RETURNS int
LANGUAGE plpython3u AS $python$
return len(images)
$python$;
CREATE OR REPLACE FUNCTION bench.runtime_files() RETURNS text LANGUAGE plpython3u AS $python$
import hashlib, os, pgvision_runtime
folder = os.path.dirname(pgvision_runtime.__file__)
digest = hashlib.sha256()
for name in sorted(os.listdir(folder)):
    if name.endswith(".py"):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + b"\\0" + f.read())
return digest.hexdigest()
$python$;
"""


# "pgvision before": the SQL functions as they were before the float4 path, PL/Python bodies
# returning the text form (the runtime entry points the released 0.1.0 script calls too)
BEFORE_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.embed_before(image bytea, model text DEFAULT 'efficientnet_lite0')
RETURNS vector LANGUAGE plpython3u IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $python$
%(preamble)s
return pv.embed(plpy, GD, image, model)
$python$;
CREATE OR REPLACE FUNCTION bench.embed_batch_before(images bytea[], model text DEFAULT 'efficientnet_lite0')
RETURNS vector[] LANGUAGE plpython3u IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $python$
%(preamble)s
return pv.embed_batch(plpy, GD, images, model)
$python$;
"""
BEFORE_FUNCTIONS = ("bench.embed_before", "bench.embed_batch_before")


def install_before_functions(conn, runtime_path):
    preamble = (common.ROOT / "extension" / "preamble.py").read_text().replace(
        "@RUNTIME_PATH@", runtime_path)
    conn.execute(BEFORE_SQL % {"preamble": preamble})


def runtime_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def baseline_runtime(rev, installed_site):
    """A runtime folder with pgvision_runtime as of git revision ``rev``, on the installed deps.

    Laid out as pgvision.runtime_path expects (venv/lib/pythonX.Y/site-packages), owned by
    root and closed to writers, as the preamble requires; a .pth file adds the installed
    runtime's site-packages after it, for numpy, onnxruntime and Pillow.
    """
    sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=common.ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    root = common.WORK / f"runtime-{sha}"
    site = root / pathlib.Path(installed_site).relative_to(pathlib.Path(installed_site).parents[3])
    if root.exists():
        shutil.rmtree(root)
    site.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha, "python_udf/pgvision_runtime"], cwd=common.ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(site), "--strip-components=1"], input=archive, check=True)
    version = site / "pgvision_runtime" / "_version.py"
    if not version.exists():  # generated by make, not in git
        version.write_text(f'__version__ = "{sha}"\n')
    (site / "zz-installed.pth").write_text(str(installed_site) + "\n")
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return str(root), sha


# ---------------------------------------------------------------- contenders

class Sql:
    """pgvision in its own connection (own backend), threads set like the direct model's."""

    def __init__(self, conninfo, threads, runtime=None, name="pgvision", functions=None):
        options = f"-c pgvision.threads={threads}"
        if runtime:
            # pgvision.runtime_path is a server setting (it decides which code the server
            # runs): set it for the moment this backend imports the runtime, then put it back
            common.set_runtime_path(conninfo, runtime)
            try:
                self.conn = psycopg.connect(conninfo, autocommit=True, options=options)
                self.conn.execute("SELECT pgvision.runtime_info()")
            finally:
                common.set_runtime_path(conninfo, None)
        else:
            self.conn = psycopg.connect(conninfo, autocommit=True, options=options)
        self.name = name
        self.embed, self.embed_batch = functions or ("pgvision.embed", "pgvision.embed_batch")
        self.pid = self.conn.info.backend_pid

    def cpu(self):
        """CPU time of the backend, all its threads (onnxruntime's and decoding), in seconds."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                pass
        return total / 1e9

    def one(self, image):
        self.conn.execute(f"SELECT {self.embed}(%b)", [image], binary=True).fetchone()

    def many(self, images):
        if isinstance(images, str):  # a table of images in the server
            self.conn.execute(f"SELECT {self.embed_batch}(array_agg(image ORDER BY id)) FROM {images}",
                              binary=True).fetchone()
        else:
            self.conn.execute(f"SELECT {self.embed_batch}(%b)", [images], binary=True).fetchone()


class Direct:
    def __init__(self, threads):
        self.model = common.default_model(threads)
        self.name = "direct"
        self.tables = {}  # the images of a server table, for the same work in this process

    def cpu(self):
        return time.process_time()

    def one(self, image):
        self.model.embed(image, common.LIMITS)

    def many(self, images):
        if isinstance(images, str):
            images = self.tables[images]
        self.model.embed_many(images, common.LIMITS, batch_size=32)


def timed(c, work, spent):
    wall, cpu = time.perf_counter(), c.cpu()
    work()
    spent[c.name][0] += time.perf_counter() - wall
    spent[c.name][1] += c.cpu() - cpu


def rounds_one(contenders, images, n_rounds):
    """Images per second and per CPU-second of each contender per round, one image at a time.

    A round is every image once; the contenders take turns round by round, the order
    swapping every round, so all see the same stretch of a shared machine. Not image by
    image: after a run, onnxruntime's idle threads spin for a while before they sleep, and
    on two cores one contender's spinning would slow the other's next image (at threads 0,
    thumbnails took two to three times as long as alone, at random).
    """
    rates = {c.name: ([], []) for c in contenders}
    for c in contenders:  # warm: model loaded, arenas sized
        for image in images:
            c.one(image)
    for r in range(n_rounds):
        spent = {c.name: [0.0, 0.0] for c in contenders}
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            def work():
                for image in images:
                    c.one(image)
            timed(c, work, spent)
        for name, (wall, cpu) in spent.items():
            rates[name][0].append(len(images) / wall)
            rates[name][1].append(len(images) / cpu)
    return rates


def rounds_batch(contenders, images, n_rounds, count=None):
    """The same with one batch call per contender and round, the order swapping.

    ``images``: a list sent with the statement, or the name of a table of ``count`` images.
    """
    count = count or len(images)
    rates = {c.name: ([], []) for c in contenders}
    for c in contenders:
        c.many(images)
    for r in range(n_rounds):
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            spent = {c.name: [0.0, 0.0]}
            timed(c, lambda: c.many(images), spent)
            rates[c.name][0].append(count / spent[c.name][0])
            rates[c.name][1].append(count / spent[c.name][1])
    return rates


def summarize(rates, against="direct"):
    """Medians per contender of images/s (wall clock) and images per CPU-second, and ratios.

    The CPU time is the contender's own process (the backend, or this process for direct),
    all threads: other work on a shared machine lengthens the wall clock but hardly the CPU
    time a piece of work takes, so its ratio is the steadier estimate of the overhead.
    """
    out = {}
    for name, (wall, cpu) in rates.items():
        out[name] = {"median_images_per_s": common.median(wall), "rounds": wall,
                     "median_images_per_cpu_s": common.median(cpu), "rounds_cpu": cpu}
    base = out[against]
    for name, r in out.items():
        r["ratio_to_direct"] = r["median_images_per_s"] / base["median_images_per_s"]
        r["cpu_ratio_to_direct"] = r["median_images_per_cpu_s"] / base["median_images_per_cpu_s"]
        # the same ratio round by round (both ran back to back), a check on the noise
        r["median_round_ratio"] = common.median([a / b for a, b in zip(r["rounds"], base["rounds"])])
    return out


def batch_sizes(direct, images, n_rounds):
    """Images/s of onnxruntime alone on prepared inputs, by images per model call."""
    prepared = np.stack([direct.model.prepare(i, common.LIMITS) for i in images])
    n = len(prepared)
    rates = {s: [] for s in SIZES}
    for s in SIZES:
        direct.model.run(prepared[:s])
    for r in range(n_rounds):
        for s in (SIZES if r % 2 == 0 else SIZES[::-1]):
            start = time.perf_counter()
            for i in range(0, n, s):
                direct.model.run(prepared[i:i + s])
            rates[s].append(n / (time.perf_counter() - start))
    return {str(s): common.median(v) for s, v in rates.items()}


# ---------------------------------------------------------------- breakdown

def breakdown(conn, direct, images, n_rounds):
    """Milliseconds per image by stage, medians over images and rounds, for both sides."""
    ns = {}
    exec(INSTRUMENT, ns)
    sql_rows, direct_rows, noop, noop_void = [], [], [], []
    vec = conn.execute("SELECT pgvision._embed_float4(%b, 'efficientnet_lite0')", [images[0]],
                       binary=True).fetchone()[0]
    conn.execute("SELECT pgvision._vector_from_float4(bench.embed_timed(%b))", [images[0]],
                 binary=True).fetchone()
    for r in range(n_rounds):
        for image in images:
            start = time.perf_counter()
            conn.execute("SELECT pgvision._vector_from_float4(bench.embed_timed(%b))", [image],
                         binary=True).fetchone()
            wall = time.perf_counter() - start
            t = json.loads(conn.execute("SELECT bench.last_timings()").fetchone()[0])
            t["call"] = wall
            sql_rows.append(t)

            start = time.perf_counter()
            conn.execute("SELECT pgvision._vector_from_float4(bench.noop(%b, %b))", [image, vec],
                         binary=True).fetchone()
            noop.append(time.perf_counter() - start)
            start = time.perf_counter()
            conn.execute("SELECT bench.noop_void(%b, %b)", [image, vec], binary=True).fetchone()
            noop_void.append(time.perf_counter() - start)

            totals, restore = ns["_instrument"](common.models, common.models.images,
                                                common.models.preprocess)
            start = time.perf_counter()
            try:
                direct.model.embed(image, common.LIMITS)
            finally:
                restore()
            totals["call"] = time.perf_counter() - start
            direct_rows.append(totals)

    def med(rows, key):
        return 1000 * common.median([row.get(key, 0.0) for row in rows])

    stages = ["registry lookup", "decode", "preprocess", "inference", "feature bytes"]
    sql = {s: med(sql_rows, s) for s in stages}
    sql["rest of the Python call"] = 1000 * common.median(
        [row["python"] - sum(row.get(s, 0.0) for s in stages) for row in sql_rows])
    void_ms = 1000 * common.median(noop_void)
    sql["PL/Python call and image transfer"] = void_ms
    sql["vector of the bytes and result transfer"] = 1000 * common.median(noop) - void_ms
    sql["total (client clock)"] = med(sql_rows, "call")
    dstages = ["decode", "preprocess", "inference"]
    drct = {s: med(direct_rows, s) for s in dstages}
    drct["rest of the Python call"] = 1000 * common.median(
        [row["call"] - sum(row.get(s, 0.0) for s in dstages) for row in direct_rows])
    drct["total (client clock)"] = med(direct_rows, "call")
    return {"pgvision.embed": sql, "direct": drct}


# ---------------------------------------------------------------- run

def datasets():
    photos = common.photos()
    pngs = [p.read_bytes() for p in common.fashion_pngs("test", BATCH_IMAGES)]
    return {
        "photos": {"one": photos, "batch": (photos * (BATCH_IMAGES // len(photos) + 1))[:BATCH_IMAGES],
                   "what": f"the {len(photos)} darknet photos (JPEG, "
                           f"{min(map(len, photos)) // 1000}-{max(map(len, photos)) // 1000} kB)"},
        "fashion": {"one": pngs[:SMALL_IMAGES], "batch": pngs,
                    "what": "Fashion-MNIST test PNGs (28x28 grey)"},
    }


def measure(server, threads, data, args, baseline):
    direct = Direct(threads)
    sql = Sql(server.conninfo, threads)
    contenders = [sql, direct]
    if baseline:
        contenders.append(Sql(server.conninfo, threads, baseline[0], name="pgvision before",
                              functions=BEFORE_FUNCTIONS))
    out = {}
    with psycopg.connect(server.conninfo, autocommit=True) as c:
        for dname, d in data.items():
            c.execute(f"DROP TABLE IF EXISTS bench.batch_{dname}")
            c.execute(f"CREATE TABLE bench.batch_{dname} (id int PRIMARY KEY, image bytea)")
            with c.cursor().copy(f"COPY bench.batch_{dname} FROM STDIN") as copy:
                for i, image in enumerate(d["batch"]):
                    copy.write_row((i, image))
            c.execute(f"VACUUM ANALYZE bench.batch_{dname}")
        out["table read"] = {}
        for dname in data:
            read, python = [], []
            for _ in range(5):
                for q, into in (("SELECT cardinality(array_agg(image ORDER BY id))", read),
                                ("SELECT bench.python_args(array_agg(image ORDER BY id))", python)):
                    start = time.perf_counter()
                    c.execute(f"{q} FROM bench.batch_{dname}").fetchone()
                    into.append(time.perf_counter() - start)
            out["table read"][dname] = {"read_ms": 1000 * common.median(read),
                                        "python_ms": 1000 * common.median(python)}
    try:
        for dname, d in data.items():
            print(f"threads={threads} {dname}: one at a time ...", flush=True)
            one = summarize(rounds_one(contenders, d["one"], args.rounds))
            print(f"threads={threads} {dname}: batch of {len(d['batch'])} ...", flush=True)
            batch = summarize(rounds_batch(contenders, d["batch"], args.rounds))
            print(f"threads={threads} {dname}: batch of {len(d['batch'])} from a table ...", flush=True)
            table = f"bench.batch_{dname}"
            direct.tables[table] = d["batch"]
            stored = summarize(rounds_batch(contenders, table, args.rounds, len(d["batch"])))
            out[dname] = {"one at a time": one, "batch": batch, "batch from a table": stored}
            for form, res in out[dname].items():
                print(f"  {form:<13} " + "; ".join(
                    f"{n} {r['median_images_per_s']:.1f} images/s ({r['ratio_to_direct']:.3f}, "
                    f"CPU {r['cpu_ratio_to_direct']:.3f})" for n, r in res.items()), flush=True)
        print(f"threads={threads}: onnxruntime alone by batch size ...", flush=True)
        out["batch sizes"] = batch_sizes(direct, data["photos"]["batch"], args.rounds)
        print("  " + ", ".join(f"{k}: {v:.1f}" for k, v in out["batch sizes"].items()) + " images/s", flush=True)
        print(f"threads={threads}: breakdown ...", flush=True)
        out["breakdown"] = {dname: breakdown(sql.conn, direct, d["one"], max(3, args.rounds // 3))
                            for dname, d in data.items()}
    finally:
        for c in contenders:
            if isinstance(c, Sql):
                c.conn.close()
    return out


def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


def report(result, plot_name):
    targets = result["targets"]
    first_t = next(iter(result["threads"]))
    tr = result["threads"][first_t]["table read"]
    lines = [
        "## 1. Inference overhead",
        "",
        "Images per second of `pgvision.embed` (one image per statement) and `pgvision.embed_batch` "
        f"({BATCH_IMAGES} images per statement) against the same runtime called directly in Python "
        "(`Model.embed`, `Model.embed_many`): same model bytes, same preprocessing code, same images, "
        "same thread count (`pgvision.threads` = the direct model's threads; 0 is onnxruntime's "
        "default, every core), both at 32 images per model call. On one throwaway server, the "
        "contenders take turns round by round (one at a time: all images each, see below) or call by "
        "call (batch); figures are "
        f"medians over {result['rounds']} rounds (a round: every image once, or one batch call each). "
        "The ratio is pgvision / direct of the medians; in brackets, the median of the rounds' own "
        "ratios. The CPU-second ratio uses the CPU time of each contender's process (the backend, "
        "or the benchmark's own process for direct), all threads: other work on a shared machine "
        "stretches the wall clock but hardly the CPU time, so it is the steadier estimate of the "
        f"overhead. Images: {result['datasets']['photos']}; {result['datasets']['fashion']}. "
        f"Targets: at least {targets['one at a time']} one at a time, {targets['batch']} for the batch form. "
        "Forms: *one at a time* is `SELECT pgvision.embed($1)` per image, the vector fetched in binary; "
        "*batch* is `SELECT pgvision.embed_batch($1)` with the images sent by the client in the "
        "statement, which includes moving them into the server (for the photos "
        f"{result['transfer']['photos']['mb']:.0f} MB, {result['transfer']['photos']['ms']:.0f} ms for "
        "`SELECT cardinality($1::bytea[])` alone, against "
        f"{result['transfer']['fashion']['ms']:.0f} ms for the PNGs); *batch from a table* is "
        "`SELECT pgvision.embed_batch(array_agg(image ORDER BY id))` over the same images stored in a "
        "table, as a backfill reads them (for the photos, reading them into the array takes "
        f"{tr['photos']['read_ms']:.0f} ms and handing them to Python as bytes {tr['photos']['python_ms']:.0f} ms "
        f"in all; for the PNGs {tr['fashion']['read_ms']:.0f} and {tr['fashion']['python_ms']:.0f} ms, "
        f"threads {first_t}). One at a time, the contenders alternate round by round rather than image "
        "by image: onnxruntime's idle threads spin for a while after a run before they sleep, and on "
        "two cores one contender's spinning slowed the other's next image, at random: thumbnails "
        "at threads 0 took two to three times as long as they do alone.",
        "",
        "| threads | images | form | pgvision images/s | direct images/s | ratio | ratio of images per CPU-second | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for threads, res in result["threads"].items():
        for dname in ("photos", "fashion"):
            for form in FORMS:
                r = res[dname][form]
                ratio = r["pgvision"]["ratio_to_direct"]
                ok = "met" if ratio >= targets[form] else "**missed**"
                lines.append(f"| {threads} | {dname} | {form} | {fmt(r['pgvision']['median_images_per_s'])} "
                             f"| {fmt(r['direct']['median_images_per_s'])} | {ratio:.3f} "
                             f"({r['pgvision']['median_round_ratio']:.3f}) "
                             f"| {r['pgvision']['cpu_ratio_to_direct']:.3f} | {targets[form]} {ok} |")
    lines += ["", f"![images per second]({plot_name})", ""]
    lines += ["onnxruntime alone (prepared inputs, the photos) by images per model call, images/s:", "",
              "| threads | " + " | ".join(SIZES_LABELS) + " |", "|---|" + "---|" * len(SIZES_LABELS)]
    for threads, res in result["threads"].items():
        lines.append(f"| {threads} | " + " | ".join(fmt(res['batch sizes'][str(k)]) for k in SIZES) + " |")
    gains = ", ".join(f"{res['batch sizes']['32'] / res['batch sizes']['1']:.2f}x at threads {t}"
                      for t, res in result["threads"].items())
    lines += ["", f"32 images per model call against 1: {gains}; onnxruntime's activation memory grows "
                  "with the batch (about 9 MB per image, 280 MB for 32; see figure 5).", ""]

    first = next(iter(result["threads"]))
    lines += [f"Where the time of one image goes (threads {first}, ms per image, medians; stages timed "
              "inside the backend by wrapping the runtime's functions, the rest by the client's clock):",
              "", "| stage | photos: pgvision.embed | photos: direct | fashion: pgvision.embed | fashion: direct |",
              "|---|---|---|---|---|"]
    bd = result["threads"][first]["breakdown"]
    keys = list(bd["photos"]["pgvision.embed"])
    for k in keys:
        cells = []
        for dname in ("photos", "fashion"):
            for side in ("pgvision.embed", "direct"):
                v = bd[dname][side].get(k)
                cells.append("" if v is None else f"{v:.2f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")

    if result.get("baseline"):
        lines += ["", f"Before and after (the runtime package at {result['baseline']} against this one, "
                      "same server, same run, alternating):", "",
                  "| threads | images | form | before images/s | after images/s | speed-up | speed-up in images per CPU-second |",
                  "|---|---|---|---|---|---|---|"]
        for threads, res in result["threads"].items():
            for dname in ("photos", "fashion"):
                for form in FORMS:
                    r = res[dname][form]
                    b, a = r["pgvision before"], r["pgvision"]
                    lines.append(f"| {threads} | {dname} | {form} | {fmt(b['median_images_per_s'])} "
                                 f"| {fmt(a['median_images_per_s'])} "
                                 f"| {a['median_images_per_s'] / b['median_images_per_s']:.2f}x "
                                 f"| {a['median_images_per_cpu_s'] / b['median_images_per_cpu_s']:.2f}x |")
    lines += ["", "What changed, and why:", ""] + [f"- {c}" for c in CHANGES]
    lines += ["", "Run: `make bench BENCH=inference`, or `build/venv/bin/python bench/inference.py` "
                  "(options: --help)."]
    return "\n".join(lines)


CHANGES = [
    "The feature leaves Python as its float32 bytes, and one C function (`pgvision._vector_from_float4`, "
    "the extension's only C) copies them into a vector: PL/Python hands any result but `bytea` to "
    "the type's text input, so a `vector` result meant formatting 1280 floats in Python and pgvector "
    "parsing them again, 0.4 + 0.2 ms an image, a tenth of a thumbnail's whole time. Same bits "
    "(tests/test_embed.py). `embed` and `embed_batch` are SQL functions over that path now.",
    "`embed_batch` (and `Model.embed_many`) decode and resize the images of a batch on as many threads "
    "as `pgvision.threads` allows (every core for 0) when the chunk's first image took 3 ms or more: "
    "for photos that is nearly half of a batch's time, and Pillow releases the GIL for it; "
    "thumbnails are mostly Python and stay on one thread, where the GIL would make threads slower. "
    "Errors still name the first bad image; the cancel check still runs between images. With "
    "`pgvision.threads = 1` nothing changes.",
    "The last model call of an `embed_batch` gives onnxruntime's activation memory back (280 MB "
    "after a batch of 32; see figure 5), which the direct `Model.embed_many` does too; "
    "`embed_table` keeps it from batch to batch and gives it back at the end (figure 2).",
    "A backend runs the model from the shared copy (figure 5): the same bits and the same speed "
    "as a private session, without onnxruntime's graph optimization at every first load.",
    "Kept: the registry lookup on every call (one prepared query, 0.1-0.2 ms, measured above). It "
    "is what makes a dropped or re-registered model and a changed setting take effect at once; "
    "PL/Python offers no cheaper way to read settings or to learn that the registry changed.",
    "Left as it is: decoding and resizing, the largest cost after inference, are Pillow's JPEG "
    "decoder and bicubic resampling; faster variants (JPEG draft mode, reducing_gap) change the "
    "pixels, and features must stay bit-identical.",
]


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, series = [], {}
    for threads, res in result["threads"].items():
        for dname in ("photos", "fashion"):
            for form in FORMS:
                groups.append(f"{dname}\n{form}\nthreads {threads}")
                for name, r in res[dname][form].items():
                    series.setdefault(name, []).append(r["median_images_per_s"])
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
        if name == "pgvision":
            direct = series["direct"]
            for b, v, d in zip(bars, values, direct):
                ax.annotate(f"{v / d:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("images per second (log scale)")
    ax.set_title("pgvision.embed / embed_batch against onnxruntime called directly (label: ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--baseline", default=BASELINE,
                    help="git revision whose runtime package to measure as 'before' ('none' to skip; "
                         "default: the runtime before the changes of figures 1 and 5)")
    ap.add_argument("--port", type=int, default=PORT)
    args = ap.parse_args()

    data = datasets()
    result = {"rounds": args.rounds, "batch_images": BATCH_IMAGES, "targets": {"one at a time": 0.85, "batch": 0.95, "batch from a table": 0.95},
              "datasets": {k: v["what"] for k, v in data.items()}, "threads": {}}
    with common.Server(NAME, args.port) as server:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgvision CASCADE")
            info = json.loads(conn.execute("SELECT pgvision.runtime_info()::text").fetchone()[0])
            conn.execute(BREAKDOWN_SQL % {"instrument": INSTRUMENT})
            install_before_functions(conn, info["runtime_path"])
            installed = conn.execute("SELECT bench.runtime_files()").fetchone()[0]
            if installed != runtime_digest(common.ROOT / "python_udf" / "pgvision_runtime"):
                print("WARNING: the installed runtime differs from python_udf/ here: run make install first")
            result["runtime_matches_checkout"] = installed == runtime_digest(
                common.ROOT / "python_udf" / "pgvision_runtime")
            site = next(pathlib.Path(info["runtime_path"]).glob("venv/lib/python3*/site-packages"))
            result["transfer"] = {}
            for dname, d in data.items():
                took = []
                for _ in range(5):
                    start = time.perf_counter()
                    conn.execute("SELECT cardinality(%b::bytea[])", [d["batch"]]).fetchone()
                    took.append(time.perf_counter() - start)
                result["transfer"][dname] = {"mb": sum(map(len, d["batch"])) / 1e6,
                                             "ms": 1000 * common.median(took)}
        baseline = None
        if args.baseline and args.baseline != "none":
            try:
                baseline = baseline_runtime(args.baseline, site)
            except subprocess.CalledProcessError as e:
                print(f"no 'before' runtime: git cannot give revision {args.baseline} ({e})")
        if baseline:
            result["baseline"] = baseline[1]
        for threads in args.threads:
            result["threads"][str(threads)] = measure(server, threads, data, args, baseline)
    m = common.machine()
    result["machine_line"] = (f"{m['cpu']}, {m['cores']} cores, {m['memory_mib'] // 1024} GiB, "
                              f"onnxruntime {m['onnxruntime']}, {m['postgresql']}")
    result["command_line"] = " ".join(["build/venv/bin/python", "bench/inference.py",
                                       *sys.argv[1:]])
    path = common.plot_path(NAME, "throughput")
    plot(result, path)
    common.write_results(NAME, result, report(result, path.name))


if __name__ == "__main__":
    main()

"""Figure 5: cold start and memory of backends that load the model.

    build/venv/bin/python bench/memory.py [--backends 8] [--runs 7] [--baseline REV]

One throwaway server with pgvision. Each figure is taken in each mode, the modes
alternating:

- shared: ``pgvision.share_models = on`` (the default): backends open the server's shared
  copy of the model, whose weights they map from one file (see pgvision_runtime/sharing.py);
- private: ``pgvision.share_models = off``: each backend loads the model from the registry
  table into its own memory;
- before: the runtime package as it was at git revision ``--baseline`` (by default the commit
  before these changes; ``none`` leaves this mode out), on the same installed dependencies.

Figures:

- first ``pgvision.embed`` in a fresh backend (model load included), and its parts: the
  imports (a fresh backend's ``pgvision.runtime_info()``, which imports numpy, Pillow and
  onnxruntime), then the first embed, then a warm one; and, once, the very first embed
  after the shared copy was deleted, which writes it;
- memory of one backend before and after its first embed, from /proc/PID/smaps_rollup:
  RSS (counts shared pages in full), PSS (shared pages divided among the processes that map
  them) and USS (pages only this process maps);
- 1..N backends at once, each after one embed: the PSS of every process of the server
  (postmaster and its children) above the idle server's, i.e. what these backends cost in
  all, and the drop of MemAvailable (noisier: other work on the machine moves it);
- the same N backends after one ``embed_batch`` of 32 images each (onnxruntime keeps the
  activation memory of the largest batch it has run).
"""

import argparse
import json
import shutil
import subprocess
import sys
import time

import psutil
import psycopg

import common
from inference import BASELINE, BEFORE_FUNCTIONS, baseline_runtime, install_before_functions

PORT = 54882
NAME = "memory"


def smaps(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def mib(kb):
    return kb / 1024


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])


class Modes:
    def __init__(self, server, baseline):
        self.server = server
        self.options = {"shared": "-c pgvision.share_models=on",
                        "private": "-c pgvision.share_models=off"}
        # the runtime folder each mode's backends import (a server setting: see connect)
        self.runtime = {"shared": None, "private": None}
        self.current = None
        if baseline:
            self.options["before"] = "-c pgvision.share_models=on"
            self.runtime["before"] = baseline

    def embed(self, mode):
        """The SQL function embedding one image in ``mode``: the old runtime has only the text path."""
        return BEFORE_FUNCTIONS[0] if mode == "before" else "pgvision.embed"

    def embed_batch(self, mode):
        return BEFORE_FUNCTIONS[1] if mode == "before" else "pgvision.embed_batch"

    def connect(self, mode):
        """A new backend of ``mode``; it must make its first pgvision call before a
        connection of another mode is opened, since the server's runtime folder follows the
        mode asked last."""
        if self.runtime[mode] != self.current:
            common.set_runtime_path(self.server.conninfo, self.runtime[mode])
            self.current = self.runtime[mode]
        return psycopg.connect(self.server.conninfo, autocommit=True, options=self.options[mode])

    def names(self, k):
        names = list(self.options)
        return names if k % 2 == 0 else names[::-1]


def server_pss(server):
    """Total PSS (kB) of the postmaster and all its children."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += smaps(p.pid)["Pss"]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def wait_gone(server, pids, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)


def cold_start(modes, image, runs):
    out = {m: {"first embed": [], "imports": [], "first embed after imports": [], "warm embed": [],
               "connect": []} for m in modes.options}
    for k in range(runs):
        for mode in modes.names(k):
            r = out[mode]
            start = time.perf_counter()
            with modes.connect(mode) as c:
                r["connect"].append(time.perf_counter() - start)
                start = time.perf_counter()
                c.execute(f"SELECT {modes.embed(mode)}(%b)", [image], binary=True).fetchone()
                r["first embed"].append(time.perf_counter() - start)
            with modes.connect(mode) as c:
                start = time.perf_counter()
                c.execute("SELECT pgvision.runtime_info()").fetchone()
                r["imports"].append(time.perf_counter() - start)
                start = time.perf_counter()
                c.execute(f"SELECT {modes.embed(mode)}(%b)", [image], binary=True).fetchone()
                r["first embed after imports"].append(time.perf_counter() - start)
                start = time.perf_counter()
                c.execute(f"SELECT {modes.embed(mode)}(%b)", [image], binary=True).fetchone()
                r["warm embed"].append(time.perf_counter() - start)
    return {m: {k: {"median_ms": 1000 * common.median(v), "runs_ms": [1000 * x for x in v]}
                for k, v in r.items()} for m, r in out.items()}


NUMPY_IMPORT = """DO LANGUAGE plpython3u $$
import os, sys, time
sys.path.insert(0, %(site)r)
if %(threads)r:
    os.environ["OPENBLAS_NUM_THREADS"] = %(threads)r
start = time.perf_counter()
import numpy
plpy.notice("%%.6f %%d" %% (time.perf_counter() - start, len(os.listdir("/proc/self/task"))))
$$"""


def numpy_import(server, site, runs):
    """numpy's import in a fresh backend with OpenBLAS's default threads and with one."""
    out = {"default": [], "1": []}
    threads = {}
    for k in range(runs):
        for setting in (["default", "1"] if k % 2 == 0 else ["1", "default"]):
            with psycopg.connect(server.conninfo, autocommit=True) as c:
                notes = []
                c.add_notice_handler(lambda d: notes.append(d.message_primary))
                c.execute(NUMPY_IMPORT % {"site": str(site), "threads": "" if setting == "default" else setting})
                seconds, n = notes[-1].split()
                out[setting].append(float(seconds))
                threads[setting] = int(n)
    return {s: {"median_ms": 1000 * common.median(v), "threads_after": threads[s]} for s, v in out.items()}


LOAD_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.load_breakdown(image bytea) RETURNS text
LANGUAGE plpython3u AS $python$
import json, time
from pgvision_runtime import models, sqlapi
try:
    from pgvision_runtime import sharing
except ImportError:  # the runtime before sharing
    sharing = None
totals, undo = {}, []

def wrap(owner, name, stage):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - start
    setattr(owner, name, timed)
    undo.append(lambda: setattr(owner, name, original))

if sharing is not None:
    wrap(sharing, "_hash_file", "sha256 of the shared copy")
wrap(models.Model, "__init__", "onnxruntime session")
start = time.perf_counter()
try:
    m, conf = sqlapi.model(plpy, GD, "efficientnet_lite0")
finally:
    for u in reversed(undo):
        u()
totals["model load"] = time.perf_counter() - start
batch = m.prepare(image, sqlapi._limits(conf))[None]
for stage in ("first inference", "second inference"):
    start = time.perf_counter()
    m.run(batch)
    totals[stage] = time.perf_counter() - start
return json.dumps(totals)
$python$;
"""


def load_breakdown(modes, image, runs):
    """The first embed's model load in a fresh backend, in parts, timed inside it."""
    rows = {m: [] for m in modes.options}
    for k in range(runs):
        for mode in modes.names(k):
            with modes.connect(mode) as c:
                c.execute("SELECT pgvision.runtime_info()").fetchone()  # imports
                rows[mode].append(json.loads(c.execute("SELECT bench.load_breakdown(%b)", [image]).fetchone()[0]))
    out = {}
    for mode, rs in rows.items():
        keys = sorted({k for r in rs for k in r})
        out[mode] = {k: 1000 * common.median([r.get(k, 0.0) for r in rs]) for k in keys}
        out[mode]["rest of the load (registry queries, spec)"] = 1000 * common.median(
            [r["model load"] - r.get("onnxruntime session", 0) - r.get("sha256 of the shared copy", 0)
             for r in rs])
    return out


def first_write(modes, server, image, runs):
    """The first embed of a fresh backend when the shared copy has to be written."""
    folder = server.data / "pgsql_tmp_pgvision_models"
    times = []
    for _ in range(runs):
        shutil.rmtree(folder, ignore_errors=True)
        with modes.connect("shared") as c:
            start = time.perf_counter()
            c.execute("SELECT pgvision.embed(%b)", [image], binary=True).fetchone()
            times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * common.median(times), "runs_ms": [1000 * t for t in times]}


def one_backend(modes, image, runs):
    """Memory of a lone backend before and after its first embed (medians of runs)."""
    keys = ("Rss", "Pss", "Uss", "Pss_Anon", "Pss_File", "Anonymous")
    out = {m: {"before": {k: [] for k in keys}, "after": {k: [] for k in keys}} for m in modes.options}
    for k in range(runs):
        for mode in modes.names(k):
            with modes.connect(mode) as c:
                pid = c.info.backend_pid
                before = smaps(pid)
                c.execute(f"SELECT {modes.embed(mode)}(%b)", [image], binary=True).fetchone()
                after = smaps(pid)
            wait_gone(modes.server, [pid])
            for key in keys:
                out[mode]["before"][key].append(before[key])
                out[mode]["after"][key].append(after[key])
    return {m: {when: {k: mib(common.median(v)) for k, v in r[when].items()} for when in r}
            for m, r in out.items()}


def many_backends(modes, server, image, batch, n_max):
    out = {m: [] for m in modes.options}
    for n in range(1, n_max + 1):
        for mode in modes.names(n):
            idle = server_pss(server)
            avail = mem_available()
            conns = [modes.connect(mode) for _ in range(n)]
            try:
                for c in conns:
                    c.execute(f"SELECT {modes.embed(mode)}(%b)", [image], binary=True).fetchone()
                pss = server_pss(server) - idle
                per = [smaps(c.info.backend_pid) for c in conns]
                drop = avail - mem_available()
                row = {"backends": n, "server_pss_mib": mib(pss), "available_drop_mib": mib(drop),
                       "sum_rss_mib": mib(sum(p["Rss"] for p in per)),
                       "sum_uss_mib": mib(sum(p["Uss"] for p in per))}
                if n == n_max:
                    for c in conns:
                        c.execute(f"SELECT {modes.embed_batch(mode)}(%b)", [batch], binary=True).fetchone()
                    row["after_batch_server_pss_mib"] = mib(server_pss(server) - idle)
                    row["after_batch_available_drop_mib"] = mib(avail - mem_available())
            finally:
                pids = [c.info.backend_pid for c in conns]
                for c in conns:
                    c.close()
                wait_gone(server, pids)
            out[mode].append(row)
            print(f"  {n} backends, {mode}: server PSS +{row['server_pss_mib']:.0f} MiB, "
                  f"MemAvailable {-row['available_drop_mib']:+.0f} MiB", flush=True)
    return out


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, rows in result["backends"].items():
        a.plot([r["backends"] for r in rows], [r["server_pss_mib"] for r in rows], marker="o", label=mode)
    a.set_xlabel("backends, each after one pgvision.embed")
    a.set_ylabel("server PSS above idle (MiB)")
    a.set_title("memory of N backends")
    a.set_ylim(bottom=0)
    a.legend()
    modes = list(result["cold_start"])
    first = [result["cold_start"][m]["first embed"]["median_ms"] for m in modes]
    warm = [result["cold_start"][m]["warm embed"]["median_ms"] for m in modes]
    b.bar(modes, first, label="first embed in a fresh backend")
    b.bar(modes, warm, label="a warm embed")
    for x, v in enumerate(first):
        b.annotate(f"{v:.0f} ms", (x, v), ha="center", va="bottom", fontsize=8)
    b.set_ylabel("ms")
    b.set_title("cold start")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result, plot_name):
    modes = list(result["cold_start"])
    cs, one, n = result["cold_start"], result["one_backend"], result["n_max"]
    last = {m: result["backends"][m][-1] for m in modes}
    lines = [
        "## 5. Cold start and memory",
        "",
        "A fresh backend's first `pgvision.embed` imports the runtime and loads the model; the "
        "model then stays loaded for the connection. Modes: " + "; ".join(
            f"**{m}**: {DESCRIBE[m].format(rev=result.get('baseline', ''))}" for m in modes) + ". "
        f"Medians of {result['runs']} fresh backends per mode, the modes alternating; memory from "
        "/proc/PID/smaps_rollup (PSS divides shared pages among the processes that map them, USS "
        "counts the pages only one process maps).",
        "",
        "| | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
        "| first embed in a fresh backend (ms) | " + " | ".join(f"{cs[m]['first embed']['median_ms']:.0f}" for m in modes) + " |",
        "| of which imports: a fresh backend's `runtime_info()` (ms) | " + " | ".join(f"{cs[m]['imports']['median_ms']:.0f}" for m in modes) + " |",
        "| then the first embed (ms) | " + " | ".join(f"{cs[m]['first embed after imports']['median_ms']:.0f}" for m in modes) + " |",
        "| a warm embed (ms) | " + " | ".join(f"{cs[m]['warm embed']['median_ms']:.1f}" for m in modes) + " |",
    ]
    lb = result["load_breakdown"]
    for key in ("model load", "sha256 of the shared copy", "onnxruntime session",
                "rest of the load (registry queries, spec)", "first inference", "second inference"):
        lines.append(f"| timed inside a fresh backend after the imports: {key} (ms) | " + " | ".join(
            f"{lb[m].get(key, 0.0):.0f}" if key in lb[m] else "-" for m in modes) + " |")
    for key, label in (("Rss", "RSS"), ("Pss", "PSS"), ("Uss", "USS")):
        lines.append(f"| {label} a lone backend gains by its first embed (MiB) | " + " | ".join(
            f"{one[m]['after'][key] - one[m]['before'][key]:.0f} (of {one[m]['after'][key]:.0f})" for m in modes) + " |")
    lines += [
        f"| {n} backends after one embed each: server PSS above idle (MiB) | " + " | ".join(f"{last[m]['server_pss_mib']:.0f}" for m in modes) + " |",
        f"| the same, per backend (MiB) | " + " | ".join(f"{last[m]['server_pss_mib'] / n:.1f}" for m in modes) + " |",
        f"| {n} backends: sum of RSS (MiB) | " + " | ".join(f"{last[m]['sum_rss_mib']:.0f}" for m in modes) + " |",
        f"| {n} backends: change of the system's MemAvailable (MiB; other work on the machine moves it too) | " + " | ".join(f"{-last[m]['available_drop_mib']:+.0f}" for m in modes) + " |",
        f"| {n} backends after one `embed_batch` of 32 each: server PSS above idle (MiB) | " + " | ".join(f"{last[m]['after_batch_server_pss_mib']:.0f}" for m in modes) + " |",
    ]
    ni = result["numpy_import"]
    lines += ["", f"Importing numpy in a fresh backend takes {ni['default']['median_ms']:.0f} ms with "
                  f"OpenBLAS's default threads (the backend then has {ni['default']['threads_after']} "
                  f"threads) and {ni['1']['median_ms']:.0f} ms with `OPENBLAS_NUM_THREADS=1` "
                  f"({ni['1']['threads_after']}), which the preamble now sets unless the server's "
                  "environment sets it (in every mode above: the preamble is part of the installed SQL)."]
    if result.get("first_write"):
        lines += ["", f"The very first embed after the shared copy is deleted writes it (once per model, "
                      f"onnxruntime version and CPU): {result['first_write']['median_ms']:.0f} ms "
                      f"(median of {len(result['first_write']['runs_ms'])})."]
    lines += ["", f"![memory and cold start]({plot_name})", "",
              "Server PSS above idle, by number of backends (MiB):", "",
              "| backends | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for i in range(n):
        lines.append(f"| {i + 1} | " + " | ".join(f"{result['backends'][m][i]['server_pss_mib']:.0f}" for m in modes) + " |")
    lines += ["", "What changed, and why:", ""] + [f"- {c}" for c in CHANGES]
    lines += ["", "Run: `make bench BENCH=memory`, or `build/venv/bin/python bench/memory.py` "
                  "(options: --help)."]
    return "\n".join(lines)


DESCRIBE = {
    "shared": "`pgvision.share_models = on` (the default), backends map the weights of one shared copy",
    "private": "`pgvision.share_models = off`, each backend loads the model from the registry table",
    "before": "the runtime package at {rev}, before these changes",
}

CHANGES = [
    "Shared copy (`pgvision.share_models`, on by default): the first backend to load a model has "
    "onnxruntime save it as it runs it (graph optimized, weights reordered and prepacked) with "
    "the weights in a file of their own, under `$PGDATA/pgsql_tmp_pgvision_models/` (base backups "
    "leave out names starting with `pgsql_tmp`; safe to delete). onnxruntime maps that file read-only instead of "
    "reading it, so all backends use the same page-cache pages. It is written in a private "
    "temporary folder and renamed into place; folder and files belong to the server's user and "
    "are closed to others; on every load the sha256 of each file is checked against the manifest, "
    "which names the registry's sha256, the onnxruntime version and the CPU; any problem falls "
    "back to the registry's bytes. Output is bit-identical (tests/test_model_sharing.py). A fresh "
    "backend also skips onnxruntime's graph optimization, which the shared copy has done once.",
    "onnxruntime keeps the activation memory of the largest batch it has run (280 MB after a batch "
    "of 32) for the life of the session: the last model call of an `embed_batch` now gives it back "
    "(`memory.enable_memory_arena_shrinkage`). Regrowing it costs little for photos but a sixth of "
    "the throughput of 64-thumbnail calls (figure 2), so `embed_table` keeps it from batch to batch "
    "and gives it back when the run ends. "
    "Trimming the C heap after every batch as well cost 10-15% of a photo batch's throughput (later "
    "allocations fault their pages in again) for 9 MB: not kept.",
    "Without sharing, the Python bytes of the model are released once the session is built "
    "(onnxruntime's wrapper kept them for the life of the session), and the C heap's free pages "
    "are returned after a load.",
    "The preamble sets `OPENBLAS_NUM_THREADS=1` before numpy is imported (unless the server's "
    "environment sets it), and the runtime registers only the six image openers it uses instead "
    "of letting Pillow import all its plugins: less import time and one thread fewer per backend. "
    "The preamble is part of the installed SQL, so the 'before' column has it too.",
    "Not taken: `session.disable_prepacking` saves the prepacked copy but changes the logits' "
    "bits; `use_ort_model_bytes_for_initializers` with an ORT-format file aliases a buffer that "
    "the Python binding copies into the heap anyway, so nothing is shared; a smaller default "
    "`pgvision.batch_size` would shrink the activation memory too, but releasing it after each "
    "call keeps both the batch size and the memory.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=8)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--baseline", default=BASELINE,
                    help="git revision whose runtime package to measure as 'before' ('none' to skip; "
                         "default: the runtime before the changes of figures 1 and 5)")
    ap.add_argument("--port", type=int, default=PORT)
    args = ap.parse_args()

    image = common.photos()[0]
    batch = (common.photos() * 5)[:32]
    result = {"runs": args.runs, "n_max": args.backends}
    with common.Server(NAME, args.port) as server:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgvision CASCADE")
            info = json.loads(conn.execute("SELECT pgvision.runtime_info()::text").fetchone()[0])
            site = next(common.pathlib.Path(info["runtime_path"]).glob("venv/lib/python3*/site-packages"))
            conn.execute("SELECT pgvision.embed(%b)", [image])  # the shared copy exists from here on
            conn.execute(LOAD_SQL)
            install_before_functions(conn, info["runtime_path"])
        baseline = None
        if args.baseline and args.baseline != "none":
            try:
                baseline = baseline_runtime(args.baseline, site)
            except subprocess.CalledProcessError as e:
                print(f"no 'before' runtime: git cannot give revision {args.baseline} ({e})")
        if baseline:
            result["baseline"] = baseline[1]
        modes = Modes(server, baseline and baseline[0])
        print("cold start ...", flush=True)
        result["numpy_import"] = numpy_import(server, site, args.runs)
        print("  numpy import in a fresh backend: " + ", ".join(
            f"OpenBLAS threads {k}: {v['median_ms']:.0f} ms ({v['threads_after']} threads)"
            for k, v in result["numpy_import"].items()), flush=True)
        result["first_write"] = first_write(modes, server, image, 3)
        result["cold_start"] = cold_start(modes, image, args.runs)
        for m, r in result["cold_start"].items():
            print(f"  {m}: first embed {r['first embed']['median_ms']:.0f} ms (imports "
                  f"{r['imports']['median_ms']:.0f}, then {r['first embed after imports']['median_ms']:.0f}); "
                  f"warm {r['warm embed']['median_ms']:.1f} ms", flush=True)
        result["load_breakdown"] = load_breakdown(modes, image, args.runs)
        for m, r in result["load_breakdown"].items():
            print(f"  {m} load: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r.items()), flush=True)
        print("one backend ...", flush=True)
        result["one_backend"] = one_backend(modes, image, args.runs)
        for m, r in result["one_backend"].items():
            print(f"  {m}: " + ", ".join(f"{k} {r['before'][k]:.0f} -> {r['after'][k]:.0f} MiB"
                                         for k in ("Rss", "Pss", "Uss")), flush=True)
        print("many backends ...", flush=True)
        result["backends"] = many_backends(modes, server, image, batch, args.backends)
    m = common.machine()
    result["machine_line"] = (f"{m['cpu']}, {m['cores']} cores, {m['memory_mib'] // 1024} GiB, "
                              f"onnxruntime {m['onnxruntime']}, {m['postgresql']}")
    result["command_line"] = " ".join(["build/venv/bin/python", "bench/memory.py", *sys.argv[1:]])
    path = common.plot_path(NAME, "backends")
    plot(result, path)
    common.write_results(NAME, result, report(result, path.name))


if __name__ == "__main__":
    main()

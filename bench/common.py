"""What every benchmark shares: the data, a throwaway server, the model, and where results go.

Each bench/NAME.py prints its figures and calls ``write_results(NAME, data, markdown)``,
which leaves bench/results/NAME.json (the figures) and NAME.md (its section of
BENCHMARKS.md); plots go beside them through ``plot_path``. bench/report.py assembles
BENCHMARKS.md from the sections, so every number in it is one a script measured.
"""

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = pathlib.Path(os.environ.get("PGVISION_BENCH_DIR", "/var/tmp/pgvision-bench"))
MODEL_DIR = pathlib.Path(os.environ.get("PGVISION_MODEL_DIR", ROOT / "build" / "model"))
LIMITS = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}

sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "python_udf"))
from pgvision_client import datasets, server  # noqa: E402
from pgvision_client.datasets import FASHION_CLASSES as CLASSES, photos  # noqa: E402,F401
from pgvision_runtime import models, spec as specs  # noqa: E402


# ---------------------------------------------------------------- data

def fashion(split):
    """(images uint8 [N, 28, 28], labels uint8 [N]) of Fashion-MNIST 'train' or 'test'."""
    return datasets.Fashion(split).arrays()


def png_bytes(pixels):
    """One 28x28 grey image as PNG bytes, as a user would store it."""
    from PIL import Image

    return datasets.encode(Image.fromarray(pixels, "L"))


def fashion_pngs(split, n=None):
    """PNG files of a split under WORK/png/SPLIT, written once; returns their paths."""
    data = datasets.Fashion(split)
    n = len(data) if n is None else n
    folder = WORK / "png" / split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        if not path.exists():
            path.write_bytes(data.png(i))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- model

def default_model(threads=0):
    """The built default model as the database has it, loaded directly with onnxruntime."""
    onnx_bytes = (MODEL_DIR / "efficientnet_lite0.onnx").read_bytes()
    spec = specs.validate(json.loads((MODEL_DIR / "efficientnet_lite0.json").read_text()))
    return models.Model(onnx_bytes, spec, threads=threads)


# ---------------------------------------------------------------- server

def Server(name, port, settings=None):
    """A throwaway server (pgvision_client.server) in WORK/NAME, ``settings`` set after start."""
    WORK.mkdir(parents=True, exist_ok=True)
    os.chmod(WORK, 0o755)
    return server.Server(WORK / name, port, settings)


# ---------------------------------------------------------------- measuring

def median(xs):
    return statistics.median(xs)


def percentile(xs, p):
    return float(np.percentile(np.asarray(xs), p))


class Clock:
    """``with Clock() as c: ...`` then c.seconds."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine():
    """What the figures were measured on."""
    cpu, flags = "unknown", set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "unknown":
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    mem = int(next(l.split()[1] for l in pathlib.Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal"))) // 1024
    import onnxruntime

    pg = subprocess.run([os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config"), "--version"],
                        capture_output=True, text=True).stdout.strip()
    # onnxruntime's 8-bit kernels are about twice as fast with VNNI (BENCHMARKS.md, section 6)
    return {"cpu": cpu, "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}), "cores": os.cpu_count(), "memory_mib": mem, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "postgresql": pg}


# ---------------------------------------------------------------- results

def plot_path(name, suffix):
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}-{suffix}.png"


def write_results(name, data, markdown):
    """Figures as JSON and the section of BENCHMARKS.md as markdown, under bench/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "measured": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.strip() + "\n")
    print(f"wrote bench/results/{name}.json and {name}.md")


def set_runtime_path(conninfo, folder):
    """Point the server's pgvision.runtime_path at ``folder`` (None: back to the default).

    It is a server setting, since it decides which code the server runs: backends that
    import the runtime from now on take it, those that already did keep theirs.
    """
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("LOAD 'pgvision'")
        default = c.execute("SELECT boot_val FROM pg_settings WHERE name = 'pgvision.runtime_path'").fetchone()[0]
        if folder is None:
            c.execute("ALTER SYSTEM RESET pgvision.runtime_path")
        else:
            c.execute("ALTER SYSTEM SET pgvision.runtime_path = '%s'" % folder.replace("'", "''"))
        c.execute("SELECT pg_reload_conf()")
    want = folder or default
    for _ in range(200):  # the postmaster rereads its files a moment later
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute("LOAD 'pgvision'")
            if c.execute("SELECT current_setting('pgvision.runtime_path')").fetchone()[0] == want:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgvision.runtime_path did not become {want}")

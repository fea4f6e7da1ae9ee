"""What every benchmark shares: the data, a throwaway server, the model, and where results go.

Each bench/NAME.py prints its figures and calls ``write_results(NAME, data, markdown)``,
which leaves bench/results/NAME.json (the figures) and NAME.md (its section of
BENCHMARKS.md); plots go beside them through ``plot_path``. bench/report.py assembles
BENCHMARKS.md from the sections, so every number in it is one a script measured.
"""

import gzip
import io
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = pathlib.Path(os.environ.get("PGVISION_BENCH_DIR", "/var/tmp/pgvision-bench"))
MODEL_DIR = pathlib.Path(os.environ.get("PGVISION_MODEL_DIR", ROOT / "build" / "model"))
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
DARKNET = pathlib.Path("/usr/share/darknet/data")
PHOTOS = ["dog", "eagle", "giraffe", "horses", "kite", "person", "scream"]
LIMITS = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}

sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "python_udf"))
from pgvision_client import demo  # noqa: E402
from pgvision_runtime import models, spec as specs  # noqa: E402

CLASSES = demo.FASHION_CLASSES


# ---------------------------------------------------------------- data

def fashion(split):
    """(images uint8 [N, 28, 28], labels uint8 [N]) of Fashion-MNIST 'train' or 'test'."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)
    return images, labels


def png_bytes(pixels):
    """One 28x28 grey image as PNG bytes, as a user would store it."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    return out.getvalue()


def fashion_pngs(split, n=None):
    """PNG files of a split under WORK/png/SPLIT, written once; returns their paths."""
    images, _ = fashion(split)
    n = len(images) if n is None else n
    folder = WORK / "png" / split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        if not path.exists():
            path.write_bytes(png_bytes(images[i]))
        paths.append(path)
    return paths


def photos():
    """Debian's darknet sample photos (JPEG bytes of a few hundred KB, real camera images)."""
    return [(DARKNET / f"{n}.jpg").read_bytes() for n in PHOTOS]


# ---------------------------------------------------------------- model

def default_model(threads=0):
    """The built default model as the database has it, loaded directly with onnxruntime."""
    onnx_bytes = (MODEL_DIR / "efficientnet_lite0.onnx").read_bytes()
    spec = specs.validate(json.loads((MODEL_DIR / "efficientnet_lite0.json").read_text()))
    return models.Model(onnx_bytes, spec, threads=threads)


# ---------------------------------------------------------------- server

class Server(demo.Server):
    """A throwaway cluster (the demo's) under WORK/NAME with extra settings after start."""

    def __init__(self, name, port, settings=None):
        WORK.mkdir(parents=True, exist_ok=True)
        os.chmod(WORK, 0o755)
        super().__init__(WORK / name, port)
        self.settings = settings or {}

    def __enter__(self):
        import psycopg

        self.prepare()
        self.start()
        if self.settings:
            with psycopg.connect(self.conninfo, autocommit=True) as c:
                for k, v in self.settings.items():
                    c.execute(f"ALTER SYSTEM SET {k} = '{v}'")
                c.execute("SELECT pg_reload_conf()")
        return self

    def __exit__(self, *exc):
        self.stop()


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
    cpu = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(next(l.split()[1] for l in pathlib.Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal"))) // 1024
    import onnxruntime

    pg = subprocess.run([os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config"), "--version"],
                        capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem, "python": platform.python_version(),
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

"""Model outputs of all 70,000 Fashion-MNIST images, computed once and kept on disk.

    build/venv/bin/python bench/features.py [--split train test] [--check PORT]

Figures 3 and 4 need the feature and the logits of every image. Computing them takes
15 minutes of both cores at best (40 on a busy shared machine), so they are computed once, here, and read back by
bench/search.py and bench/quality.py. The computation is the server's own: the image as
PNG bytes (common.png_bytes, as a user would store it) through pgvision_runtime's decoding,
preprocessing and onnxruntime session, with both outputs from one forward pass.
onnxruntime's results here do not depend on the batch size or the thread count (checked:
batch 1, 32 and 64, one and two threads give the same bits), so the cache holds exactly
what pgvision.embed returns for the same bytes; ``--check PORT`` compares a handful of
rows with pgvision.embed and pgvision.classify on a throwaway server, bit for bit.

The cache lives under WORK/cache/MODEL-SPEC/, keyed by the first 16 hex digits of the
sha256 of the ONNX bytes and of the canonical spec, so a rebuilt model or another
preprocessing never reads stale features. Work is saved every CHUNK images, so an
interrupted run continues where it stopped.
"""

import argparse
import functools
import hashlib
import json
import sys
import time

import numpy as np

import common

BATCH = 32
CHUNK = 2000
OUTPUTS = ("feature", "logits")


def spec_key(spec):
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def folder(model):
    return common.WORK / "cache" / f"{model.sha[:16]}-{spec_key(model.spec)}"


@functools.lru_cache(maxsize=None)
def load_model(threads=0, spec=None):
    """The default model; ``spec`` (JSON text) overrides its spec (a preprocessing variant)."""
    spec = None if spec is None else json.loads(spec)
    onnx_bytes = (common.MODEL_DIR / "efficientnet_lite0.onnx").read_bytes()
    if spec is None:
        spec = json.loads((common.MODEL_DIR / "efficientnet_lite0.json").read_text())
    model = common.models.Model(onnx_bytes, common.specs.validate(spec), threads=threads)
    model.sha = hashlib.sha256(onnx_bytes).hexdigest()
    return model


def compute(model, images, log=None):
    """{output: float32 [N, dim]} for uint8 [N, 28, 28] images, PNG bytes through the runtime."""
    out = {o: [] for o in OUTPUTS}
    for start in range(0, len(images), BATCH):
        batch = np.stack([model.prepare(common.png_bytes(p), common.LIMITS)
                          for p in images[start:start + BATCH]])
        for o, arr in zip(OUTPUTS, model.run(batch, OUTPUTS)):
            out[o].append(arr)
    return {o: np.concatenate(v) for o, v in out.items()}


def path(model, split, output):
    return folder(model) / f"{split}-{output}.npy"


def build(model, split):
    images, _ = common.fashion(split)
    done = folder(model)
    if all(path(model, split, o).exists() for o in OUTPUTS):
        return
    parts = done / f"{split}-parts"
    parts.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    computed = 0
    for start in range(0, len(images), CHUNK):
        part = parts / f"{start:05d}.npz"
        if part.exists():
            continue
        result = compute(model, images[start:start + CHUNK])
        np.savez(parts / f"{start:05d}.tmp.npz", **result)
        (parts / f"{start:05d}.tmp.npz").rename(part)
        computed += len(result["feature"])
        rate = computed / (time.perf_counter() - started)
        print(f"{split}: {start + len(result['feature'])}/{len(images)} images, {rate:.1f} images/s",
              flush=True)
    for o in OUTPUTS:
        arr = np.concatenate([np.load(parts / f"{s:05d}.npz")[o]
                              for s in range(0, len(images), CHUNK)])
        assert arr.shape[0] == len(images)
        np.save(done / f"{split}-{o}.tmp.npy", arr)
        (done / f"{split}-{o}.tmp.npy").rename(path(model, split, o))
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()


def load(split, output="feature", model=None):
    """float32 [N, dim] of a split's ``output`` (feature or logits), computed if missing."""
    model = model or load_model()
    if not path(model, split, output).exists():
        print(f"computing the {split} features into {folder(model)} (runs once)", flush=True)
        build(model, split)
    return np.load(path(model, split, output))


def check(model, port, n=8):
    """pgvision.embed and classify on a server give exactly the cached values."""
    import psycopg

    images, _ = common.fashion("test")
    feature, logits = load("test", "feature", model), load("test", "logits", model)
    rows = np.linspace(0, len(images) - 1, n).astype(int)
    with common.Server("features", port) as server, psycopg.connect(server.conninfo, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgvision CASCADE")
        sha = c.execute("SELECT sha256 FROM pgvision.models WHERE name = 'efficientnet_lite0'").fetchone()[0]
        if sha != model.sha:
            raise SystemExit(f"the server's model is {sha[:16]}, the cache's {model.sha[:16]}: "
                             "run make install")
        worst = 0.0
        for i in rows:
            data = common.png_bytes(images[i])
            text = c.execute("SELECT pgvision.embed(%s, 'efficientnet_lite0')::text", [data]).fetchone()[0]
            server_f = np.array(json.loads(text), dtype=np.float32)
            # classify gives softmax probabilities: compare them with the cached logits' softmax
            top = c.execute("SELECT score FROM pgvision.classify(%s, 3)", [data]).fetchall()
            z = logits[i].astype(np.float64)
            p = np.exp(z - z.max())
            p = np.sort(p / p.sum())[::-1][:3]
            if not np.array_equal(server_f, feature[i]):
                raise SystemExit(f"test image {i}: pgvision.embed differs from the cache by "
                                 f"{np.abs(server_f - feature[i]).max():.2e}")
            worst = max(worst, float(np.abs(np.array([t[0] for t in top]) - p).max()))
        print(f"{n} test images: pgvision.embed equals the cached feature bit for bit; "
              f"classify's top-3 scores match the cached logits to {worst:.1e} (real precision)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", nargs="+", default=["test", "train"])
    ap.add_argument("--check", type=int, metavar="PORT", help="compare with a throwaway server")
    args = ap.parse_args()
    model = load_model()
    print(f"cache {folder(model)}", flush=True)
    for split in args.split:
        build(model, split)
        print(f"{split}: " + ", ".join(f"{o} {list(np.load(path(model, split, o), mmap_mode='r').shape)}"
                                       for o in OUTPUTS), flush=True)
    if args.check:
        check(model, args.check)


if __name__ == "__main__":
    sys.exit(main())

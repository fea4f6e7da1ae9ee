"""INT8 and reduced-size decoding, side by side with the float model, in one process.

    build/venv/bin/python bench/int8.py [--repeat 15]

For efficientnet_lite0 (float), efficientnet_lite0_int8, and each with the spec's
"decode": "reduced": per image, median milliseconds of decoding + preprocessing and of
inference, one image at a time and 32 a call, on Debian's darknet photos; feature cosine to
the float model on photos, their crops and Fashion-MNIST thumbnails; precision@10 (cosine)
on 1,000 Fashion-MNIST test images (100 a class) and on photo cut-outs labelled by photo.
The runtime's own Model class runs everything, so the figures are those of pgvision.embed.
"""

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python_udf"), str(ROOT / "client")]
from pgvision_client.datasets import Fashion, encode, photos  # noqa: E402
from pgvision_runtime import models, spec as specs  # noqa: E402

MODELS = ROOT / "build" / "model"
LIMITS = {"max_pixels": 100_000_000, "max_bytes": 64 << 20}


def load(name, reduced):
    spec = json.loads((MODELS / f"{name}.json").read_text())
    spec["decode"] = "reduced" if reduced else "full"
    return models.Model((MODELS / f"{name}.onnx").read_bytes(), specs.validate(spec), threads=1)


def ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def cutouts(jpegs):
    """Four JPEG cut-outs of each photo, labelled by the photo: a non-square retrieval set."""
    out, labels = [], []
    for label, data in enumerate(jpegs):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        for a, b, c, d in ((0, 0, .7, .6), (.3, .4, 1, 1), (.1, .1, .9, .5), (.2, .3, .6, 1),
                           (.05, .05, .95, .95), (.4, 0, 1, .5)):
            out.append(encode(img.crop((int(a * w), int(b * h), int(c * w), int(d * h))),
                              "JPEG", quality=90))
            labels.append(label)
    return out, np.asarray(labels)


def precision10(features, labels):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    k = min(10, int(np.bincount(labels).min()) - 1)
    nearest = np.argsort(-s, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean()), k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    jpegs = photos()
    fashion = Fashion("test")
    images, flabels = fashion.arrays()
    idx = np.concatenate([np.where(flabels == c)[0][:100] for c in range(10)])
    fpng = [encode(Image.fromarray(images[i])) for i in idx]
    cuts, clabels = cutouts(jpegs)
    variants = [("efficientnet_lite0", False), ("efficientnet_lite0", True),
                ("efficientnet_lite0_int8", False), ("efficientnet_lite0_int8", True)]
    loaded = {v: load(*v) for v in variants}
    base = loaded[variants[0]]
    ref = {"photos": base.embed_many(jpegs, LIMITS), "cuts": base.embed_many(cuts, LIMITS),
           "fashion": base.embed_many(fpng, LIMITS)}
    print(f"{'model':<26}{'decode':>8}{'prep ms':>9}{'infer 1':>9}{'infer 32':>10}"
          f"{'cos med':>9}{'cos min':>9}{'p@10 fm':>9}{'p@k cut':>9}")
    for (name, reduced), m in loaded.items():
        prep = statistics.median(ms(lambda d=d: m.prepare(d, LIMITS), args.repeat) for d in jpegs)
        x1 = m.prepare(jpegs[0], LIMITS)[None]
        x32 = np.repeat(x1, 32, axis=0)
        one = ms(lambda: m.run(x1, ("feature",)), args.repeat)
        batch = ms(lambda: m.run(x32, ("feature",)), max(3, args.repeat // 3)) / 32
        cos = []
        feats = {}
        for key, items in (("photos", jpegs), ("cuts", cuts), ("fashion", fpng)):
            feats[key] = np.stack(m.embed_many(items, LIMITS))
            r = np.stack(ref[key])
            cos += list((feats[key] * r).sum(1) / np.linalg.norm(feats[key], axis=1)
                        / np.linalg.norm(r, axis=1))
        pf, _ = precision10(feats["fashion"], flabels[idx])
        pc, k = precision10(feats["cuts"], clabels)
        print(f"{name:<26}{'reduced' if reduced else 'full':>8}{prep:9.2f}{one:9.2f}{batch:10.2f}"
              f"{np.median(cos):9.4f}{min(cos):9.4f}{pf:9.4f}{pc:9.4f}", flush=True)
    print(f"(p@k cut: k = {k}; cosine over {len(cos)} images: "
          f"{len(jpegs)} photos, {len(cuts)} cut-outs, {len(fpng)} Fashion-MNIST)")


if __name__ == "__main__":
    main()

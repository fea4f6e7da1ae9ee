"""INT8 and reduced-size decoding, side by side with the float model, in one process.

    build/venv/bin/python bench/int8.py [--repeat 15]     (or: make bench BENCH=int8)

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
sys.path[:0] = [str(ROOT / "python_udf"), str(ROOT / "client"), str(ROOT / "bench")]
import common  # noqa: E402
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
    # timings round-robin: every repeat runs each variant once, so load on the machine
    # falls on all of them alike
    x1 = {v: m.prepare(jpegs[0], LIMITS)[None] for v, m in loaded.items()}
    times = {v: {"prepare": [], "one": [], "batch": []} for v in loaded}
    for _ in range(args.repeat):
        for v, m in loaded.items():
            t = times[v]
            t["prepare"].append(statistics.median(ms(lambda d=d: m.prepare(d, LIMITS), 1)
                                                  for d in jpegs))
            t["one"].append(ms(lambda: m.run(x1[v], ("feature",)), 1))
            t["batch"].append(ms(lambda: m.run(np.repeat(x1[v], 32, axis=0), ("feature",)), 1) / 32)
    rows = []
    for (name, reduced), m in loaded.items():
        t = times[(name, reduced)]
        prep, one, batch = (statistics.median(t[k]) for k in ("prepare", "one", "batch"))
        cos, feats = [], {}
        for key, items in (("photos", jpegs), ("cuts", cuts), ("fashion", fpng)):
            feats[key] = np.stack(m.embed_many(items, LIMITS))
            r = np.stack(ref[key])
            cos += list((feats[key] * r).sum(1) / np.linalg.norm(feats[key], axis=1)
                        / np.linalg.norm(r, axis=1))
        pf, _ = precision10(feats["fashion"], flabels[idx])
        pc, k = precision10(feats["cuts"], clabels)
        rows.append({"model": name, "decode": "reduced" if reduced else "full",
                     "prepare_ms": prep, "infer_one_ms": one, "infer_batch32_ms": batch,
                     "cosine_median": float(np.median(cos)), "cosine_min": float(min(cos)),
                     "precision10_fashion": pf, "precision_cutouts": pc})
        print(rows[-1], flush=True)
    base = rows[0]
    table = ["| model | JPEG decode | decode + prepare, ms | inference, 1 image, ms | "
             "inference, 32 a call, ms/image | photo end to end, ms | cosine to float (median / min) "
             "| Fashion-MNIST p@10 | photo cut-outs p@%d |" % k, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| `{r['model']}` | {r['decode']} | {r['prepare_ms']:.2f} | {r['infer_one_ms']:.2f} | "
            f"{r['infer_batch32_ms']:.2f} | {r['prepare_ms'] + r['infer_one_ms']:.2f} "
            f"({(base['prepare_ms'] + base['infer_one_ms']) / (r['prepare_ms'] + r['infer_one_ms']):.2f}x) | "
            f"{r['cosine_median']:.4f} / {r['cosine_min']:.4f} | {r['precision10_fashion']:.3f} | "
            f"{r['precision_cutouts']:.3f} |")
    markdown = f"""## 6. INT8 models

`efficientnet_lite0_int8` is `efficientnet_lite0` quantized by onnxruntime (static QDQ,
int8 weights per output channel, uint8 activations whose ranges are the 99.999th
percentile over the calibration images: Debian's darknet photos, four cuts of each and 24
Fashion-MNIST thumbnails; `models/quantize.py`), and it decodes JPEG at reduced size
(the spec's `"decode": "reduced"`). `pgvision.quantize_model` runs the same code on any
registered model and the caller's images. Each model below also ran with the other
decoding, in one process on one thread, the four taking turns at every repeat; inference on {len(jpegs)} darknet
photos, cosine to the float model's features over {len(cos)} images ({len(jpegs)} photos,
{len(cuts)} JPEG cut-outs of them, {len(fpng)} Fashion-MNIST test images), precision by
cosine among the Fashion-MNIST images (100 a class) and among the cut-outs (labelled by
their photo, k = {k}).

{chr(10).join(table)}

The int8 speed-up needs VNNI (AVX-512 VNNI or AVX-VNNI); without it onnxruntime's
8-bit convolutions are barely faster than float ones. The cut-outs are small, so reduced
decoding rarely applies to them; on the photos it halves each side before the resize.
"""
    common.write_results("int8", {"rows": rows}, markdown)

if __name__ == "__main__":
    main()

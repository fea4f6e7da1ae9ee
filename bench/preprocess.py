"""Which preprocessing and metric rank best: fit x flip x metric, in one process.

    build/venv/bin/python bench/preprocess.py

For the default model's graph with each fit (stretch, letterbox, center_crop) and with or
without averaging the feature of the image and of its mirror image: precision (by L2 on
the raw feature, by cosine) among 1,000 Fashion-MNIST test images (100 a class, square)
and among JPEG cut-outs of Debian's darknet photos, labelled by their photo (non-square).
Prints a table; it decides nothing by itself. The cut-out set is small (7 photos): its
differences below about 0.02 are within what one photo more or less changes.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python_udf"), str(ROOT / "client"), str(ROOT / "bench")]
from int8 import MODELS, cutouts  # noqa: E402
from pgvision_client.datasets import Fashion, encode, photos  # noqa: E402
from pgvision_runtime import images, models, preprocess, spec as specs  # noqa: E402


def precision(features, labels, metric):
    f = np.asarray(features, dtype=np.float64)
    if metric == "cosine":
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        d = -f @ f.T
    else:
        sq = (f * f).sum(1)
        d = sq[:, None] + sq[None, :] - 2 * f @ f.T
    np.fill_diagonal(d, np.inf)
    k = min(10, int(np.bincount(labels).min()) - 1)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean()), k


def features(model, spec, items, flip):
    out = []
    for data in items:
        img = images.decode(data, spec["background"])
        x = [preprocess.prepare(img, spec)]
        if flip:
            x.append(preprocess.prepare(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), spec))
        f = model.run(np.stack(x), ("feature",))[0]
        out.append(f.mean(axis=0))
    return np.stack(out)


def main():
    onnx_bytes = (MODELS / "efficientnet_lite0.onnx").read_bytes()
    base = json.loads((MODELS / "efficientnet_lite0.json").read_text())
    fashion = Fashion("test")
    pixels, flabels = fashion.arrays()
    idx = np.concatenate([np.where(flabels == c)[0][:100] for c in range(10)])
    fpng = [encode(Image.fromarray(pixels[i])) for i in idx]
    cuts, clabels = cutouts(photos())
    print(f"{'fit':<12}{'flip':>6}{'fm l2':>8}{'fm cos':>8}{'cut l2':>8}{'cut cos':>8}")
    for fit in ("stretch", "letterbox", "center_crop"):
        spec = specs.validate(dict(base, fit=fit))
        model = models.Model(onnx_bytes, spec, threads=0)
        for flip in (False, True):
            ff = features(model, spec, fpng, flip)
            fc = features(model, spec, cuts, flip)
            row = [precision(ff, flabels[idx], m)[0] for m in ("l2", "cosine")] + [
                precision(fc, clabels, m)[0] for m in ("l2", "cosine")]
            print(f"{fit:<12}{'yes' if flip else 'no':>6}" + "".join(f"{v:8.3f}" for v in row),
                  flush=True)
    print(f"(Fashion-MNIST: precision@10 over {len(fpng)} images; cut-outs: precision@"
          f"{precision(fc, clabels, 'l2')[1]} over {len(cuts)} cut-outs of 7 photos)")


if __name__ == "__main__":
    main()

"""Figure 4b: which preprocessing, normalisation and model rank best, on real photos too.

    build/venv/bin/python bench/preprocess.py

Two labelled sets, exact search (numpy, so no index plays a part):
- Fashion-MNIST: 1,000 test images, 100 a class (square, grey, one tight cluster);
- Debian photo cut-outs (bench/mixed.py, ``labelled_cutouts``): 12 cut-outs of each of the 52
  wallpapers of the packages in mixed.PACKAGES and the 7 darknet photos, 708 in all,
  labelled by their picture: real, non-square photos of mixed kinds.

For the default graph with each fit (stretch, letterbox, center_crop), with and without
averaging the feature of the image and of its mirror image, and for the 8-bit model:
precision@10 and mAP@10 on the raw feature by L2 distance (`<->` on what embed returns
today) and on the L2-normalised feature (where `<->`, `<=>` and `<#>` all rank alike, and
by cosine), with ms per image (decode, prepare and model, one thread, one image a call).
Then projections learned on half of each picture's cut-outs (train_projection's numpy
code), scored on the other half. Prints the table and writes bench/results/preprocess.*.
"""

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
import mixed  # noqa: E402
from pgvision_client.datasets import Fashion, encode  # noqa: E402
from pgvision_runtime import images, models, preprocess, projection, spec as specs  # noqa: E402

LIMITS = common.LIMITS
K = 10


def ranks(features, metric):
    f = np.asarray(features, dtype=np.float64)
    if metric == "normalised":
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sq = (f * f).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * f @ f.T
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")


def scores(features, labels, metric, k=K):
    """(precision@k, mAP@k): AP@k = mean over the hits among the first k of precision at
    that rank, over min(k, relevant rows)."""
    hits = labels[ranks(features, metric)[:, :k]] == labels[:, None]
    relevant = np.minimum(k, np.bincount(labels)[labels] - 1)
    prec_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (prec_at * hits).sum(1) / relevant
    return float(hits.mean()), float(ap.mean())


def embed_all(model, spec, items, flip):
    """Features one image a call, as embed runs them, and the median ms per image."""
    out, times = [], []
    for data in items:
        t = time.perf_counter()
        if flip:
            img = images.decode(data, spec["background"], grey=True, **limits())
            x = np.stack([preprocess.prepare(img, spec), preprocess.prepare(
                img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), spec)])
            f = model.run(x, ("feature",))[0].mean(axis=0)
        else:
            f = model.embed(data, limits())
        times.append((time.perf_counter() - t) * 1000)
        out.append(f)
    return np.stack(out), statistics.median(times)


def limits():
    return {"max_pixels": LIMITS["max_pixels"], "max_bytes": LIMITS["max_bytes"]}


def main():
    model_dir = common.MODEL_DIR
    fp32 = (model_dir / "efficientnet_lite0.onnx").read_bytes()
    base = json.loads((model_dir / "efficientnet_lite0.json").read_text())
    int8 = (model_dir / "efficientnet_lite0_int8.onnx").read_bytes()
    int8_spec = specs.validate(json.loads((model_dir / "efficientnet_lite0_int8.json").read_text()))
    fashion = Fashion("test")
    pixels, flabels = fashion.arrays()
    idx = np.concatenate([np.where(flabels == c)[0][:100] for c in range(10)])
    sets = {"fashion": ([encode(Image.fromarray(pixels[i])) for i in idx], flabels[idx]),
            "photos": mixed.labelled_cutouts()}
    variants = [(f"{fit}{' + mirror' if flip else ''}", fp32, specs.validate(dict(base, fit=fit)), flip)
                for fit in ("stretch", "letterbox", "center_crop") for flip in (False, True)]
    variants.append(("stretch, 8-bit (efficientnet_lite0_int8)", int8, int8_spec, False))
    rows, kept = [], {}
    for name, onnx_bytes, spec, flip in variants:
        model = models.Model(onnx_bytes, spec, threads=1)
        row = {"variant": name}
        for key, (items, labels) in sets.items():
            feats, ms = embed_all(model, spec, items, flip)
            kept[(name, key)] = feats
            row[f"{key}_ms"] = ms
            for metric in ("raw", "normalised"):
                p, m = scores(feats, labels, metric)
                row[f"{key}_{metric}_p"], row[f"{key}_{metric}_map"] = p, m
        rows.append(row)
        print(json.dumps(row), flush=True)

    # projections: learned on cut-outs 0, 2, 4, ... of each picture, scored on 1, 3, 5, ...
    feats = kept[("stretch", "photos")]
    labels = sets["photos"][1]
    order = np.arange(len(labels))
    within = order - np.searchsorted(labels, labels)  # labels are grouped, in order
    train, test = within % 2 == 0, within % 2 == 1
    proj_rows = []
    for name, use_labels, dims in (("raw feature (1280)", None, None), ("PCA-whitening 256", False, 256),
                                   ("PCA-whitening 64", False, 64), ("discriminant + PCA 256", True, 256),
                                   ("discriminant + PCA 64", True, 64)):
        if dims is None:
            x = feats[test]
        else:
            mean, matrix, _ = projection.fit(feats[train], labels[train] if use_labels else None, dims)
            x = projection.apply(feats[test], mean, matrix)
        r = {"projection": name, "dims": dims or feats.shape[1]}
        for metric in ("raw", "normalised"):
            r[f"{metric}_p"], r[f"{metric}_map"] = scores(x, labels[test], metric, k=5)
        proj_rows.append(r)
        print(json.dumps(r), flush=True)

    n_pictures = int(labels.max()) + 1
    table = ["| preprocessing / model | ms per image (Fashion-MNIST / photo) | Fashion-MNIST p@10 raw / normalised "
             "| mAP@10 raw / normalised | photo cut-outs p@10 raw / normalised | mAP@10 raw / normalised |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['variant']} | {r['fashion_ms']:.1f} / {r['photos_ms']:.1f} | "
            f"{r['fashion_raw_p']:.3f} / **{r['fashion_normalised_p']:.3f}** | "
            f"{r['fashion_raw_map']:.3f} / {r['fashion_normalised_map']:.3f} | "
            f"{r['photos_raw_p']:.3f} / **{r['photos_normalised_p']:.3f}** | "
            f"{r['photos_raw_map']:.3f} / {r['photos_normalised_map']:.3f} |")
    ptable = ["| projection (of the stretch feature) | dims | vector bytes a row | p@5 raw / normalised | mAP@5 raw / normalised |",
              "|---|---|---|---|---|"]
    for r in proj_rows:
        ptable.append(f"| {r['projection']} | {r['dims']} | {4 * r['dims'] + 8:,} | "
                      f"{r['raw_p']:.3f} / {r['normalised_p']:.3f} | {r['raw_map']:.3f} / {r['normalised_map']:.3f} |")
    markdown = f"""## 4b. Retrieval quality on real photos: preprocessing, normalisation, models

Two labelled sets, searched exactly (numpy): 1,000 Fashion-MNIST test images (100 a class;
square, grey) and {len(labels)} JPEG cut-outs of {n_pictures} real pictures from Debian
(12 of each of the {n_pictures - 7} wallpapers of `{'`, `'.join(mixed.PACKAGES)}` and the 7
darknet photos; each cut-out 20 to 60 % of its picture, aspect ratio 1:2 to 2:1 of the
picture's, at most 640 px, JPEG quality 85), labelled by their picture. *raw*: L2 distance
on the feature as `efficientnet_lite0` returns it; *normalised*: the same feature scaled to
length 1, as `efficientnet_lite0_normalized` returns it, where `<->`, `<=>` and `<#>` rank
alike (and as cosine ranks the raw feature). ms per image: decode, prepare and one model
call, one thread, median. Mirror: the mean of the features of the image and of its mirror
image (two model calls).

{chr(10).join(table)}

Projections learned (train_projection's code) on 6 cut-outs of each picture, scored on the
other 6 (precision@5 and mAP@5 among {int(test.sum())} held-out cut-outs); Fashion-MNIST's
are in section 7. A `vector` value takes 4 bytes a dimension and 8 more; section 7 has the
index sizes.

{chr(10).join(ptable)}
"""
    common.write_results("preprocess", {"rows": rows, "projections": proj_rows,
                                        "photos": len(labels), "pictures": n_pictures}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()

"""INT8 and reduced-size decoding, side by side with the float model, in one process.

    build/venv/bin/python bench/int8.py [--repeat 15]     (or: make bench BENCH=int8)

For efficientnet_lite0 (float), efficientnet_lite0_int8, and each with the spec's
"decode": "reduced": per image, median milliseconds of decoding + preprocessing and of
inference, one image at a time and 32 a call, on Debian's darknet photos; feature cosine to
the float model on photos, their crops and Fashion-MNIST thumbnails; precision@10 (cosine)
on 1,000 Fashion-MNIST test images (100 a class) and on photo cut-outs labelled by photo.
The runtime's own Model class runs everything, so the figures are those of pgvision.embed.

Then through SQL on a throwaway server (--port): images/s of pgvision.embed one photo a
statement and of pgvision.embed_batch on 32, for the float and the 8-bit model at
pgvision.threads 1 and 2, timed in the client; and, in one process again, rank-1 recall of
the original among bench/mixed.py's 708 labelled cut-outs for a seeded sample of them
re-encoded at JPEG quality 30 and cropped to their centre 80 %, and precision@10 among the
cut-outs (labelled by picture), each model as it ships (the 8-bit one decodes reduced).
"""

import argparse
import io
import json
import random
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
import psycopg  # noqa: E402
from pgvision_client.datasets import Fashion, encode, photos  # noqa: E402
from pgvision_runtime import models, spec as specs  # noqa: E402

MODELS = ROOT / "build" / "model"
LIMITS = {"max_pixels": 100_000_000, "max_bytes": 64 << 20}
FP32, INT8 = "efficientnet_lite0", "efficientnet_lite0_int8"
# the fresh install's 8-bit model: its stem convolution in float, features of length 1
INT8N = "efficientnet_lite0_int8_normalized"
INT8S = (INT8, INT8N)
THREADS = (1, 2)
BATCH = 32
SEED = 6
# the targets for the 8-bit model against the float one
TARGET = {"speedup": 2.0, "precision10_drop": 0.005, "recall_drop": 0.01}


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


def sql_speed(port, jpegs, repeat):
    """Images/s through SQL, {(model, threads): {"one": ..., "batch": ...}}, and a check.

    One connection; each repeat runs the six (model, threads) combinations once, in an
    order that rotates, each with SET pgvision.threads before it (the backend keeps a model
    opened for each thread count, so the SET costs no reload). "one": the 7 photos one
    statement each, images over the sum of their times; "batch": one embed_batch of 32
    (the photos repeated). Timed in the client around execute + fetch, prepared statements.
    """
    combos = [(m, t) for t in THREADS for m in (FP32, *INT8S)]
    batch = (jpegs * (BATCH // len(jpegs) + 1))[:BATCH]
    times = {c: {"one": [], "batch": []} for c in combos}
    with common.Server("int8", port) as server, \
            psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgvision CASCADE")
        conn.add_notice_handler(lambda n: None)
        registered = {r[0] for r in conn.execute("SELECT name FROM pgvision.models")}
        missing = {FP32, *INT8S} - registered
        if missing:
            raise SystemExit(f"not registered: {sorted(missing)}")
        cur = conn.cursor()

        def one(model, data):
            t = time.perf_counter()
            cur.execute("SELECT pgvision.embed(%b, %s)::text", (data, model), prepare=True)
            out = cur.fetchone()[0]
            return time.perf_counter() - t, out

        def many(model):
            t = time.perf_counter()
            cur.execute("SELECT pgvision.embed_batch(%b, %s)::text[]", (batch, model), prepare=True)
            out = cur.fetchone()[0]
            return time.perf_counter() - t, out

        for model, threads in combos:  # warm-up: the first call loads the model
            conn.execute(f"SET pgvision.threads = {threads}")
            for _ in range(2):
                one(model, jpegs[0])
                many(model)
        # the features SQL returns are those of the runtime in process
        check = {m: np.asarray([float(x) for x in one(m, jpegs[0])[1].strip("[]").split(",")])
                 for m in (FP32, *INT8S)}
        for n in range(repeat):
            for model, threads in combos[n % len(combos):] + combos[:n % len(combos)]:
                conn.execute(f"SET pgvision.threads = {threads}")
                times[(model, threads)]["one"].append(sum(one(model, d)[0] for d in jpegs))
                times[(model, threads)]["batch"].append(many(model)[0])
            print(f"SQL repeat {n + 1}/{repeat}: " + "; ".join(
                f"{m} {t} thr {len(jpegs) / times[(m, t)]['one'][-1]:.0f} / "
                f"{BATCH / times[(m, t)]['batch'][-1]:.0f} images/s" for m, t in combos), flush=True)
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                     "('pgvision.threads_limit', 'pgvision.share_models')").fetchall())
    speed = {c: {"one": len(jpegs) / statistics.median(t["one"]),
                 "batch": BATCH / statistics.median(t["batch"])} for c, t in times.items()}
    return speed, check, settings


def near_duplicates(shipped, sample):
    """Rank-1 recall of the original among the labelled cut-outs, and their precision@10."""
    cuts, labels = mixed.labelled_cutouts()
    picked = sorted(random.Random(SEED).sample(range(len(cuts)), sample))
    edits = {
        "jpeg q30": lambda img: mixed.jpeg(img, 30),
        "crop 80% centre": lambda img: mixed.jpeg(mixed._crop(img, 0.8, None, center=True)),
    }
    queries = {}
    for e, fn in edits.items():
        queries[e] = [fn(Image.open(io.BytesIO(cuts[i])).convert("RGB")) for i in picked]
    out = {"cutouts": len(cuts), "pictures": int(labels.max()) + 1, "sample": len(picked),
           "models": {}}
    for name, m in shipped.items():
        f = np.stack(m.embed_many(cuts, LIMITS))
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        row = {"decode": m.spec.get("decode", "full") if isinstance(m.spec, dict) else None}
        for e, items in queries.items():
            q = np.stack(m.embed_many(items, LIMITS))
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            nearest = np.argmax(q @ f.T, axis=1)
            row[e] = float((nearest == np.asarray(picked)).mean())
            # the nearest is a cut-out of the same picture (the original or a sibling)
            row[e + ", same picture"] = float((labels[nearest] == labels[picked]).mean())
        row["precision10"], row["k"] = precision10(f, labels)
        out["models"][name] = row
        print(f"near duplicates, {name}: {row}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--port", type=int, default=54361, help="of the throwaway server")
    ap.add_argument("--sample", type=int, default=150, help="cut-outs edited for near duplicates")
    args = ap.parse_args()
    jpegs = photos()
    fashion = Fashion("test")
    images, flabels = fashion.arrays()
    idx = np.concatenate([np.where(flabels == c)[0][:100] for c in range(10)])
    fpng = [encode(Image.fromarray(images[i])) for i in idx]
    cuts, clabels = cutouts(jpegs)
    variants = [("efficientnet_lite0", False), ("efficientnet_lite0", True),
                ("efficientnet_lite0_int8", False), ("efficientnet_lite0_int8", True), (INT8N, True)]
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
    shipped = {FP32: loaded[(FP32, False)], INT8: loaded[(INT8, True)], INT8N: loaded[(INT8N, True)]}
    speed, check, settings = sql_speed(args.port, jpegs, args.repeat)
    sql_cos = {m: float(check[m] @ f / np.linalg.norm(check[m]) / np.linalg.norm(f))
               for m, f in ((m, shipped[m].embed(jpegs[0], LIMITS)) for m in shipped)}
    print(f"SQL feature against in-process, cosine: {sql_cos}", flush=True)
    sql_rows = []
    for t in THREADS:
        for m in shipped:
            sp = speed[(m, t)]
            sql_rows.append({"model": m, "threads": t, "one_images_s": sp["one"],
                             "batch32_images_s": sp["batch"],
                             "one_ratio": sp["one"] / speed[(FP32, t)]["one"],
                             "batch32_ratio": sp["batch"] / speed[(FP32, t)]["batch"]})
            print(sql_rows[-1], flush=True)
    near = near_duplicates(shipped, args.sample)
    fashion10 = {r["model"]: r["precision10_fashion"] for r in rows
                 if (r["model"], r["decode"]) in ((FP32, "full"), (INT8, "reduced"), (INT8N, "reduced"))}
    for m in shipped:
        near["models"][m]["precision10_fashion"] = fashion10[m]
    nf, n8 = near["models"][FP32], near["models"][INT8]
    edits = [e for e in nf if e.startswith(("jpeg", "crop")) and not e.endswith("picture")]
    drops = {}
    for m in INT8S:
        nm = near["models"][m]
        drops[m] = {e: nf[e] - nm[e] for e in edits}
        drops[m].update({"precision10": nf["precision10"] - nm["precision10"],
                         "precision10_fashion": nf["precision10_fashion"] - nm["precision10_fashion"]})
    drop = drops[INT8]
    base = rows[0]
    r8 = next(r for r in rows if (r["model"], r["decode"]) == (INT8, "reduced"))
    ratio_one = (base["prepare_ms"] + base["infer_one_ms"]) / (r8["prepare_ms"] + r8["infer_one_ms"])
    ratio_batch = (base["prepare_ms"] + base["infer_batch32_ms"]) / (r8["prepare_ms"] + r8["infer_batch32_ms"])
    rn = next(r for r in rows if r["model"] == INT8N)
    ratio_n = ((base["prepare_ms"] + base["infer_one_ms"]) / (rn["prepare_ms"] + rn["infer_one_ms"]),
               (base["prepare_ms"] + base["infer_batch32_ms"]) / (rn["prepare_ms"] + rn["infer_batch32_ms"]))
    infer = {m: (base["infer_one_ms"] / r["infer_one_ms"], base["infer_batch32_ms"] / r["infer_batch32_ms"])
             for m, r in ((INT8, r8), (INT8N, rn))}
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
    sql_table = ["| model | `pgvision.threads` | one at a time, images/s | int8 / float "
                 f"| {BATCH} a call, images/s | int8 / float |", "|---|---|---|---|---|---|"]
    for r in sql_rows:
        ratio = (lambda x: f"{x:.2f}x") if r["model"] in INT8S else (lambda x: "")
        sql_table.append(f"| `{r['model']}` | {r['threads']} | {r['one_images_s']:.1f} | "
                         f"{ratio(r['one_ratio'])} | {r['batch32_images_s']:.1f} | "
                         f"{ratio(r['batch32_ratio'])} |")
    near_table = ["| model | JPEG decode | rank-1 recall, " + " | rank-1 recall, ".join(edits)
                  + f" | cut-outs p@{nf['k']} | Fashion-MNIST p@10 |",
                  "|---|---|" + "---|" * (len(edits) + 2)]
    for m in shipped:
        r = near["models"][m]
        near_table.append(f"| `{m}` | {r['decode']} | " + " | ".join(f"{r[e]:.3f}" for e in edits)
                          + f" | {r['precision10']:.3f} | {r['precision10_fashion']:.3f} |")
    for m in INT8S:
        d = drops[m]
        near_table.append(f"| float minus `{m}` | | " + " | ".join(f"{d[e]:+.3f}" for e in edits)
                          + f" | {d['precision10']:+.3f} | {d['precision10_fashion']:+.3f} |")
    markdown = f"""## 6. INT8 models

`efficientnet_lite0_int8` is `efficientnet_lite0` quantized by onnxruntime (static QDQ,
int8 weights per output channel, uint8 activations whose ranges are the 99.999th
percentile over the calibration images: Debian's darknet photos, four cuts of each and 24
Fashion-MNIST thumbnails; `models/quantize.py`), and it decodes JPEG at reduced size
(the spec's `"decode": "reduced"`). `pgvision.quantize_model` runs the same code on any
registered model and the caller's images, keeping in float the convolution that reads the
image (EfficientNet-Lite0's stem, 3 % of its work), as `efficientnet_lite0_int8_normalized`
does: the 8-bit counterpart of a fresh install's default model, whose features have length 1
(cosine and precision are the same as without). Each model below ran with both decodings
(the last as it ships), in one process on one thread, taking turns at every repeat; inference on {len(jpegs)} darknet
photos, cosine to the float model's features over {len(cos)} images ({len(jpegs)} photos,
{len(cuts)} JPEG cut-outs of them, {len(fpng)} Fashion-MNIST test images), precision by
cosine among the Fashion-MNIST images (100 a class) and among the cut-outs (labelled by
their photo, k = {k}).

{chr(10).join(table)}

The int8 speed-up needs VNNI (AVX-512 VNNI or AVX-VNNI), which this CPU has; on an
AVX2-only EPYC the 8-bit inference was 1.84x the float one a photo at a time and its
features drifted further (median cosine 0.937 to the float model's on the darknet photos). The cut-outs are small, so reduced
decoding rarely applies to them; on the photos it halves each side before the resize.

Through SQL, on a throwaway server (`CREATE EXTENSION pgvision CASCADE`, which registers
the built-in models), one connection, each model as it ships (the 8-bit one decoding reduced):
`SELECT pgvision.embed($1, model)` for each of the {len(jpegs)} darknet photos, one statement
each, and `SELECT pgvision.embed_batch($1, model)` on {BATCH} of them (the photos repeated),
with the bytes as parameters, timed in the client around execute and fetch; the six
combinations of model and `pgvision.threads` took turns at every one of {args.repeat}
repeats, after a warm-up that loaded each model; medians. The issue's target for the 8-bit
model is {TARGET['speedup']:.1f}x the float one's images/s.

{chr(10).join(sql_table)}

In one process (the first table, decode + prepare and inference) the 8-bit model as it
ships is {ratio_one:.2f}x the float one a photo at a time and {ratio_batch:.2f}x at 32 a call
(`{INT8N}` {ratio_n[0]:.2f}x and {ratio_n[1]:.2f}x; inference alone {infer[INT8][0]:.2f}x and
{infer[INT8][1]:.2f}x, `{INT8N}` {infer[INT8N][0]:.2f}x and {infer[INT8N][1]:.2f}x):
decoding, which the 8-bit model shortens only by reduced decoding, is part of each image's
time, and one statement a photo adds the call's own cost to both models.

Near duplicates, in one process: {near['sample']} of bench/mixed.py's {near['cutouts']}
labelled cut-outs ({near['pictures']} pictures, 12 each), chosen with a seeded random
sample, re-encoded at JPEG quality 30 and cropped to their centre 80 % of each side; a copy
counts when its nearest cut-out by cosine, each side by the same model, is its original.
Precision@{nf['k']} by cosine among the cut-outs, labelled by picture, and among the {len(fpng)}
Fashion-MNIST images above. The issue's targets: recall within {TARGET['recall_drop']} and
precision@10 within {TARGET['precision10_drop']} of the float model's.

{chr(10).join(near_table)}

The cut-outs of one picture overlap, so a copy's nearest cut-out is often a sibling: the
nearest was of the original's picture for {nf[edits[0] + ', same picture']:.3f} / {n8[edits[0] + ', same picture']:.3f}
({edits[0]}) and {nf[edits[1] + ', same picture']:.3f} / {n8[edits[1] + ', same picture']:.3f} ({edits[1]}) of the copies, float / int8.
"""
    common.write_results("int8", {"rows": rows, "sql": {"rows": sql_rows, "repeat": args.repeat,
                                                        "batch": BATCH, "photos": len(jpegs),
                                                        "settings": settings,
                                                        "feature_cosine_to_in_process": sql_cos},
                                  "near_duplicates": {**near, "float_minus_int8": drop,
                                                      "float_minus": drops},
                                  "target": TARGET}, markdown)

if __name__ == "__main__":
    main()

"""Figure 4: how often the nearest images are of the query's class, by method.

    build/venv/bin/python bench/quality.py [--subset-base 1000 --subset-queries 200]

Fashion-MNIST, the 10,000 test images as queries, the 60,000 train images as the base,
exact search (numpy brute force, so the index plays no part): precision@10 and mAP@10 by
class, the class label being the only judge. AP@10 = (1/10) sum over ranks i <= 10 of
precision@i at each rank that is a hit (10 = min(10, relevant rows), every class having
thousands); mAP@10 is its mean over queries.

Full scale, from the features of bench/features.py (the database's own values):
- logits, L2: the seed's method 1 (classification logits as the vector, raw L2);
- feature, L2: the pooled 1280-d feature as efficientnet_lite0 returns it (a fresh install's default,
  efficientnet_lite0_normalized, returns it L2-normalised: the cosine rows below);
- feature, cosine: the same, L2-normalised (pgvector's <=>, or l2 on normalised vectors);
- query expansion on the best of those, as pgvision.search(expand => n) does it.

Variants that need new forward passes, on a balanced subset (SUBSET_BASE train and
SUBSET_QUERIES test images per class) with the default measured on the same subset, so
each is a paired comparison (standard errors of the per-query differences):
- fit: stretch (the default), center_crop, letterbox. Fashion-MNIST images are square, so
  all three give the same 224x224 input: checked bit for bit, not searched three times;
- horizontal-flip averaging: the mean of the features of the image and its mirror;
- GeM pooling: (mean of x^p over the 7x7 map)^(1/p) instead of the average (p = 1), from
  the map before the pool, exposed as an extra output of a copy of the ONNX graph made in
  memory here (the committed model is untouched).
"""

import argparse
import json

import numpy as np

import common
import features

K = 10
GEM_P = (2.0, 3.0, 4.0)
QE = (1, 2, 3, 5, 10)
PRE_POOL = "head.relu6"  # the [N, 1280, 7, 7] map that GlobalAveragePool turns into "feature"


# ---------------------------------------------------------------- search and scores

def normalise(x):
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk(base, queries, metric, k=K, block=1000):
    """Exact top-k ids (float32 brute force; ties broken by id)."""
    if metric == "cosine":
        base, queries = normalise(base), normalise(queries)
    base = base.astype(np.float32)
    norms = np.einsum("ij,ij->i", base, base)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        q = queries[s:s + block].astype(np.float32)
        d = norms[None, :] - 2.0 * (q @ base.T)  # + |q|^2, the same for every row
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.lexsort((part, np.take_along_axis(d, part, 1)), axis=1)
        out[s:s + block] = np.take_along_axis(part, order, 1)
    return out


def expand(base, queries, neighbours, n, metric):
    """pgvision.search's expand => n: the mean of the query counted n times and its n
    nearest rows (unit vectors for cosine), i.e. half query, half neighbour mean."""
    if metric == "cosine":
        base, queries = normalise(base), normalise(queries)
    return 0.5 * queries + 0.5 * base[neighbours[:, :n]].mean(axis=1)


def scores(ids, base_labels, query_labels):
    """Per query: precision@10 and AP@10."""
    hits = base_labels[ids] == query_labels[:, None]
    precision = hits.mean(axis=1)
    at_i = np.cumsum(hits, axis=1) / np.arange(1, K + 1)
    ap = (at_i * hits).sum(axis=1) / K
    return precision, ap


def summary(ids, base_labels, query_labels):
    """Figures of one method, and its per-query scores for the paired comparisons."""
    p, ap = scores(ids, base_labels, query_labels)
    out = {"precision@10": float(p.mean()), "mAP@10": float(ap.mean()),
           "se_precision": float(p.std(ddof=1) / np.sqrt(len(p))),
           "by_class": {common.CLASSES[c]: {"precision@10": float(p[query_labels == c].mean()),
                                            "mAP@10": float(ap[query_labels == c].mean())}
                        for c in range(len(common.CLASSES))}}
    return out, (p, ap)


def paired(per_query, references):
    """Mean difference to each reference over the same queries, with its standard error."""
    out = {}
    for name, (rp, rap) in references.items():
        dp, dap = per_query[0] - rp, per_query[1] - rap
        n = np.sqrt(len(dp))
        out[name] = {"d_precision": float(dp.mean()), "se_d_precision": float(dp.std(ddof=1) / n),
                     "d_mAP": float(dap.mean()), "se_d_mAP": float(dap.std(ddof=1) / n)}
    return out


# ---------------------------------------------------------------- new forward passes

def model_with_map():
    """The default model with the pre-pool map as a third output: a copy, in memory."""
    import onnx

    model = features.load_model()
    proto = onnx.load_model_from_string((common.MODEL_DIR / "efficientnet_lite0.onnx").read_bytes())
    height, width = model.spec["size"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(
        PRE_POOL, onnx.TensorProto.FLOAT, ["N", 1280, height // 32, width // 32]))
    return common.models.Model(proto.SerializeToString(), model.spec, threads=0)


def pooled(model, images, flip=False, batch=32):
    """{"avg": feature, "gem<p>": ...} of uint8 images; flip mirrors the model's input."""
    out = {"avg": [], "feature": [], **{f"gem{p:g}": [] for p in GEM_P}}
    names = [model.spec["outputs"]["feature"], PRE_POOL]
    for s in range(0, len(images), batch):
        x = np.stack([model.prepare(common.png_bytes(p), common.LIMITS) for p in images[s:s + batch]])
        if flip:
            x = np.ascontiguousarray(x[..., ::-1])
        feature, fmap = model.session.run(names, {model.spec["input"]: x})
        fmap = fmap.astype(np.float64).reshape(len(x), fmap.shape[1], -1)
        out["feature"].append(feature)
        out["avg"].append(fmap.mean(axis=2).astype(np.float32))
        clamped = np.maximum(fmap, 1e-6)
        for p in GEM_P:
            out[f"gem{p:g}"].append((np.mean(clamped ** p, axis=2) ** (1 / p)).astype(np.float32))
        if (s // batch) % 50 == 0:
            print(f"  {'flipped ' if flip else ''}{s + len(x)}/{len(images)}", flush=True)
    return {k: np.concatenate(v) for k, v in out.items()}


def fits_identical(images, n=32):
    """stretch, center_crop and letterbox give the same input for these (square) images."""
    spec = json.loads((common.MODEL_DIR / "efficientnet_lite0.json").read_text())
    inputs = {}
    for fit in ("stretch", "center_crop", "letterbox"):
        m = features.load_model(spec=json.dumps({**spec, "fit": fit}))
        inputs[fit] = np.stack([m.prepare(common.png_bytes(p), common.LIMITS) for p in images[:n]])
    return all(np.array_equal(inputs["stretch"], v) for v in inputs.values())


def balanced(labels, per_class):
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))


# ---------------------------------------------------------------- report

def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = result["full"]
    names = list(full)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    width = 0.8 / len(names)
    x = np.arange(len(common.CLASSES))
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width,
               [full[name]["by_class"][c]["precision@10"] for c in common.CLASSES], width, label=name)
    ax.set_xticks(x, common.CLASSES, rotation=30, fontsize=7)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("precision@10")
    ax.set_title("60,000 base, 10,000 queries, by class", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    ax = axes[1]
    sub = result["subset"]["methods"]
    ref = result["subset"]["references"][0]
    labels = [n for n in sub if n != ref]
    d = [sub[n]["paired"][ref]["d_precision"] for n in labels]
    e = [2 * sub[n]["paired"][ref]["se_d_precision"] for n in labels]
    ax.barh(np.arange(len(labels)), d, xerr=e, color="#4c72b0")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"precision@10 minus {ref}'s (± 2 s.e., paired)", fontsize=8)
    ax.set_title(f"subset: {result['subset']['base']:,} base, {result['subset']['queries']:,} queries",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(methods, references):
    head = ("| method | precision@10 | mAP@10 | "
            + " | ".join(f"Δ precision@10 to *{r}*" for r in references) + " | "
            + " | ".join(common.CLASSES) + " |")
    lines = [head, "|---|---:|---:|" + "---:|" * (len(references) + len(common.CLASSES))]
    for name, r in methods.items():
        cells = []
        for ref in references:
            pr = r["paired"].get(ref)
            cells.append("" if pr is None or name == ref else
                         f"{pr['d_precision']:+.4f} ± {pr['se_d_precision']:.4f}")
        lines.append(f"| {name} | {r['precision@10']:.4f} | {r['mAP@10']:.4f} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{r['by_class'][c]['precision@10']:.3f}" for c in common.CLASSES) + " |")
    return lines


def decision(result):
    """What becomes the default, from the figures (the reasons are in the text)."""
    full, sub = result["full"], result["subset"]["methods"]
    cos = full[COSINE]["paired"][DEFAULT]
    qe = full[result["best"]]["paired"][DEFAULT]
    gem = sub["GeM p 3, cosine"]["paired"][COSINE]
    flip = sub["feature flip-avg, cosine"]["paired"][COSINE]
    return (
        f"Cosine on the pooled feature beats L2 on it by {cos['d_precision']:+.4f} ± "
        f"{cos['se_d_precision']:.4f} precision@10 and {cos['d_mAP']:+.4f} ± {cos['se_d_mAP']:.4f} "
        "mAP@10 over the same 10,000 queries, and costs nothing at search time, so it is the new "
        "default: `pgvision.create_index` builds cosine indexes unless told otherwise, and the "
        "search functions use the metric of the column's index when no metric is given (cosine "
        "for those; a column without an index, such as a sharded table's, is still searched "
        "with l2, so existing calls keep their results and their index). Query expansion adds "
        f"{qe['d_precision'] - cos['d_precision']:+.4f} more ({result['best']}) but stays "
        "opt-in: it is a second index scan per query, and the distance it reports is to the "
        "expanded query, not to the image asked about, which would change what max_distance and "
        "similarity mean. GeM pooling (p 3: "
        f"{gem['d_precision']:+.4f} ± {gem['se_d_precision']:.4f} over the average pool, cosine, on "
        "the subset) and flip averaging "
        f"({flip['d_precision']:+.4f} ± {flip['se_d_precision']:.4f}, for twice the inference) "
        "would change what `pgvision.embed` returns under a model name that databases already "
        "store features of, and GeM is a change of the graph, not of the spec: they are the case "
        "for a new model version (a new name), not for changing the default model in place.")


def report(result, plot_file):
    sub = result["subset"]
    lines = [
        "## 4. Retrieval quality",
        "",
        "Fashion-MNIST, test images as queries, train images as the base, exact search (numpy "
        "brute force, so no index plays a part): precision@10 and mAP@10, the class label being "
        "the judge. AP@10 is (1/10) × the sum of precision@i over the ranks i ≤ 10 that are "
        "hits; the by-class columns are precision@10. The features are the database's own "
        "(`bench/features.py`: PNG bytes through the runtime package, bit-identical to "
        "`pgvision.embed`). Δ: the mean difference to another method over the same queries ± its "
        "standard error (paired).",
        "",
        f"### All {result['base']:,} base images, {result['queries']:,} queries",
        "",
        *table(result["full"], result["full_references"]),
        "",
        "*logits, L2* is the seed's method 1 (the 1000 ImageNet logits as the vector); *feature* "
        "is the pooled 1280-d output `pgvision.embed` returns; *cosine* is pgvector's `<=>` "
        "(L2 on L2-normalised vectors ranks the same); *+ expand n* is `pgvision.search(..., "
        "expand => n)`: the query replaced by half itself and half the mean of its n nearest "
        "rows, then searched again.",
        "",
        f"### New forward passes, on a balanced subset: {sub['base']:,} base ({sub['base'] // 10} "
        f"per class, the first of each class in the train set), {sub['queries']:,} queries "
        f"({sub['queries'] // 10} per class)",
        "",
        *table(sub["methods"], sub["references"]),
        "",
        "*feature* is the cached default on the same images; *flip-avg*: the mean of the "
        "features of the image and of its mirror image (twice the inference); *GeM p*: "
        "generalised-mean pooling, (mean of x^p)^(1/p), of the 7×7 map before the model's "
        "average pool (a copy of the graph with that map as an extra output; the map's average "
        f"equals the model's feature to {sub['avg_vs_feature']:.1e}). fit: stretch (the "
        "default), center_crop and letterbox give "
        + ("bit-identical model inputs on these square 28×28 images (checked), so they cannot "
           "differ on this data set and are not listed." if sub["fits_identical"] else
           "different inputs (not expected)."),
        "",
        f"**Best**: {result['best']}. {result['decision']}",
        "",
        f"![precision@10 by class and method]({plot_file})",
        "",
        f"Reproduce: `make bench BENCH=quality` or `build/venv/bin/python bench/quality.py "
        f"--subset-base {sub['base'] // 10} --subset-queries {sub['queries'] // 10}` (the "
        "features come from `bench/features.py`, computed once; the subset's passes are kept "
        "beside them).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

SEED, DEFAULT, COSINE = "logits, L2 (seed method 1)", "feature, L2", "feature, cosine"


def subset_passes(images_base, images_query, cache):
    """The subset's pooled variants, plain and mirrored, computed once."""
    if cache.exists():
        z = np.load(cache)
        out = {}
        for key in z.files:
            flip, side, name = key.split("/")
            out.setdefault(flip, {}).setdefault(side, {})[name] = z[key]
        return out
    model = model_with_map()
    out = {}
    with common.Clock() as c:
        for flip in (False, True):
            out[str(flip)] = {"base": pooled(model, images_base, flip), "query": pooled(model, images_query, flip)}
    print(f"subset passes: {2 * (len(images_base) + len(images_query))} images in {c.seconds:.0f} s", flush=True)
    np.savez(cache, **{f"{f}/{s}/{k}": v for f, d in out.items() for s, e in d.items() for k, v in e.items()})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset-base", type=int, default=1000, help="train images per class")
    ap.add_argument("--subset-queries", type=int, default=200, help="test images per class")
    args = ap.parse_args()

    train_images, train_labels = common.fashion("train")
    test_images, test_labels = common.fashion("test")
    data = {"logits": (features.load("train", "logits"), features.load("test", "logits")),
            "feature": (features.load("train", "feature"), features.load("test", "feature"))}

    full, per = {}, {}
    neighbours = {}
    for name, (what, metric) in {SEED: ("logits", "l2"), DEFAULT: ("feature", "l2"),
                                 COSINE: ("feature", "cosine")}.items():
        base, queries = data[what]
        with common.Clock() as c:
            ids = topk(base, queries, metric)
        neighbours[name] = (ids, what, metric)
        full[name], per[name] = summary(ids, train_labels, test_labels)
        print(f"{name:<30} precision@10 {full[name]['precision@10']:.4f} mAP@10 {full[name]['mAP@10']:.4f} "
              f"({c.seconds:.0f} s)", flush=True)
    plain = max(full, key=lambda n: full[n]["precision@10"])
    ids, what, metric = neighbours[plain]
    base, queries = data[what]
    for n in QE:
        q = expand(base, queries, ids, n, metric)
        name = f"{plain} + expand {n}"
        full[name], per[name] = summary(topk(base, q, metric), train_labels, test_labels)
        print(f"{name:<30} precision@10 {full[name]['precision@10']:.4f} mAP@10 {full[name]['mAP@10']:.4f}",
              flush=True)
    full_refs = [SEED, DEFAULT]
    for name in full:
        full[name]["paired"] = paired(per[name], {r: per[r] for r in full_refs})
    best = max(full, key=lambda n: full[n]["precision@10"])
    best_n = int(best.rsplit(" ", 1)[1]) if "expand" in best else 3

    # -------- subset: new forward passes
    bi = balanced(train_labels, args.subset_base)
    qi = balanced(test_labels, args.subset_queries)
    fits_same = fits_identical(test_images[qi])
    passes = subset_passes(train_images[bi], test_images[qi], features.folder(features.load_model())
                           / f"quality-subset-{args.subset_base}-{args.subset_queries}.npz")
    plain_pass, flip_pass = passes["False"], passes["True"]
    cached = features.load("train", "feature")[bi], features.load("test", "feature")[qi]
    same_as_cache = bool(np.array_equal(plain_pass["base"]["feature"], cached[0])
                         and np.array_equal(plain_pass["query"]["feature"], cached[1]))
    avg_diff = float(max(np.abs(plain_pass[s]["avg"] - plain_pass[s]["feature"]).max() for s in ("base", "query")))

    variants = {"feature": lambda s: cached[s == "query"]}
    for key in ("feature",) + tuple(f"gem{p:g}" for p in GEM_P):
        label = "feature" if key == "feature" else f"GeM p {key[3:]}"
        if key != "feature":
            variants[label] = (lambda k: lambda s: plain_pass[s][k])(key)
        variants[f"{label} flip-avg"] = (lambda k: lambda s: 0.5 * (plain_pass[s][k] + flip_pass[s][k]))(key)
    bl, ql = train_labels[bi], test_labels[qi]
    methods, sub_per = {}, {}
    for metric in ("l2", "cosine"):
        for label, get in variants.items():
            name = f"{label}, {'L2' if metric == 'l2' else 'cosine'}"
            methods[name], sub_per[name] = summary(topk(get("base"), get("query"), metric), bl, ql)
            print(f"subset {name:<28} precision@10 {methods[name]['precision@10']:.4f} "
                  f"mAP@10 {methods[name]['mAP@10']:.4f}", flush=True)
    best_sub = max(methods, key=lambda n: methods[n]["precision@10"])
    label, metric = best_sub.rsplit(", ", 1)
    metric = "l2" if metric == "L2" else "cosine"
    get = variants[label]
    q = expand(get("base"), get("query"), topk(get("base"), get("query"), metric), best_n, metric)
    name = f"{best_sub} + expand {best_n}"
    methods[name], sub_per[name] = summary(topk(get("base"), q, metric), bl, ql)
    print(f"subset {name:<28} precision@10 {methods[name]['precision@10']:.4f}", flush=True)
    sub_refs = [DEFAULT, COSINE]
    for name in methods:
        methods[name]["paired"] = paired(sub_per[name], {r: sub_per[r] for r in sub_refs})

    result = {"base": len(train_labels), "queries": len(test_labels), "full": full, "full_references": full_refs,
              "subset": {"base": len(bi), "queries": len(qi), "references": sub_refs, "methods": methods,
                         "fits_identical": fits_same, "map_feature_equals_cache": same_as_cache,
                         "avg_vs_feature": avg_diff},
              "best": best, "best_plain": plain}
    result["decision"] = decision(result)
    print(result["decision"])
    path = common.plot_path("quality", "precision")
    plot(result, path)
    common.write_results("quality", result, report(result, path.name))


if __name__ == "__main__":
    main()

"""Models learned from a table: a linear projection of a model's feature, appended to its graph.

``fit`` learns ``y = (x - mean) @ matrix`` from features (numpy only, float64 throughout):

- without labels, PCA-whitening: the top ``dims`` principal directions, each divided by the
  square root of its standard deviation (``WHITEN_POWER`` 0.5: full whitening, to unit
  variance, lost 0.04 precision@10 on Fashion-MNIST; the square root kept both precision and
  near-duplicate recall), with a small floor so that near-zero directions are not blown up;
- with labels, a regularised linear discriminant (LDA): the within-class scatter, shrunk
  towards a multiple of the identity, whitens the feature; the directions of the largest
  between-class scatter there (at most classes - 1) come first. Up to ``dims``, the rest are
  PCA-whitened directions of what the discriminant leaves out, weighted down
  (``FILL_WEIGHT``), so they keep some of what tells one image from another (near
  duplicates) without drowning the class directions.

``append`` writes the projection into the source model's ONNX graph (Sub, then MatMul, after
the feature output), so the new model is an ordinary registered model and
``pgvision.embed(image, name)`` stays IMMUTABLE. Same features in, same bytes out: the
eigenvectors' signs are fixed (largest entry positive) and nothing is random.

Figures: BENCHMARKS.md, "Models learned from your table" (bench/projection.py).
"""

import numpy as np

from .errors import INVALID_PARAMETER_VALUE, PgvisionError

# Rows sampled from the table (a repeatable sample when it has more): about a minute of
# embedding on one core at 224 px, and 5000 x 1280 float64 features take 50 MB.
MAX_ROWS = 5000
MIN_ROWS = 10
MIN_PER_CLASS = 2
# how far PCA divides each direction by its spread: variance ** (WHITEN_POWER / 2)
WHITEN_POWER = 0.5
# shrinkage of the within-class scatter towards the identity (0 = plain LDA)
SHRINKAGE = 0.3
# floor of the variances whitening divides by, as a fraction of the largest one
VARIANCE_FLOOR = 1e-4
# weight of the PCA directions that fill a discriminant up to dims, against the class ones
FILL_WEIGHT = 0.5

OUTPUT = "projected_feature"


def _invalid(message, hint=None):
    return PgvisionError(message, INVALID_PARAMETER_VALUE, hint=hint)


def _eigh_desc(matrix):
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    order = np.argsort(-values, kind="stable")
    return values[order], vectors[:, order]


def _fix_signs(vectors):
    """Each column with its largest-magnitude entry positive: eigh's signs are arbitrary."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs


def _whitened_pca(centered, dims, power=1.0):
    """The top ``dims`` principal directions of centered rows, each divided by its variance
    to the power ``power / 2`` (1: unit variance)."""
    cov = centered.T @ centered / max(len(centered) - 1, 1)
    values, vectors = _eigh_desc(cov)
    values = np.maximum(values[:dims], VARIANCE_FLOOR * max(values[0], 1e-30))
    return _fix_signs(vectors[:, :dims]) / values ** (power / 2)


def check_dims(dims, source_dim):
    if dims is None or dims < 1 or dims > source_dim:
        raise _invalid(f"dims must be between 1 and {source_dim}, not {dims}",
                       hint=f"the source model's feature has {source_dim} dimensions")


def _check_rows(n, dims):
    if n < max(MIN_ROWS, dims + 1):
        raise _invalid(f"{n} rows to learn {dims} dimensions from; at least "
                       f"{max(MIN_ROWS, dims + 1)} are needed",
                       hint="pass a smaller dims, or a table with more rows with an image")


def _check_classes(n):
    if n < 2:
        raise _invalid(f"{n} distinct labels among the rows; at least 2 are needed",
                       hint="a discriminant needs rows of two labels or more; "
                            "leave label_column NULL for PCA-whitening")


def fit(features, labels=None, dims=256):
    """(mean float32 [D], matrix float32 [D, dims], summary dict) of a projection of
    ``features`` [n, D]: PCA-whitening, or a discriminant when ``labels`` (n values) are given."""
    x = np.asarray(features, dtype=np.float64)
    n, source_dim = x.shape
    check_dims(dims, source_dim)
    _check_rows(n, dims)
    mean = x.mean(axis=0)
    centered = x - mean
    if labels is None:
        matrix = _whitened_pca(centered, dims, WHITEN_POWER)
        return _result(mean, matrix, {"method": "pca-whitening", "rows": n, "dims": dims})

    labels = np.asarray(labels, dtype=object)
    classes, index, counts = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
    _check_classes(len(classes))
    if counts.min() < MIN_PER_CLASS:
        small = classes[np.argmin(counts)]
        raise _invalid(f'class "{small}" has {counts.min()} row; every class needs at least '
                       f"{MIN_PER_CLASS}", hint="label more rows of it, or leave its label NULL")
    class_means = np.zeros((len(classes), source_dim))
    np.add.at(class_means, index, x)
    class_means /= counts[:, None]
    within = x - class_means[index]
    sw = within.T @ within / n
    between = (class_means - mean) * np.sqrt(counts / n)[:, None]
    sb = between.T @ between
    sw = (1 - SHRINKAGE) * sw + SHRINKAGE * np.trace(sw) / source_dim * np.eye(source_dim)
    s, u = _eigh_desc(sw)
    whiten = u / np.sqrt(np.maximum(s, VARIANCE_FLOOR * s[0]))
    values, vectors = _eigh_desc(whiten.T @ sb @ whiten)
    k = min(len(classes) - 1, dims)
    lda = whiten @ _fix_signs(vectors[:, :k])
    parts = [lda]
    if dims > k:
        # what the class directions leave out, PCA-whitened, weighted down
        q, _ = np.linalg.qr(lda)
        rest = centered - (centered @ q) @ q.T
        parts.append(FILL_WEIGHT * _whitened_pca(rest, dims - k))
    matrix = np.concatenate(parts, axis=1)
    return _result(mean, matrix, {"method": "lda", "rows": n, "classes": len(classes),
                                  "discriminant_dims": k, "dims": dims})


def _result(mean, matrix, summary):
    mean, matrix = mean.astype(np.float32), np.ascontiguousarray(matrix, dtype=np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(matrix).all()):
        raise _invalid("the learned projection is not finite",
                       hint="the features are degenerate (all images alike?)")
    return mean, matrix, summary


def apply(features, mean, matrix):
    """What the appended nodes compute, in numpy (float32, as onnxruntime does)."""
    return (np.asarray(features, dtype=np.float32) - mean) @ matrix


def append(onnx_bytes, spec, mean, matrix):
    """(ONNX bytes, spec) of the source model with ``(feature - mean) @ matrix`` appended to
    its feature output as the new output ``projected_feature``; other outputs (logits) stay."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_model_from_string(bytes(onnx_bytes))
    graph = proto.graph
    feature = spec["outputs"]["feature"]
    taken = {v for node in graph.node for v in list(node.input) + list(node.output)}
    taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input}

    def fresh(base):
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    output = fresh(OUTPUT)
    mean_name, matrix_name, centered = fresh("projection.mean"), fresh("projection.matrix"), \
        fresh("projection.centered")
    graph.initializer.extend([numpy_helper.from_array(mean, mean_name),
                              numpy_helper.from_array(matrix, matrix_name)])
    source = feature
    if spec.get("normalize"):
        # the projection was learned on the source's features as it returns them, scaled to
        # length 1; the projected feature is scaled again by the spec, which it keeps
        source = fresh("projection.unit")
        graph.node.append(helper.make_node("LpNormalization", [feature], [source], axis=1, p=2,
                                           name=fresh("projection.normalize")))
    graph.node.extend([
        helper.make_node("Sub", [source, mean_name], [centered], name=fresh("projection.sub")),
        helper.make_node("MatMul", [centered, matrix_name], [output], name=fresh("projection.matmul")),
    ])
    batch = None
    for o in graph.output:
        if o.name == feature:
            dims = o.type.tensor_type.shape.dim
            if len(dims) and dims[0].dim_param:
                batch = dims[0].dim_param
    graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT,
                                                      [batch or "batch", int(matrix.shape[1])]))
    # the source's feature stays an output only if the spec names it for something else
    if feature not in [v for k, v in spec["outputs"].items() if k != "feature"]:
        keep = [o for o in graph.output if o.name != feature]
        del graph.output[:]
        graph.output.extend(keep)
    new_spec = dict(spec)
    new_spec["outputs"] = dict(spec["outputs"], feature=output)
    return proto.SerializeToString(), new_spec


# --- from a table (called by sqlapi.train_projection, with plpy) ----------------------------

def _columns(plpy, image_column, label_column):
    """(image, label as text, the rows' WHERE) for the table's dynamic SQL."""
    image = plpy.quote_ident(image_column)
    where = f"{image} IS NOT NULL"
    if label_column is None:
        return image, "NULL::pg_catalog.text", where
    label = f"{plpy.quote_ident(label_column)}::pg_catalog.text"
    return image, label, f"{where} AND {label} IS NOT NULL"


def _sample_query(plpy, rel, relkind, image_column, label_column, total):
    """The query reading at most MAX_ROWS rows (image, label) of the table: a repeatable
    Bernoulli sample when it has more, so the same table gives the same model (a view or a
    foreign table, which cannot be sampled, gives its first MAX_ROWS rows)."""
    image, label, where = _columns(plpy, image_column, label_column)
    sample = ""
    if total > MAX_ROWS and relkind in ("r", "m", "p"):
        percent = min(100.0, 100.0 * MAX_ROWS * 1.2 / total)
        sample = f" TABLESAMPLE BERNOULLI ({percent:.6f}) REPEATABLE (0)"
    return (f"SELECT {image} AS image, {label} AS label FROM {rel}{sample} "
            f"WHERE {where} LIMIT {MAX_ROWS}")


def _embed_rows(plpy, GD, m, conf, cursor):
    """Features and labels of the cursor's rows, pgvision.batch_size images a model call; an
    image that does not decode is skipped with a WARNING naming its row."""
    from . import errors, sqlapi

    check = sqlapi.interrupt_check(plpy, GD)
    limits = sqlapi._limits(conf)
    size = conf["pgvision.batch_size"]
    features, labels, row_no = [], [], 0
    try:
        while True:
            try:
                rows = cursor.fetch(size)
            except plpy.SPIError as e:
                raise sqlapi._passed_on(e) from None
            if not rows:
                break
            images = [r["image"] for r in rows]
            try:
                out = m.embed_many(images, limits, batch_size=size, check=check, release=False)
            except (errors.ImageError, errors.LimitError):
                out = []
                for j, data in enumerate(images):
                    try:
                        out.append(m.embed_many([data], limits, check=check, release=False)[0])
                    except (errors.ImageError, errors.LimitError) as e:
                        plpy.warning(f"pgvision.train_projection: sampled row {row_no + j + 1} skipped: "
                                     f"{e.message}")
                        out.append(None)
            for r, f in zip(rows, out):
                if f is not None:
                    features.append(f)
                    labels.append(r["label"])
            row_no += len(rows)
    finally:
        cursor.close()
        m.release_memory()
    return features, labels


def train_from_table(plpy, GD, source, name, tbl, image_column, label_column, dims):
    """pgvision.train_projection: register ``name``, ``source`` with a projection learned
    from the images of ``tbl`` (read as the caller); returns the new model's sha256."""
    import json

    from . import sqlapi
    from .errors import DUPLICATE_OBJECT

    sqlapi._check_name(name, "model")
    if sqlapi._model_exists(plpy, GD, name):
        raise PgvisionError(f'model "{name}" already exists', DUPLICATE_OBJECT,
                            hint="a model never changes under its name: choose a new name")
    st = sqlapi.state(plpy, GD)
    rows = plpy.execute(st.lookup, [source])
    if not rows:
        raise sqlapi._no_such_model(source)
    source_dim = plpy.execute(plpy.prepare("SELECT dim FROM pgvision.models WHERE name = $1",
                                           ["text"]), [source])[0]["dim"]
    check_dims(dims, source_dim)

    def column(col):
        plan = plpy.prepare("SELECT c.type_name FROM pgvision._require_column($1, $2) c",
                            ["regclass", "name"])
        try:
            return plpy.execute(plan, [tbl, col])[0]["type_name"]
        except plpy.SPIError as e:
            raise sqlapi._passed_on(e) from None

    image_type = column(image_column)
    if image_type != "pg_catalog.bytea":
        raise PgvisionError(f'column "{image_column}" of relation {tbl} is of type {image_type}, '
                            "not bytea", "42804", hint="image_column must hold the image files' bytes")
    if label_column is not None:
        column(label_column)
    info = plpy.execute(plpy.prepare(
        "SELECT pgvision._rel_name($1) AS rel, c.relkind::pg_catalog.text AS relkind "
        "FROM pg_catalog.pg_class c WHERE c.oid = $1", ["regclass"]), [tbl])[0]
    rel = info["rel"]
    _, label, where = _columns(plpy, image_column, label_column)
    try:
        counts = plpy.execute(f"SELECT pg_catalog.count(*) AS n, pg_catalog.count(DISTINCT {label}) "
                              f"AS classes FROM {rel} WHERE {where}")[0]
    except plpy.SPIError as e:
        raise sqlapi._passed_on(e) from None
    # what fit would refuse, before an image is embedded
    total = counts["n"]
    _check_rows(min(total, MAX_ROWS), dims)
    if label_column is not None:
        _check_classes(counts["classes"])
    try:
        cursor = plpy.cursor(_sample_query(plpy, rel, info["relkind"], image_column,
                                           label_column, total))
    except plpy.SPIError as e:
        raise sqlapi._passed_on(e) from None

    m, conf = sqlapi.model(plpy, GD, source)
    registered = sqlapi.Registered(plpy, st.onnx, source, rows[0], conf["pgvision.max_model_bytes"])
    features, labels = _embed_rows(plpy, GD, m, conf, cursor)
    if not features:
        raise _invalid(f"relation {tbl} has no rows with an image"
                       + ("" if label_column is None else " and a label"),
                       hint="train_projection learns from the images already in the table")
    mean, matrix, summary = fit(np.stack(features), None if label_column is None else labels, dims)
    spec = registered.spec()
    onnx_bytes, new_spec = append(registered.onnx(), spec, mean, matrix)
    if summary["method"] == "lda":
        how = (f"a discriminant of {summary['classes']} classes "
               f"({summary['discriminant_dims']} dimensions, the rest PCA)")
    else:
        how = "PCA-whitening"
    plpy.notice(f'pgvision.train_projection: "{name}": {how}, {dims} dimensions, learned from '
                f"{summary['rows']} rows of {total}")
    source_labels = plpy.execute(st.labels, [source])[0]["labels"] if "logits" in new_spec["outputs"] else None
    return sqlapi.register_model(plpy, GD, name, onnx_bytes, json.dumps(new_spec), source_labels)

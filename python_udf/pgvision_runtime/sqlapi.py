"""What the PL/Python bodies call. Each function takes ``plpy`` and ``GD`` from the body.

This is the only module that talks to PostgreSQL (through ``plpy``); it turns
``PgvisionError`` into ``plpy.error`` with the SQLSTATE and hint.
"""

import functools
import json
import os

import numpy as np

from . import images, models, sharing
from .errors import (CONFIG_FILE_ERROR, DATA_EXCEPTION, DUPLICATE_OBJECT, INVALID_PARAMETER_VALUE,
                     UNDEFINED_OBJECT, ModelError, PgvisionError)

# GUC name -> (default, minimum) for integers, (default, None) for booleans.
SETTINGS = {
    "pgvision.threads": (0, 0),
    "pgvision.max_pixels": (images.DEFAULT_MAX_PIXELS, 1),
    "pgvision.max_image_bytes": (images.DEFAULT_MAX_BYTES, 1),
    "pgvision.max_model_bytes": (models.DEFAULT_MAX_MODEL_BYTES, 1),
    "pgvision.batch_size": (32, 1),
    # off: each backend loads its own copy of a model from the registry (see sharing.py)
    "pgvision.share_models": (True, None),
    # on: embed_batch keeps onnxruntime's activation memory for the next call (see models.run)
    "pgvision.keep_batch_memory": (False, None),
}

# PostgreSQL's spellings of a boolean (parse_bool), without the unique-prefix forms
BOOLEANS = {"on": True, "true": True, "yes": True, "1": True,
            "off": False, "false": False, "no": False, "0": False}


_sql_error_class = None


def _sql_error(plpy, e):
    """A plpy.Error that PL/Python reports as "pgvision: <message>" with e's SQLSTATE.

    PL/Python prefixes the message with the exception's type name ("plpy.Error: ..."), and
    reads sqlstate, detail and hint from the exception's attributes; a subclass named
    after us in builtins makes the prefix say where the error comes from.
    """
    global _sql_error_class
    if _sql_error_class is None:
        _sql_error_class = type("pgvision", (plpy.Error,), {"__module__": "builtins"})
    err = _sql_error_class(e.message)
    err.sqlstate = e.sqlstate
    if e.detail is not None:
        err.detail = e.detail
    if e.hint is not None:
        err.hint = e.hint
    return err


def sql_errors(fn):
    """Report PgvisionError as a PostgreSQL error carrying its SQLSTATE."""
    @functools.wraps(fn)
    def wrapper(plpy, *args, **kwargs):
        try:
            return fn(plpy, *args, **kwargs)
        except PgvisionError as e:
            raise _sql_error(plpy, e) from None
    return wrapper


class State:
    """Per-backend state kept in GD: prepared plans and loaded models."""

    def __init__(self, plpy):
        self.cache = models.Cache()
        # aliased: PL/Python returns rows as dicts, and equal column names would collide
        gucs = ", ".join(f"pg_catalog.current_setting('{g}', true) AS g{i}"
                         for i, g in enumerate(SETTINGS))
        self.lookup = plpy.prepare(
            f"SELECT m.sha256, {gucs} FROM pgvision.models m WHERE m.name = $1", ["text"])
        self.settings_only = plpy.prepare(f"SELECT {gucs}")
        self.load = plpy.prepare(
            "SELECT onnx, spec::text AS spec FROM pgvision.models WHERE sha256 = $1 LIMIT 1",
            ["text"])
        self.load_spec = plpy.prepare(
            "SELECT spec::text AS spec FROM pgvision.models WHERE sha256 = $1 LIMIT 1", ["text"])
        # a backend's working directory is the data directory: private to the server's user
        self.shared = sharing.SharedModels(os.path.join(os.getcwd(), sharing.FOLDER),
                                           log=plpy.debug)
        self.labels = plpy.prepare(
            "SELECT labels FROM pgvision.models WHERE name = $1", ["text"])
        self.pipeline = plpy.prepare(
            "SELECT model, options::text AS options FROM pgvision.pipelines WHERE name = $1",
            ["text"])
        self.nothing = plpy.prepare("SELECT")
        self.model_exists = plpy.prepare("SELECT 1 FROM pgvision.models WHERE name = $1", ["text"])
        self.pipeline_exists = plpy.prepare(
            "SELECT 1 FROM pgvision.pipelines WHERE name = $1", ["text"])


def state(plpy, GD):
    st = GD.get("pgvision_state")
    if st is None:
        st = GD["pgvision_state"] = State(plpy)
    return st


def _settings(values):
    out = {}
    for (name, (default, minimum)), raw in zip(SETTINGS.items(), values):
        if raw is None or raw == "":
            out[name] = default
            continue
        if minimum is None:
            value = BOOLEANS.get(raw.strip().lower())
            if value is None:
                raise PgvisionError(f'invalid value for {name}: "{raw}"', INVALID_PARAMETER_VALUE,
                                    hint="expected on or off")
            out[name] = value
            continue
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise PgvisionError(f'invalid value for {name}: "{raw}"', INVALID_PARAMETER_VALUE,
                                hint=f"expected an integer of at least {minimum}")
        out[name] = value
    return out


def settings(plpy, GD):
    row = plpy.execute(state(plpy, GD).settings_only)[0]
    return _settings([row[f"g{i}"] for i in range(len(SETTINGS))])


def _no_such_model(name):
    return PgvisionError(f'model "{name}" does not exist', UNDEFINED_OBJECT,
                         hint="SELECT name FROM pgvision.models lists the registered models")


def _model_exists(plpy, GD, name):
    return bool(plpy.execute(state(plpy, GD).model_exists, [name]))


def model(plpy, GD, name):
    """The loaded model called ``name``, and the current settings."""
    st = state(plpy, GD)
    rows = plpy.execute(st.lookup, [name])
    if not rows:
        raise _no_such_model(name)
    row = rows[0]
    conf = _settings([row[f"g{i}"] for i in range(len(SETTINGS))])

    def load():
        r = plpy.execute(st.load, [row["sha256"]])[0]
        return r["onnx"], json.loads(r["spec"])

    def load_spec():
        return json.loads(plpy.execute(st.load_spec, [row["sha256"]])[0]["spec"])

    shared = st.shared if conf["pgvision.share_models"] else None
    return st.cache.get(row["sha256"], conf["pgvision.threads"], load, shared, load_spec), conf


def interrupt_check(plpy, GD):
    """A callable to run between pieces of long work, so that it can be stopped.

    PostgreSQL acts on a query cancel (pg_cancel_backend, statement_timeout) or
    pg_terminate_backend only where its own code checks for interrupts, never while Python
    runs. Executing a plan checks, so this runs one that does nothing (a few microseconds):
    a pending cancel raises its error here (SQLSTATE 57014), a termination ends the backend.
    """
    plan = state(plpy, GD).nothing

    def check():
        try:
            plpy.execute(plan)
        except plpy.SPIError as e:
            raise PgvisionError(str(e), getattr(e, "sqlstate", None) or DATA_EXCEPTION) from None
    return check


def _limits(conf):
    return {"max_pixels": conf["pgvision.max_pixels"], "max_bytes": conf["pgvision.max_image_bytes"]}


_VECTOR_FORMATS = {}


def _finite_float32(arr, contiguous=False):
    arr = (np.ascontiguousarray if contiguous else np.asarray)(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise PgvisionError("model produced a non-finite value", DATA_EXCEPTION,
                            hint="the model or its spec is broken for this input")
    return arr


def vector_text(arr):
    """A float32 array as pgvector's text form, which reads back bit for bit.

    PL/Python hands a vector result to pgvector's text input whatever Python returns, so
    this text is the cheapest way in. Nine significant digits identify a float32 exactly
    (FLT_DECIMAL_DIG), and Python's %-formatting rounds correctly; one format string for
    the whole vector costs a third of joining each float's repr (17 digits of a double).
    """
    arr = _finite_float32(arr)
    n = arr.shape[0]
    template = _VECTOR_FORMATS.get(n)
    if template is None:
        template = _VECTOR_FORMATS[n] = "[" + ",".join(["%.9g"] * n) + "]"
    return template % tuple(arr.tolist())


def vector_bytes(arr):
    """A float32 array as the bytes pgvision._vector_from_float4 makes a vector of.

    PL/Python passes bytes through as bytea, a copy; anything else goes through the result
    type's text input, which for a vector means formatting and parsing every float.
    """
    return _finite_float32(arr, contiguous=True).tobytes()


@sql_errors
def embed_float4(plpy, GD, image, model_name):
    """pgvision.embed's feature as float4 bytes (see vector_bytes)."""
    m, conf = model(plpy, GD, model_name)
    return vector_bytes(m.embed(image, _limits(conf)))


def _embed_batch(plpy, GD, image_list, model_name, form, keep_memory=False):
    """The features of a list of images in ``form`` (vector_bytes or vector_text), None for
    None; ``keep_memory`` (or the setting pgvision.keep_batch_memory) keeps onnxruntime's
    activation memory for the next batch (release_batch_memory gives it back)."""
    if image_list is None:
        return None
    m, conf = model(plpy, GD, model_name)
    keep = keep_memory or conf["pgvision.keep_batch_memory"]
    features = m.embed_many(list(image_list), _limits(conf), batch_size=conf["pgvision.batch_size"],
                            check=interrupt_check(plpy, GD), release=not keep)
    return [None if f is None else form(f) for f in features]


@sql_errors
def embed_batch_float4(plpy, GD, image_list, model_name, keep_memory=False):
    """pgvision.embed_batch's features as float4 bytes."""
    return _embed_batch(plpy, GD, image_list, model_name, vector_bytes, keep_memory)


@sql_errors
def release_batch_memory(plpy, GD):
    """Give back the activation memory every loaded model of this backend keeps."""
    st = GD.get("pgvision_state")
    if st is None:
        return 0
    for m in st.cache.models.values():
        m.release_memory()
    return len(st.cache.models)


# The text forms: the released 0.1.0 functions call these.
@sql_errors
def embed(plpy, GD, image, model_name):
    m, conf = model(plpy, GD, model_name)
    return vector_text(m.embed(image, _limits(conf)))


@sql_errors
def embed_batch(plpy, GD, image_list, model_name):
    return _embed_batch(plpy, GD, image_list, model_name, vector_text)


@sql_errors
def classify(plpy, GD, image, k, model_name):
    if k < 1:
        raise PgvisionError(f"k must be at least 1, not {k}", INVALID_PARAMETER_VALUE)
    m, conf = model(plpy, GD, model_name)
    if "logits" not in m.spec["outputs"]:
        raise PgvisionError(f'model "{model_name}" has no logits output', INVALID_PARAMETER_VALUE,
                            hint="classify needs a model registered with a logits output and labels")
    labels = plpy.execute(state(plpy, GD).labels, [model_name])[0]["labels"]
    logits = m.embed(image, _limits(conf), output="logits").astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i] if labels and i < len(labels) else str(int(i)), float(probs[i])) for i in top]


def _check_name(name, what):
    if not name or len(name) > 63 or not all(c.isalnum() or c in "_-." for c in name):
        raise PgvisionError(f'invalid {what} name "{name}"', INVALID_PARAMETER_VALUE,
                            hint="use up to 63 letters, digits, '_', '-' or '.'")


@sql_errors
def register_model(plpy, GD, name, onnx_bytes, spec_json, labels, builtin=False):
    _check_name(name, "model")
    if _model_exists(plpy, GD, name):
        raise PgvisionError(f'model "{name}" already exists', DUPLICATE_OBJECT,
                            hint="a model never changes under its name: register the new version "
                                 "under a new name")
    conf = settings(plpy, GD)
    try:
        spec = json.loads(spec_json)
    except ValueError as e:
        raise ModelError(f"invalid model spec: {e}") from None
    spec, dim, _ = models.inspect(onnx_bytes, spec, labels, conf["pgvision.max_model_bytes"])
    sha = models.sha256(onnx_bytes)
    plan = plpy.prepare(
        "INSERT INTO pgvision.models (name, sha256, dim, spec, labels, onnx, builtin) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
        ["text", "text", "int4", "text", "text[]", "bytea", "bool"])
    plpy.execute(plan, [name, sha, dim, json.dumps(spec), labels, onnx_bytes, builtin])
    return sha


@sql_errors
def install_builtin(plpy, GD, runtime_dir):
    """Register the models shipped in the runtime folder that are not registered yet."""
    folder = os.path.join(runtime_dir, "models")
    if not os.path.isdir(folder):
        raise PgvisionError(f'pgvision runtime has no models folder "{folder}"', CONFIG_FILE_ERROR,
                            hint="run make install, or set pgvision.runtime_path in postgresql.conf")
    names = []
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".onnx"):
            continue
        name = fname[:-5]
        if _model_exists(plpy, GD, name):
            continue
        with open(os.path.join(folder, fname), "rb") as f:
            onnx_bytes = f.read()
        with open(os.path.join(folder, name + ".json")) as f:
            spec_json = f.read()
        labels = None
        labels_path = os.path.join(folder, name + ".labels.txt")
        if os.path.exists(labels_path):
            with open(labels_path) as f:
                labels = [line.rstrip("\n") for line in f if line.strip()]
        register_model(plpy, GD, name, onnx_bytes, spec_json, labels, builtin=True)
        names.append(name)
    return names


# --- AnalyticDB-style pipelines ----------------------------------------------------------

PIPELINE_OPTIONS = {"output": ("feature", "logits"), "normalize": (True, False)}


def _pipeline_options(options_json):
    try:
        options = json.loads(options_json) if options_json else {}
    except ValueError as e:
        raise PgvisionError(f"invalid pipeline options: {e}", INVALID_PARAMETER_VALUE) from None
    if not isinstance(options, dict):
        raise PgvisionError("pipeline options must be a JSON object", INVALID_PARAMETER_VALUE)
    for key, value in options.items():
        if key not in PIPELINE_OPTIONS:
            raise PgvisionError(f'unknown pipeline option "{key}"', INVALID_PARAMETER_VALUE,
                                hint="known options: " + ", ".join(PIPELINE_OPTIONS))
        if value not in PIPELINE_OPTIONS[key] or isinstance(value, bool) != isinstance(
                PIPELINE_OPTIONS[key][0], bool):
            raise PgvisionError(f'invalid value for pipeline option "{key}": {json.dumps(value)}',
                                INVALID_PARAMETER_VALUE,
                                hint="expected one of " + ", ".join(
                                    json.dumps(v) for v in PIPELINE_OPTIONS[key]))
    return {"output": options.get("output", "feature"),
            "normalize": options.get("normalize", False)}


@sql_errors
def pipeline_create(plpy, GD, name, model_name, options_json):
    _check_name(name, "pipeline")
    options = _pipeline_options(options_json)
    if not _model_exists(plpy, GD, model_name):
        raise _no_such_model(model_name)
    if plpy.execute(state(plpy, GD).pipeline_exists, [name]):
        raise PgvisionError(f'pipeline "{name}" already exists', DUPLICATE_OBJECT,
                            hint="SELECT pgvision.pipeline_drop(name) first to replace it")
    plan = plpy.prepare("INSERT INTO pgvision.pipelines (name, model, options) "
                        "VALUES ($1, $2, $3::jsonb)", ["text", "text", "text"])
    plpy.execute(plan, [name, model_name, json.dumps(options)])
    return name


@sql_errors
def pipeline_run(plpy, GD, name, image):
    rows = plpy.execute(state(plpy, GD).pipeline, [name])
    if not rows:
        raise PgvisionError(f'pipeline "{name}" does not exist', UNDEFINED_OBJECT,
                            hint="SELECT name FROM pgvision.pipelines lists the pipelines")
    model_name = rows[0]["model"]
    options = _pipeline_options(rows[0]["options"])
    m, conf = model(plpy, GD, model_name)
    output = options["output"]
    if output not in m.spec["outputs"]:
        raise PgvisionError(f'model "{model_name}" has no {output} output', INVALID_PARAMETER_VALUE)
    values = m.embed(image, _limits(conf), output=output).astype(np.float64)
    if options["normalize"]:
        norm = np.linalg.norm(values)
        if norm > 0:
            values = values / norm
    result = {"pipeline": name, "model": model_name, "output": output, "dim": int(values.shape[0]),
              "normalized": options["normalize"], output: values.tolist()}
    return json.dumps(result)


def runtime_info(runtime_dir):
    import sys

    import numpy
    import onnxruntime
    import PIL

    from . import __version__
    return json.dumps({
        "runtime": __version__, "runtime_path": runtime_dir, "python": sys.version.split()[0],
        "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__, "providers": onnxruntime.get_available_providers()})

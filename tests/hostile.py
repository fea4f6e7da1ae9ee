"""Malformed and hostile inputs for pgvision.embed, generated in memory (no binaries in git).

``corpus()`` returns ``(name, bytes, expectation)`` entries. ``expectation`` is

- ``"ok"``: a valid image; it must give a finite feature vector;
- ``"error"``: it must raise with a SQLSTATE in ``ALLOWED_SQLSTATES``;
- ``"either"``: damaged data that a decoder may repair or refuse; either outcome is fine,
  as long as an error has an allowed SQLSTATE.

Whatever the expectation, the input must not crash or hang the backend. Everything is
deterministic (seeded), so a failure reproduces.
"""

import functools
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

# 22P03: not an image we can decode; 54000: over pgvision.max_pixels or max_image_bytes.
ALLOWED_SQLSTATES = {"22P03", "54000"}

# Just under the default pgvision.max_pixels (50 000 000): 7000 x 7000 = 49 000 000.
NEAR_LIMIT = 7000

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"


# ------------------------------------------------------------------------------ builders

def encode(img, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(size, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")


def blocks(size=(96, 72), seed=1):
    """A picture of coloured blocks: compresses well, survives lossy codecs."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    arr = np.repeat(np.repeat(small, 8, 0), 8, 1)[:height, :width]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_raw(width, height, rows, bit_depth=8, color_type=2, extra=(), level=9):
    """A PNG from raw scanlines (each already prefixed with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (PNG_MAGIC + png_chunk(b"IHDR", ihdr) + b"".join(extra)
            + png_chunk(b"IDAT", zlib.compress(rows, level)) + png_chunk(b"IEND", b""))


def png_declaring(width, height):
    """A PNG holding the pixel data of a 1x1 RGB image, whose IHDR says width x height."""
    return png_raw(width, height, b"\x00\xff\x00\x00")


def png_chunks(data):
    """[(kind, body)] of a PNG file."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_with(data, before_idat=(), replace=None):
    """Rebuild a PNG, inserting chunks before the first IDAT and replacing chunk bodies."""
    replace = replace or {}
    out, inserted = [PNG_MAGIC], False
    for kind, body in png_chunks(data):
        if kind == b"IDAT" and not inserted:
            out.extend(before_idat)
            inserted = True
        out.append(png_chunk(kind, replace[kind](body) if kind in replace else body))
    return b"".join(out)


def zeros_zlib(n, prefix=b""):
    """zlib data of ``prefix`` and n zero bytes, made fast: after a full flush, deflate's
    output for each further MiB of zeros is the same block, so one block is repeated."""
    piece = bytes(1 << 20)
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(piece) + raw.flush(zlib.Z_FULL_FLUSH)
    rest = n & ((1 << 20) - 1)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(rest)) + tail.flush()
    check = zlib.adler32(prefix)
    for _ in range(n >> 20):
        check = zlib.adler32(piece, check)
    check = zlib.adler32(bytes(rest), check)
    return b"\x78\xda" + first + block * (n >> 20) + last + struct.pack(">I", check)


def png_zero_filled(width, height, bit_depth=8, color_type=2):
    """A real, all-zero PNG: a few hundred KB that decode to width*height pixels."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = 1 + width * channels * bit_depth // 8
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zeros_zlib(row * height))
            + png_chunk(b"IEND", b""))


def png_16bit(color_type, size=(24, 16), seed=3):
    width, height = size
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65536, (height, width * channels), dtype=np.uint16).astype(">u2")
    if color_type == 6:
        arr.reshape(height, width, 4)[:, :, 3] = 65535
    rows = b"".join(b"\x00" + arr[y].tobytes() for y in range(height))
    return png_raw(width, height, rows, bit_depth=16, color_type=color_type)


def jpeg_with_size(data, width, height):
    """A JPEG whose SOF segment says width x height."""
    pos = 2
    while pos < len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return (data[:pos + 5] + struct.pack(">HH", height, width) + data[pos + 9:])
        pos += 2 + length
    raise ValueError("no SOF segment")


def jpeg_with_segments(data, segments):
    """Insert whole marker segments (bytes starting with 0xFF) right after SOI."""
    return data[:2] + b"".join(segments) + data[2:]


def jpeg_segment(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def gif_with_screen(data, width, height):
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def bmp_header(width, height, bits=24, pixels=b"\x00" * 4):
    """A BITMAPINFOHEADER BMP declaring width x height, followed by a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, len(pixels), 2835, 2835, 0, 0)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels


def tiff(width, height, pixels=b"\x00", loop=False, pages=1):
    """A little-endian grayscale TIFF. ``loop``: the last IFD points back at the first.
    ``pages``: that many IFDs, all sharing the same pixel strip."""
    data_offset = 8
    first_ifd = data_offset + len(pixels) + (len(pixels) & 1)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, data_offset), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, len(pixels))]
    ifd_size = 2 + 12 * len(entries) + 4
    out = [b"II*\x00", struct.pack("<I", first_ifd), pixels, b"\x00" * (len(pixels) & 1)]
    for page in range(pages):
        here = first_ifd + page * ifd_size
        if page + 1 < pages:
            following = here + ifd_size
        else:
            following = first_ifd if loop else 0
        ifd = struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = (struct.pack("<H", value) + b"\x00\x00" if kind == 3
                      else struct.pack("<I", value))
            ifd += struct.pack("<HHI", tag, kind, count) + packed
        out.append(ifd + struct.pack("<I", following))
    return b"".join(out)


def webp_with_canvas(data, width, height):
    """An extended (VP8X) WebP whose canvas says width x height."""
    assert data[12:16] == b"VP8X", data[12:16]
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return data[:24] + size + data[30:]


def exif_loop(orientation=6):
    """EXIF (with the "Exif\\0\\0" prefix) whose IFD0 has an EXIF IFD pointer to itself and a
    next-IFD offset pointing back at IFD0."""
    ifd0 = 8
    entries = [(0x0112, 3, 1, struct.pack("<H", orientation) + b"\x00\x00"),
               (0x8769, 4, 1, struct.pack("<I", ifd0))]
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value
    body += struct.pack("<I", ifd0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", ifd0) + body


def elf_header():
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    rest = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 512, 512, 0x1000)
    return (ident + rest + phdr).ljust(512, b"\x90")


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def flip_middle(data, n=16):
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + n]) + data[mid + n:]


def with_magic(data, magic):
    return magic + data[len(magic):]


def exif_with(orientation=None, description=None):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if description is not None:
        exif[0x010E] = description
    return exif


def oriented_jpeg(orientation):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    return encode(img, "JPEG", quality=90, exif=exif_with(orientation))


# --------------------------------------------------------------------------------- corpus

@functools.lru_cache(maxsize=1)
def corpus():
    """The hostile inputs: a list of (name, bytes, expectation)."""
    rng = np.random.default_rng(20240501)
    pic = blocks()
    good = {
        "jpeg": encode(pic, "JPEG", quality=90),
        "png": encode(pic, "PNG"),
        "gif": encode(pic.quantize(64), "GIF"),
        "webp": encode(pic, "WEBP", quality=90),
        "tiff": encode(pic, "TIFF", compression="tiff_lzw"),
        "bmp": encode(pic, "BMP"),
    }
    out = []

    def add(name, data, expectation):
        out.append((name, bytes(data), expectation))

    # --- not images at all
    add("zero-bytes", b"", "error")
    add("one-nul-byte", b"\x00", "error")
    add("4k-of-nul", bytes(4096), "error")
    add("random-4k", rng.integers(0, 256, 4096, np.uint8).tobytes(), "error")
    add("random-1m", rng.integers(0, 256, 1 << 20, np.uint8).tobytes(), "error")
    add("text", "a photo of a dog, honest\n".encode() * 20, "error")
    add("html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "error")
    add("svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
               b'height="10"><rect width="10" height="10"/></svg>\n', "error")
    add("svg-billion-laughs",
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                   for i in range(1, 10))
        + b']><svg xmlns="http://www.w3.org/2000/svg"><text>&lol9;</text></svg>', "error")
    add("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "error")
    add("eps", EPS, "error")
    add("eps-binary-header", b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 32, len(EPS), 0, 0, 0, 0)
        + b"\xff\xff" + EPS, "error")
    add("zip-holding-a-png", zip_of({"image.png": good["png"]}), "error")
    add("gzip-of-a-png", zlib.compress(good["png"]), "error")
    add("elf-header", elf_header(), "error")
    # image formats Pillow reads but pgvision does not accept
    add("ico", encode(pic, "ICO"), "error")
    add("ppm", encode(pic, "PPM"), "error")
    add("tga", encode(pic, "TGA"), "error")
    add("pcx", encode(pic, "PCX"), "error")
    try:
        add("jpeg2000", encode(pic, "JPEG2000"), "error")
    except (OSError, KeyError):
        pass  # this Pillow has no OpenJPEG

    # --- truncated at several offsets, and corrupted in the middle
    for fmt, data in good.items():
        for label, cut in (("header", 16), ("third", len(data) // 3),
                           ("two-thirds", 2 * len(data) // 3)):
            add(f"{fmt}-truncated-{label}", data[:cut], "error" if label == "header" else "either")
        add(f"{fmt}-truncated-last-byte", data[:-1], "either")
        add(f"{fmt}-flipped-middle", flip_middle(data), "either")
    add("png-bad-ihdr-crc", good["png"][:29] + bytes([good["png"][29] ^ 1]) + good["png"][30:],
        "error")

    # --- wrong magic: one format's body behind another's signature
    add("png-body-jpeg-magic", with_magic(good["png"], b"\xff\xd8\xff\xe0"), "error")
    add("jpeg-body-png-magic", with_magic(good["jpeg"], PNG_MAGIC), "error")
    add("png-body-gif-magic", with_magic(good["png"], b"GIF89a"), "error")
    add("jpeg-body-webp-magic", b"RIFF" + struct.pack("<I", len(good["jpeg"]) + 4) + b"WEBP"
        + good["jpeg"], "error")
    add("random-bmp-magic", b"BM" + rng.integers(0, 256, 2048, np.uint8).tobytes(), "error")
    add("random-tiff-magic", b"II*\x00" + rng.integers(0, 256, 2048, np.uint8).tobytes(), "error")

    # --- decompression bombs: tiny files declaring huge sizes
    add("png-ihdr-100000x100000", png_declaring(100_000, 100_000), "error")
    add("png-ihdr-2147483647-square", png_declaring(2**31 - 1, 2**31 - 1), "error")
    add("png-ihdr-0x1", png_declaring(0, 1), "error")
    add("gif-screen-65535x65535", gif_with_screen(encode(Image.new("P", (1, 1)), "GIF"),
                                                  65535, 65535), "error")
    add("bmp-100000x100000", bmp_header(100_000, 100_000), "error")
    add("bmp-negative-width", bmp_header(-64, 64), "error")
    add("tiff-100000x100000", tiff(100_000, 100_000), "error")
    add("jpeg-sof-65000x65000", jpeg_with_size(encode(Image.new("RGB", (8, 8)), "JPEG"),
                                               65000, 65000), "error")
    anim_webp = encode(Image.new("RGB", (1, 1), (9, 9, 9)), "WEBP", save_all=True, lossless=True,
                       append_images=[Image.new("RGB", (1, 1), (200, 9, 9))], duration=50)
    add("webp-vp8x-canvas-16384x16384", webp_with_canvas(anim_webp, 16384, 16384), "error")
    # ... and declaring sizes just under the pixel limit: memory is allocated, data is short
    add("png-ihdr-near-limit-1-pixel-of-data", png_declaring(NEAR_LIMIT, NEAR_LIMIT), "either")
    add("jpeg-sof-near-limit-8x8-data", jpeg_with_size(encode(Image.new("RGB", (8, 8)), "JPEG"),
                                                       NEAR_LIMIT, NEAR_LIMIT), "either")
    add("bmp-near-limit-4-bytes-of-data", bmp_header(NEAR_LIMIT, NEAR_LIMIT), "either")
    add("gif-screen-near-limit-1x1-frame", gif_with_screen(encode(Image.new("P", (1, 1)), "GIF"),
                                                           NEAR_LIMIT, NEAR_LIMIT), "either")
    add("webp-vp8x-canvas-near-limit-1x1-frames",
        webp_with_canvas(anim_webp, NEAR_LIMIT, NEAR_LIMIT), "either")
    # real, valid images of 49 Mpx that compress to a few hundred KB
    add("png-zero-filled-7000x7000-rgb", png_zero_filled(NEAR_LIMIT, NEAR_LIMIT), "ok")
    add("png-idat-bomb-1x1", PNG_MAGIC
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zeros_zlib(200 << 20, prefix=b"\x00\xff\x00\x00"))
        + png_chunk(b"IEND", b""), "either")
    # zlib bombs in ancillary chunks
    text_bomb = zeros_zlib(200 << 20)
    add("png-ztxt-zlib-bomb", png_with(good["png"], [png_chunk(b"zTXt", b"Comment\x00\x00"
                                                               + text_bomb)]), "either")
    add("png-itxt-zlib-bomb", png_with(good["png"], [png_chunk(
        b"iTXt", b"Comment\x00\x01\x00en\x00\x00" + text_bomb)]), "either")
    add("png-iccp-zlib-bomb", png_with(good["png"], [png_chunk(b"iCCP", b"icc\x00\x00"
                                                               + text_bomb)]), "either")
    add("png-20000-text-chunks", png_with(good["png"], [
        png_chunk(b"tEXt", b"k%d\x00%s" % (i, b"v" * 50)) for i in range(20000)]), "ok")
    # tag-table tricks
    add("tiff-ifd-loop", tiff(8, 8, bytes(64), loop=True), "either")
    add("tiff-5000-pages", tiff(8, 8, bytes(64), pages=5000), "ok")
    add("apng-lying-frame-count", png_with(
        encode(pic, "PNG", save_all=True, append_images=[blocks(seed=2)], duration=50),
        replace={b"acTL": lambda body: struct.pack(">I", 2**31 - 1) + body[4:]}), "either")

    # --- extreme shapes
    add("png-1x20000", encode(noise((1, 20000)), "PNG"), "ok")
    add("png-20000x1", encode(noise((20000, 1)), "PNG"), "ok")
    add("jpeg-1x20000", encode(noise((1, 20000)), "JPEG"), "ok")
    add("png-65535x1", encode(noise((65535, 1), mode="L"), "PNG"), "ok")
    one = Image.new("RGB", (1, 1), (12, 200, 77))
    for fmt, kwargs in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {"lossless": True}),
                        ("BMP", {}), ("TIFF", {})):
        add(f"{fmt.lower()}-1x1", encode(one, fmt, **kwargs), "ok")

    # --- modes and metadata that need care
    add("png-16bit-gray", encode(Image.fromarray(
        rng.integers(0, 65536, (16, 24), dtype=np.uint16))), "ok")
    add("png-16bit-rgb", png_16bit(2), "ok")
    add("png-16bit-rgba", png_16bit(6), "ok")
    add("tiff-16bit-gray", encode(Image.fromarray(
        rng.integers(0, 65536, (16, 24), dtype=np.uint16)), "TIFF"), "ok")
    add("tiff-float", encode(Image.fromarray(rng.random((16, 24), dtype=np.float32), "F"), "TIFF"),
        "ok")
    add("jpeg-cmyk", encode(Image.new("CMYK", (24, 16), (0, 255, 255, 0)), "JPEG"), "ok")
    add("jpeg-grayscale", encode(noise((40, 30), mode="L"), "JPEG"), "ok")
    add("jpeg-progressive", encode(pic, "JPEG", progressive=True), "ok")
    palette = pic.quantize(16)
    palette.info["transparency"] = 0
    add("png-palette-transparent", encode(palette, "PNG"), "ok")
    add("gif-palette-transparent", encode(palette, "GIF", transparency=0), "ok")
    add("webp-lossless-alpha", encode(pic.convert("RGBA"), "WEBP", lossless=True), "ok")
    add("bmp-1bit", encode(pic.convert("1"), "BMP"), "ok")
    frames = [blocks(seed=s).quantize(32) for s in range(3)]
    add("gif-animated", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                               duration=50, loop=0), "ok")
    small = [Image.new("RGB", (16, 16), (i % 256, i // 256 * 60, 0)) for i in range(300)]
    add("gif-300-frames", encode(small[0], "GIF", save_all=True, append_images=small[1:],
                                  duration=10), "ok")
    add("webp-animated", anim_webp, "ok")
    add("tiff-multipage", encode(pic, "TIFF", save_all=True, append_images=[blocks(seed=5)]), "ok")
    for orientation in range(1, 9):
        add(f"jpeg-exif-orientation-{orientation}", oriented_jpeg(orientation), "ok")
    add("jpeg-exif-orientation-99", oriented_jpeg(99), "ok")
    add("jpeg-exif-60k", encode(pic, "JPEG", exif=exif_with(6, "x" * 60_000)), "ok")
    add("jpeg-exif-ifd-loop", jpeg_with_segments(good["jpeg"], [jpeg_segment(0xE1, exif_loop())]),
        "either")
    add("jpeg-exif-garbage", jpeg_with_segments(good["jpeg"], [jpeg_segment(
        0xE1, b"Exif\x00\x00" + rng.integers(0, 256, 4000, np.uint8).tobytes())]), "either")
    add("jpeg-icc-1m", encode(pic, "JPEG", icc_profile=rng.integers(0, 256, 1 << 20,
                                                                    np.uint8).tobytes()), "ok")
    add("png-icc-900k", encode(pic, "PNG", icc_profile=rng.integers(0, 256, 900_000,
                                                                   np.uint8).tobytes()), "ok")
    add("jpeg-5000-comments", jpeg_with_segments(good["jpeg"], [jpeg_segment(0xFE, b"hi")] * 5000),
        "ok")
    # polyglots: an image with something else appended is still that image
    add("png-with-zip-appended", good["png"] + zip_of({"a.txt": b"hello"}), "ok")
    add("jpeg-with-script-in-comment", jpeg_with_segments(good["jpeg"], [jpeg_segment(
        0xFE, b"<?php system($_GET['c']); ?>")]), "ok")
    return out


GOOD = encode(blocks(seed=11), "PNG")

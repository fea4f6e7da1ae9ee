"""Decoding image bytes into an 8-bit RGB Pillow image.

Only the formats a photo collection holds are opened: Pillow can open more (EPS calls out
to Ghostscript, for one), and none of those belong inside a database server.
"""

import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
# The openers of FORMATS, registered here: the first Image.open that finds one of its formats
# unregistered imports every plugin Pillow has: import time and memory for every fresh
# backend (BENCHMARKS.md, section 5), and decoders that have no business in a database server.
from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin,  # noqa: F401
                 TiffImagePlugin, WebPImagePlugin)

from .errors import ImageError, LimitError

# No "MPO": Pillow registers no opener under that name (the JPEG opener returns MPO files),
# and naming it makes Image.open raise KeyError for every non-JPEG input.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# The pixel limit is ours (a GUC); Pillow's own bomb check would raise a different error.
Image.MAX_IMAGE_PIXELS = None


def decode(data, background=(255, 255, 255), max_pixels=DEFAULT_MAX_PIXELS,
           max_bytes=DEFAULT_MAX_BYTES, grey=False, later=None, check=None, reduce_to=None):
    """Decode image bytes to an RGB image, orientation applied, alpha composited on
    ``background`` (with ``background=None``, an image with transparency comes back RGBA).

    With ``grey``, an opaque greyscale image stays one 8-bit channel ("L"): resizing one
    channel instead of three identical ones gives the same pixels for a third of the work.

    Memory: no more than ``BYTES_PER_PIXEL * max_pixels`` bytes (plus a constant) for any
    image; one that would need more is refused before it is decoded (LimitError, 54000).
    ``later(size, bytes_per_pixel)``, if given, is what the caller will need besides the
    returned image (see preprocess.resize_bytes), counted against the same bound.
    ``check``, if given, is called between pieces of a conversion and may raise to stop.
    ``reduce_to``, a side in pixels, lets a JPEG decode at the smallest DCT scale whose
    both sides are still at least that long (the model spec's "decode": "reduced").
    """
    if data is None or len(data) == 0:
        raise ImageError("image is empty", hint="pass the bytes of a JPEG, PNG, GIF, WebP, BMP or TIFF file")
    if max_bytes and len(data) > max_bytes:
        raise LimitError(
            f"image is larger than pgvision.max_image_bytes ({max_bytes}): {len(data)} bytes",
            hint="raise pgvision.max_image_bytes or downscale the image before storing it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(bytes(data)), formats=FORMATS)
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(f"image has no pixels ({width}x{height})")
            if max_pixels and width * height > max_pixels:
                raise LimitError(
                    f"image is larger than pgvision.max_pixels ({max_pixels}): {width}x{height}",
                    hint="raise pgvision.max_pixels or downscale the image before storing it")
            # The first frame (of an animated GIF or WebP, a multi-page TIFF) is the current
            # one after open; asking for n_frames would walk the whole file to count them.
            budget = BYTES_PER_PIXEL * max_pixels + CONSTANT_BYTES if max_pixels else None
            # counted at full size: a progressive JPEG keeps every DCT coefficient of the
            # whole image even when it is decoded at a reduced scale
            _check_budget(budget, width, height, _decode_bytes(img, data))
            if reduce_to and img.format == "JPEG":
                img.draft(img.mode, (reduce_to, reduce_to))
                width, height = img.size
            if img.format == "WEBP":
                method = _orientation(img)
                img = _webp_frame(img)
            else:
                img.load()
                method = _orientation(img)
                # the file's object keeps decoder state for as long as it lives; the frame
                # alone is enough from here on
                img = img._new(img.im)
            size = (height, width) if method in _SWAPS else (width, height)
            out_mode, out_pixel = _output(img, grey, background)
            converted = out_mode != img.mode or "transparency" in img.info or method is not None
            peak = _frame_bytes(img) + (size[0] * size[1] * out_pixel + TILE_BYTES if converted else 0)
            resized = later(size, out_pixel) if later is not None else 0
            _check_budget(budget, width, height, max(peak, size[0] * size[1] * out_pixel + resized))
            return to_rgb(img, background, grey, method, check)
    except (ImageError, LimitError):
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "image format not recognized",
            hint="pgvision reads JPEG, PNG, GIF, WebP, BMP and TIFF") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            struct.error, MemoryError, Image.DecompressionBombError) as e:
        raise ImageError(f"could not decode image: {_reason(e)}") from None


def _reason(e):
    text = str(e).strip() or type(e).__name__
    return text[0].lower() + text[1:].rstrip(".") if text else text


# What decoding, converting and resizing one image may take, per pixel pgvision.max_pixels
# allows: the decoded frame (at most 4 bytes a pixel in Pillow) and one converted frame
# (RGB takes 4 bytes a pixel too) side by side, and no other full-size copy.
BYTES_PER_PIXEL = 8

# Conversions run a piece of this many pixels at a time, so that their temporary copies (an
# RGBA copy, the background, the composite) cost pieces, not frames.
TILE_PIXELS = 1 << 19
TILE_BYTES = 6 * 4 * TILE_PIXELS
# Besides the pixels: pieces, decoders' row buffers, resize weights of an ordinary image.
CONSTANT_BYTES = 32 * 2**20

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS = {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
          Image.Transpose.ROTATE_90}
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _orientation(img):
    """The transposition the EXIF orientation asks for (as ImageOps.exif_transpose reads it)."""
    return _ORIENTATION.get(img.getexif().get(0x0112, 1))


def _pixel_bytes(mode):
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _frame_bytes(img):
    return img.size[0] * img.size[1] * _pixel_bytes(img.mode)


def _output(img, grey, background=(255, 255, 255)):
    """The mode to_rgb gives an image of this mode, and its bytes per pixel."""
    mode = img.mode
    if mode in _WIDE or mode == "F":
        return ("L", 1) if grey else ("RGB", 4)
    if mode in _ALPHA or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        return ("RGB", 4) if background is not None else ("RGBA", 4)
    if grey and mode == "L":
        return "L", 1
    return "RGB", 4


def _decode_bytes(img, data):
    """What decoding the current frame takes before any conversion: the frame and the
    decoder's own buffers (two rows of the widest pixels for the line-based decoders)."""
    width, height = img.size
    pixels = width * height
    extra = 2 * 8 * width
    if img.format == "WEBP":
        extra += 8 * pixels  # libwebp's two canvases, beside the frame (see _webp_frame)
    elif img.format == "JPEG" and _jpeg_buffers_scans(img, data):
        # progressive or multi-scan: libjpeg holds every DCT coefficient (2 bytes a sample)
        hmax = max((c[1] for c in img.layer), default=1)
        vmax = max((c[2] for c in img.layer), default=1)
        for _, h, v, _ in img.layer:
            cw = -(-width * h // hmax)
            ch = -(-height * v // vmax)
            extra += 2 * (-(-cw // 8) * 8) * (-(-ch // 8) * 8)
    elif img.format == "TIFF":
        rows = img.tag_v2.get(278, height) if hasattr(img, "tag_v2") else height
        extra += 4 * width * min(height, max(1, int(rows or height)))
    return _frame_bytes(img) + extra


def _webp_frame(img):
    """The first frame of a WebP file as an image sharing the decoder's copy of its pixels.

    libwebp decodes into a canvas of its own and hands out a copy of it; Pillow's load()
    would decode that copy into a third frame. The same bytes, the frame's raw mode.
    """
    data = img._get_next()[0]
    frame = Image.frombuffer(img.mode, img.size, data, "raw", img.rawmode, 0, 1)
    frame.info = dict(img.info)
    return frame


def _jpeg_buffers_scans(img, data):
    """Whether libjpeg decodes this JPEG in buffered mode: progressive, or several scans."""
    if img.info.get("progressive") or img.info.get("progression"):
        return True
    # the first scan of the image itself: walk the segments (an EXIF thumbnail is a whole
    # JPEG inside APP1, with scans of its own); entropy-coded data never holds FF DA
    data = bytes(data)
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            return data.find(b"\xff\xda", pos + 2) >= 0
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return False


def _check_budget(budget, width, height, needed):
    if budget is not None and needed > budget:
        raise LimitError(
            f"image needs {-(-needed // 2**20)} MB to decode and resize, more than the "
            f"{budget // 2**20} MB that pgvision.max_pixels allows: {width}x{height}",
            hint=f"one image may take {BYTES_PER_PIXEL} bytes per pixel of pgvision.max_pixels; "
                 "store it smaller or as a PNG or baseline JPEG, or raise pgvision.max_pixels")


def to_rgb(img, background=(255, 255, 255), grey=False, transpose=None, check=None):
    """Any Pillow mode to 8-bit RGB (or L, with ``grey``); transparency goes onto ``background``;
    then ``transpose`` (an Image.Transpose), if given.

    Every conversion is pixel by pixel (with the image's range found first), so it runs on
    pieces of the image written into one output frame: the same pixels as converting the
    whole image at once, without its full-size intermediate copies.
    """
    convert = _converter(img, background, grey)
    if convert is None and transpose is None:
        return img
    width, height = img.size
    if width * height <= TILE_PIXELS:
        out = convert(img) if convert is not None else img
        return out.transpose(transpose) if transpose is not None else out
    size = (height, width) if transpose in _SWAPS else (width, height)
    out = None
    for box in _tiles(width, height):
        if check is not None:
            check()
        piece = img.crop(box)
        if convert is not None:
            piece = convert(piece)
        if transpose is not None:
            piece = piece.transpose(transpose)
        if out is None:
            out = Image.new(piece.mode, size)
        out.paste(piece, _moved(box, transpose, width, height))
    return out


def _tiles(width, height):
    tile_width = min(width, TILE_PIXELS)
    rows = max(1, TILE_PIXELS // tile_width)
    for top in range(0, height, rows):
        for left in range(0, width, tile_width):
            yield left, top, min(width, left + tile_width), min(height, top + rows)


def _moved(box, transpose, width, height):
    """Where the piece ``box`` of a width x height image lands once it is transposed."""
    x0, y0, x1, y1 = box
    T = Image.Transpose
    return {
        None: (x0, y0),
        T.FLIP_LEFT_RIGHT: (width - x1, y0),
        T.FLIP_TOP_BOTTOM: (x0, height - y1),
        T.ROTATE_180: (width - x1, height - y1),
        T.ROTATE_90: (y0, width - x1),
        T.ROTATE_270: (height - y1, x0),
        T.TRANSPOSE: (y0, x0),
        T.TRANSVERSE: (height - y1, width - x1),
    }[transpose]


def _converter(img, background, grey):
    """A function converting a piece of ``img`` to the output mode, or None if it is in it."""
    mode = img.mode
    if mode in _WIDE:
        # 16-bit (or 32-bit int) grayscale: scale the full range to 8 bits, don't clip
        top = 65535.0 if mode != "I" else max(65535.0, _float32_max(img))
        factor = np.float32(255.0 / top)

        def wide(piece):
            arr = np.asarray(piece, dtype=np.float32)
            arr *= factor
            np.rint(arr, out=arr)
            np.clip(arr, 0, 255, out=arr)
            return Image.fromarray(arr.astype(np.uint8), "L")
        first = wide
    elif mode == "F":
        unit = _float_unit(img)

        def first(piece):
            arr = np.asarray(piece, dtype=np.float64)
            if unit:
                arr = arr * 255.0
            return Image.fromarray(np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8), "L")
    else:
        first = None
    then = _opaque(img.mode if first is None else "L", img.info if first is None else {},
                   background, grey)
    if first is None:
        return then
    if then is None:
        return first
    return lambda piece: then(first(piece))


def _opaque(mode, info, background, grey):
    if background is None and (mode in _ALPHA or "transparency" in info):
        # kept (a thumbnail's PNG or WebP): straight RGBA
        return None if mode == "RGBA" else lambda piece: piece.convert("RGBA")
    if mode in _ALPHA or (mode in ("P", "L", "RGB", "1") and "transparency" in info):
        def composite(piece):
            rgba = piece.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return composite
    if (grey and mode == "L") or mode == "RGB":
        return None
    return lambda piece: piece.convert("RGB")


def _rows(img):
    """The image's pixels as float64 arrays, a piece at a time."""
    for box in _tiles(*img.size):
        yield np.asarray(img.crop(box), dtype=np.float64)


def _float32_max(img):
    # the maximum of the pixels as float32, as numpy finds it on the whole image
    return max((float(np.asarray(img.crop(box), dtype=np.float32).max(initial=0))
                for box in _tiles(*img.size)), default=0.0)


def _float_unit(img):
    """Whether a float image's values (NaN aside) are all at most 1.0, and there is one."""
    seen = False
    for arr in _rows(img):
        values = arr[~np.isnan(arr)]
        if values.size:
            seen = True
            if values.max() > 1.0:
                return False
    return seen

"""Decoding image bytes into an 8-bit RGB Pillow image.

Only the formats a photo collection holds are opened: Pillow can open more (EPS calls out
to Ghostscript, for one), and none of those belong inside a database server.
"""

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# The openers of FORMATS, registered here: the first Image.open that finds one of its formats
# unregistered imports every plugin Pillow has, 40 modules that cost a fresh backend 50 ms
# and 2 MB, and decoders that have no business in a database server.
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
           max_bytes=DEFAULT_MAX_BYTES, grey=False):
    """Decode image bytes to an RGB image, orientation applied, alpha composited.

    With ``grey``, an opaque greyscale image stays one 8-bit channel ("L"): resizing one
    channel instead of three identical ones gives the same pixels at a third of the cost.
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
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP, multi-page TIFF: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img, background, grey)
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


def to_rgb(img, background=(255, 255, 255), grey=False):
    """Any Pillow mode to 8-bit RGB (or L, with ``grey``); transparency goes onto ``background``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: scale the full range to 8 bits, don't clip.
        # float32 and in place: a 50 Mpx image must not cost several float64 copies
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

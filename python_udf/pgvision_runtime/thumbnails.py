"""Small pictures of stored images, for people and BI tools to look at.

Decoding goes through images.decode, with its bounds (pgvision.max_pixels and
pgvision.max_image_bytes) and its EXIF orientation; a JPEG decodes at the smallest DCT
scale (1/2, 1/4, 1/8) that still covers the thumbnail, so a large photo costs a fraction
of its full decode.
"""

import base64
import io

from PIL import Image

from . import images, preprocess
from .errors import INVALID_PARAMETER_VALUE, PgvisionError

MAX_SIZE = 1024
# format -> (Pillow's name, MIME type, keeps transparency, encoder options)
FORMATS = {
    "jpeg": ("JPEG", "image/jpeg", False, {"quality": 85}),
    "png": ("PNG", "image/png", True, {}),
    "webp": ("WEBP", "image/webp", True, {"quality": 80, "method": 4}),
}
_ALIASES = {"jpg": "jpeg"}
WHITE = (255, 255, 255)


def _format(fmt):
    name = _ALIASES.get(fmt.strip().lower(), fmt.strip().lower()) if fmt is not None else None
    if name not in FORMATS:
        raise PgvisionError(f'unknown thumbnail format "{fmt}"', INVALID_PARAMETER_VALUE,
                            hint="use jpeg, png or webp")
    return name


def check_size(size):
    if size is None or not 1 <= size <= MAX_SIZE:
        raise PgvisionError(f"thumbnail size must be between 1 and {MAX_SIZE}, not {size}",
                            INVALID_PARAMETER_VALUE,
                            hint="size is the longest side of the thumbnail in pixels")


def target(size, longest):
    """The size of a thumbnail of an image of ``size`` whose longest side is ``longest``."""
    w, h = size
    if w >= h:
        return longest, max(1, round(h * longest / w))
    return max(1, round(w * longest / h)), longest


def _resize_spec(size, longest):
    w, h = target(size, longest)
    return {"size": [h, w], "fit": "stretch", "resample": "lanczos"}


def _shown_size(data):
    """The size of the image as shown (orientation applied), before any draft reduction:
    the thumbnail's aspect is the image's, not that of its reduced decode (whose sides
    are rounded up). Only the header is read; decode has checked the bytes already."""
    with Image.open(io.BytesIO(bytes(data)), formats=images.FORMATS) as img:
        w, h = img.size
        return (h, w) if images._orientation(img) in images._SWAPS else (w, h)


def thumbnail(data, size=128, fmt="jpeg", max_pixels=images.DEFAULT_MAX_PIXELS,
              max_bytes=images.DEFAULT_MAX_BYTES, check=None):
    """The image's thumbnail as ``fmt`` bytes (jpeg, png or webp): its longest side
    ``size`` pixels, its aspect kept, EXIF orientation applied; transparency is flattened
    on white for JPEG and kept for PNG and WebP. Same errors as embedding the image."""
    check_size(size)
    name = _format(fmt)
    pil_name, _, keeps_alpha, options = FORMATS[name]
    img = images.decode(data, None if keeps_alpha else WHITE, max_pixels=max_pixels,
                        max_bytes=max_bytes, grey=True, check=check, reduce_to=size,
                        later=lambda s, pixel: preprocess.resize_bytes(s, pixel, _resize_spec(s, size)))
    new = target(_shown_size(data), size)
    if new != img.size:
        # reducing_gap: a box reduction by an integer factor first, then Lanczos over the
        # last factor of at most 3 (as Image.thumbnail does, with its gap of 2)
        img = img.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, pil_name, **options)
    return out.getvalue()


def data_url(data, size=128, fmt="jpeg", **limits):
    """The thumbnail as a data: URL ("data:image/jpeg;base64,...")."""
    name = _format(fmt)
    encoded = base64.b64encode(thumbnail(data, size, name, **limits)).decode("ascii")
    return f"data:{FORMATS[name][1]};base64,{encoded}"

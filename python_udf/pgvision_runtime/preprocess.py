"""Turning a decoded RGB image into the model's input tensor, exactly as the spec says."""

import numpy as np
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# Half the width of each filter's kernel, in input pixels at scale 1 (Pillow's filters).
_SUPPORT = {"nearest": 0, "box": 0.5, "bilinear": 1, "hamming": 1, "bicubic": 2, "lanczos": 3}


def _target(size, spec):
    """The size ``fit`` resizes an image of ``size`` to (before any crop or padding)."""
    height, width = spec["size"]
    w, h = size
    if spec["fit"] == "stretch":
        return width, height
    if spec["fit"] == "center_crop":
        scale = max(width / w, height / h)
        return max(width, round(w * scale)), max(height, round(h * scale))
    scale = min(width / w, height / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_bytes(size, pixel_bytes, spec):
    """An upper bound of the memory ``fit`` takes for an image of ``size`` (besides the image).

    Pillow resizes in two passes, across first: the intermediate image has the new width
    and every row of the old height, more than the image itself when a narrow image gets
    wider. Each pass also keeps its filter weights: a kernel's width of doubles and ints for
    every output pixel along the axis.
    """
    w, h = size
    nw, nh = _target(size, spec)
    if (nw, nh) == (w, h):
        return 0
    support = _SUPPORT[spec["resample"]]
    weights = 0
    if support:
        for old, new in ((w, nw), (h, nh)):
            if old != new:
                weights += (2 * int(support * max(old / new, 1.0) + 1) + 1) * new * 12
    across = nw * h * pixel_bytes if nw != w and nh != h and support else 0
    return across + weights + nw * nh * pixel_bytes


def fit(img, spec):
    """Resize (and crop or pad) to the spec's [height, width]; grey stays grey until to_array."""
    height, width = spec["size"]
    resample = _RESAMPLE[spec["resample"]]
    mode = spec["fit"]
    if mode == "stretch":
        if img.size == (width, height):
            return img
        return img.resize((width, height), resample)
    w, h = img.size
    if mode == "center_crop":
        scale = max(width / w, height / h)
        nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
        img = img.resize((nw, nh), resample)
        left, top = (nw - width) // 2, (nh - height) // 2
        return img.crop((left, top, left + width, top + height))
    # letterbox: the whole image, padded with the background colour
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (width, height), tuple(spec["background"]))
    canvas.paste(img.resize((nw, nh), resample), ((width - nw) // 2, (height - nh) // 2))
    return canvas


_LUTS = {}


def _lookup(spec):
    """Per output channel, the normalised float32 value of each 8-bit input level.

    Computed with the same float32 operations as normalising every pixel would be, so the
    values are bit-identical; a lookup costs a fraction of the arithmetic on 150k floats.
    """
    key = (spec["scale"], tuple(spec["mean"]), tuple(spec["std"]))
    lut = _LUTS.get(key)
    if lut is None:
        levels = np.arange(256, dtype=np.float32)
        mean = np.asarray(spec["mean"], dtype=np.float32)
        std = np.asarray(spec["std"], dtype=np.float32)
        lut = _LUTS[key] = [(levels / np.float32(spec["scale"]) - mean[c]) / std[c]
                            for c in range(3)]
    return lut


def to_array(img, spec):
    """A fitted RGB or L image to a float32 array in the spec's layout (no batch axis)."""
    pixels = np.asarray(img)  # H, W, 3 or, for grey, H, W: every channel reads the same
    lut = _lookup(spec)
    height, width = pixels.shape[:2]
    sources = (2, 1, 0) if spec["color"] == "BGR" else (0, 1, 2)
    if spec["layout"] == "NCHW":
        out = np.empty((3, height, width), dtype=np.float32)
        planes = [out[c] for c in range(3)]
    else:
        out = np.empty((height, width, 3), dtype=np.float32)
        planes = [out[:, :, c] for c in range(3)]
    for c, (plane, src) in enumerate(zip(planes, sources)):
        if pixels.ndim == 2 and c and np.array_equal(lut[c], lut[c - 1]):
            plane[...] = planes[c - 1]  # grey with equal channel constants: a copy will do
        else:
            np.take(lut[c], pixels if pixels.ndim == 2 else pixels[:, :, src], out=plane)
    return out


def prepare(img, spec):
    return to_array(fit(img, spec), spec)

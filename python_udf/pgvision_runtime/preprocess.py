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


def fit(img, spec):
    """Resize (and crop or pad) to the spec's [height, width]."""
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


def to_array(img, spec):
    """A fitted RGB image to a float32 array in the spec's layout (without the batch axis)."""
    pixels = np.asarray(img, dtype=np.float32)  # H, W, 3
    if spec["color"] == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    pixels = (pixels / np.float32(spec["scale"]) - mean) / std
    if spec["layout"] == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def prepare(img, spec):
    return to_array(fit(img, spec), spec)

"""The preprocessing spec stored with each model: how pixels become the model's input.

Example (the default model)::

    {"input": "image", "layout": "NCHW", "size": [224, 224], "resample": "bicubic",
     "fit": "stretch", "color": "RGB", "scale": 255.0, "mean": [0.5, 0.5, 0.5],
     "std": [0.5, 0.5, 0.5], "background": [255, 255, 255],
     "outputs": {"feature": "feature", "logits": "logits"}}
"""

import math

from .errors import ModelError

RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
FITS = ("stretch", "center_crop", "letterbox")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
DECODES = ("full", "reduced")
KNOWN_KEYS = {"input", "layout", "size", "resample", "fit", "color", "scale", "mean", "std",
              "background", "outputs", "decode", "normalize"}
MAX_SIDE = 4096


def _fail(what, hint=None):
    raise ModelError(f"invalid model spec: {what}", hint=hint or
                     "see the spec of the default model: SELECT spec FROM pgvision.models")


def _finite(v):
    """A JSON number that fits a float: huge integers overflow, they are not infinite."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _numbers(spec, key, n, default):
    value = spec.get(key, default)
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
            for v in value):
        _fail(f'"{key}" must be an array of {n} numbers')
    return [float(v) for v in value]


def validate(spec):
    """Check a spec and return it with every default filled in."""
    if not isinstance(spec, dict):
        _fail("expected a JSON object")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        _fail(f'unknown key "{unknown[0]}"', hint="known keys: " + ", ".join(sorted(KNOWN_KEYS)))

    out = {}
    out["input"] = spec.get("input")
    if not isinstance(out["input"], str) or not out["input"]:
        _fail('"input" must name the graph input')

    size = spec.get("size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
                       for v in size)):
        _fail(f'"size" must be [height, width] with each side between 1 and {MAX_SIDE}')
    out["size"] = [int(size[0]), int(size[1])]

    for key, allowed, default in (("layout", LAYOUTS, "NCHW"), ("resample", RESAMPLE, "bicubic"),
                                  ("fit", FITS, "stretch"), ("color", COLORS, "RGB")):
        value = spec.get(key, default)
        if value not in allowed:
            _fail(f'"{key}" must be one of {", ".join(allowed)}, not {value!r}')
        out[key] = value

    scale = spec.get("scale", 255.0)
    if (not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0
            or not _finite(scale)):
        _fail('"scale" must be a positive number')
    out["scale"] = float(scale)
    out["mean"] = _numbers(spec, "mean", 3, [0.0, 0.0, 0.0])
    out["std"] = _numbers(spec, "std", 3, [1.0, 1.0, 1.0])
    if any(s == 0 for s in out["std"]):
        _fail('"std" must not contain 0')
    background = _numbers(spec, "background", 3, [255, 255, 255])
    if any(b < 0 or b > 255 or b != int(b) for b in background):
        _fail('"background" must hold three integers between 0 and 255')
    out["background"] = [int(b) for b in background]

    # "reduced": JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) that still covers
    # the input size (Pillow's draft). Kept out of specs that do not ask for it, so that the
    # stored spec, and with it every existing model, stays as it was.
    if "decode" in spec:
        if spec["decode"] not in DECODES:
            _fail(f'"decode" must be one of {", ".join(DECODES)}, not {spec["decode"]!r}')
        out["decode"] = spec["decode"]

    # true: the feature leaves the model scaled to length 1, so that L2 distance, cosine
    # distance and inner product rank alike. Kept out of specs that do not ask for it.
    if "normalize" in spec:
        if not isinstance(spec["normalize"], bool):
            _fail('"normalize" must be true or false')
        out["normalize"] = spec["normalize"]

    outputs = spec.get("outputs")
    if not isinstance(outputs, dict) or not isinstance(outputs.get("feature"), str):
        _fail('"outputs" must map "feature" (and optionally "logits") to graph output names')
    for key, value in outputs.items():
        if key not in ("feature", "logits"):
            _fail(f'"outputs" has unknown key "{key}"', hint='use "feature" and "logits"')
        if not isinstance(value, str) or not value:
            _fail(f'"outputs"."{key}" must name a graph output')
    out["outputs"] = dict(outputs)
    return out

"""Build the built-in 8-bit models from the float one.

    python models/quantize.py --model-dir DIR [--force]

Reads DIR/efficientnet_lite0.onnx and .json (models/build.py writes them) and writes, with
pgvision_runtime.quantize, the code that pgvision.quantize_model runs in the server:

- DIR/efficientnet_lite0_int8.onnx and .json: every convolution in 8 bits (as released
  in 0.2.0; its bytes never change);
- DIR/efficientnet_lite0_int8_normalized.onnx and .json: the convolution that reads the
  pixels kept in float (quantize_model's default: precision@10 within 0.005 of the float
  model's, BENCHMARKS.md section 6), features of length 1 like the default model's.

Their specs are the float model's with "decode": "reduced": with inference at 8 bits,
decoding is the larger part of a photo's time.

Calibration images come from Debian packages the project installs anyway (scripts/deps.sh):
the photos of `darknet` (people, animals, vehicles, a painting: the mixed, non-square
pictures users search), each also cut four ways so that close-ups and partial views are
seen, and 24 Fashion-MNIST thumbnails of `dataset-fashion-mnist` (small, grey, on black),
which stretch activation ranges differently from photos. The bytes are reproducible; a
stamp skips the work when nothing changed.
"""

from __future__ import annotations

import argparse
import functools
import glob
import gzip
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from build import _sha256_file, _write_atomic  # noqa: E402

SOURCE = "efficientnet_lite0"
# name: (quantize's first_float, spec changes besides "decode": "reduced")
TARGETS = {"efficientnet_lite0_int8": (False, {}),
           "efficientnet_lite0_int8_normalized": (True, {"normalize": True})}
PHOTOS = "/usr/share/darknet/data/*.jpg"
FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
CUTS = ((0, 0, .6, .6), (.4, .4, 1, 1), (.2, 0, .8, .7), (0, .3, .7, 1))
FASHION_IMAGES = 24


@functools.lru_cache(maxsize=None)  # both 8-bit models calibrate on the same images
def calibration_images():
    import numpy as np
    from PIL import Image

    paths = sorted(glob.glob(PHOTOS))
    if not paths:
        raise SystemExit(f"quantize: no calibration photos at {PHOTOS}; run make deps")
    photos = [Image.open(p).convert("RGB") for p in paths]
    images = list(photos)
    for img in photos:
        w, h = img.size
        images += [img.crop((int(a * w), int(b * h), int(c * w), int(d * h)))
                   for a, b, c, d in CUTS]
    with gzip.open(FASHION) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    images += [Image.fromarray(pixels[i]).convert("RGB") for i in range(FASHION_IMAGES)]
    return paths, images


def build(model_dir: str, name: str, force: bool = False):
    import onnxruntime
    from pgvision_runtime import quantize, spec as specs

    first_float, changes = TARGETS[name]
    source = os.path.join(model_dir, SOURCE + ".onnx")
    target = os.path.join(model_dir, name + ".onnx")
    stamp_path = target + ".stamp"
    paths = sorted(glob.glob(PHOTOS))
    key = {"source": _sha256_file(source), "onnxruntime": onnxruntime.__version__,
           "code": [_sha256_file(os.path.join(HERE, "quantize.py")),
                    _sha256_file(quantize.__file__)],
           "photos": [_sha256_file(p) for p in paths], "fashion": _sha256_file(FASHION)}
    if (not force and os.path.exists(target) and os.path.exists(stamp_path)
            and os.path.exists(os.path.join(model_dir, name + ".json"))):
        with open(stamp_path, encoding="utf-8") as f:
            stamp = json.load(f)
        if stamp.get("key") == key and stamp.get("sha256") == _sha256_file(target):
            return target, stamp["sha256"], False
    with open(os.path.join(model_dir, SOURCE + ".json"), encoding="utf-8") as f:
        spec = specs.validate(json.load(f))
    _, images = calibration_images()
    with open(source, "rb") as f:
        data = quantize.quantize(f.read(), spec, quantize.calibration_arrays(images, spec), first_float=first_float)
    sha = hashlib.sha256(data).hexdigest()
    _write_atomic(target, data)
    # the fast model also decodes JPEG at reduced size (BENCHMARKS.md, "INT8 models")
    with open(os.path.join(model_dir, SOURCE + ".json"), encoding="utf-8") as f:
        target_spec = dict(json.load(f), decode="reduced", **changes)
    _write_atomic(os.path.join(model_dir, name + ".json"),
                  (json.dumps(target_spec) + "\n").encode())
    _write_atomic(stamp_path, (json.dumps({"key": key, "sha256": sha}, indent=1,
                                          sort_keys=True) + "\n").encode())
    return target, sha, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build the built-in 8-bit models.")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    for name in TARGETS:
        path, sha, wrote = build(args.model_dir, name, args.force)
        print(f"{'wrote' if wrote else 'up to date:'} {path} "
              f"({os.path.getsize(path)} bytes) sha256={sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

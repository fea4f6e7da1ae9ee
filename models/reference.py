"""Torch reference for EfficientNet-Lite0 (needs torch and efficientnet-lite-pytorch).

Used only by tests and by make_reference_fixture.py; the builder never imports it.

    pip install torch==2.13.0
    pip install efficientnet-lite-pytorch==0.1.0 --no-deps
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


RANDOM_SEED = 0
PHOTOS = {"dog": "/usr/share/darknet/data/dog.jpg", "eagle": "/usr/share/darknet/data/eagle.jpg"}


def random_input() -> np.ndarray:
    """The seeded random input of the reference fixture, [1,3,224,224] float32."""
    return np.random.default_rng(RANDOM_SEED).standard_normal((1, 3, 224, 224), dtype=np.float32)


def load_photo_rgb(path: str) -> np.ndarray:
    """Photo -> uint8 [224,224,3] RGB, as the fixture stores it (PIL bicubic stretch)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.uint8)


def to_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] (or [N,H,W,3]) RGB -> float32 NCHW, (x/255 - 0.5)/0.5."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim == 3:
        rgb = rgb[None]
    x = (rgb.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def load_torch_model(weights_path: str):
    """EfficientNet.from_name('efficientnet-lite0') with the checkpoint loaded, in eval mode."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    # The checkpoint is a legacy (pre-zip) file holding only a state dict of tensors,
    # which the weights-only unpickler accepts.
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


class FeatureAndLogits:
    """Wraps the reference model as ``x -> (feature, logits)`` (also an nn.Module for export)."""

    def __new__(cls, model):
        import torch

        class _Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                f = self.m.extract_features(x)
                f = torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
                return f, self.m._fc(f)

        return _Wrapper(model).eval()


def run_reference(model, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Return (feature [N,1280], logits [N,1000]) as float32 numpy arrays.

    ``feature`` is extract_features + adaptive average pool + flatten, i.e. the input
    of the fc layer; ``logits`` is model(x).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    with torch.no_grad():
        f = model.extract_features(x)
        f = torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
        logits = model(x)
    return f.numpy().astype(np.float32), logits.numpy().astype(np.float32)


def reference_outputs(weights_path: str, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return run_reference(load_torch_model(weights_path), batch)

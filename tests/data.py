"""Test images: Debian's darknet photos and Fashion-MNIST, plus generated variants."""

import gzip
import io
import pathlib
import re

import numpy as np
from PIL import Image

DARKNET = pathlib.Path("/usr/share/darknet/data")
# The runtime folder `make install` fills for the version in the control file.
VERSION = re.search(r"default_version\s*=\s*'([^']+)'", (pathlib.Path(__file__).resolve().parents[1]
                    / "extension" / "pgvision.control").read_text()).group(1)
RUNTIME_MODELS = pathlib.Path("/usr/local/lib/pgvision") / VERSION / "models"
PHOTOS = ["dog", "eagle", "giraffe", "horses", "kite", "person", "scream"]
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot"]


def photo(name):
    return (DARKNET / f"{name}.jpg").read_bytes()


def encode(img, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def fashion(split="train", n=None):
    """(images uint8 [n, 28, 28], labels int [n]) from the idx files."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(count, 28, 28)
    with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(int)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images, labels


def fashion_sample(per_class, split="train"):
    """The first ``per_class`` images of each class, as PNG bytes with their class names."""
    images, labels = fashion(split)
    out = []
    for c in range(10):
        for i in np.flatnonzero(labels == c)[:per_class]:
            out.append((int(i), FASHION_CLASSES[c], encode(Image.fromarray(images[i], "L"))))
    return out

"""The images the demo, the tests and the benchmarks share: Debian's Fashion-MNIST
(package dataset-fashion-mnist) and the sample photos of Debian's darknet package.

Pillow is enough for the demo; ``Fashion.arrays`` imports numpy only when it is called.
"""

import gzip
import io
import pathlib

from PIL import Image

FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot"]
DARKNET = pathlib.Path("/usr/share/darknet/data")
PHOTOS = ["dog", "eagle", "giraffe", "horses", "kite", "person", "scream"]


def photo(name):
    """The JPEG bytes of one darknet photo, e.g. ``photo("dog")``."""
    return (DARKNET / f"{name}.jpg").read_bytes()


def photos():
    """The JPEG bytes of the photos named in PHOTOS, in that order."""
    return [photo(n) for n in PHOTOS]


def encode(img, fmt="PNG", **kwargs):
    """A Pillow image as file bytes (PNG unless told otherwise)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


class Fashion:
    """One split of Fashion-MNIST, ``"train"`` or the test split (any other name), read
    from Debian's idx files: 28x28 8-bit grey images, labels indexing FASHION_CLASSES."""

    def __init__(self, split="train"):
        prefix = "train" if split == "train" else "t10k"
        with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
            self.raw = f.read()
        with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
            self.labels = f.read()[8:]
        self.rows = int.from_bytes(self.raw[8:12], "big")
        self.cols = int.from_bytes(self.raw[12:16], "big")

    def __len__(self):
        return len(self.labels)

    def image(self, i):
        """Image ``i`` as a Pillow image (mode L)."""
        size = self.rows * self.cols
        return Image.frombytes("L", (self.cols, self.rows), self.raw[16 + i * size:16 + (i + 1) * size])

    def png(self, i):
        """Image ``i`` as PNG bytes, as a user would store it."""
        return encode(self.image(i))

    def label(self, i):
        return FASHION_CLASSES[self.labels[i]]

    def balanced(self, per_class, total=None):
        """Indexes of the first ``per_class`` images of each class, in file order, stopping
        at ``total`` indexes when given."""
        taken, out = [0] * len(FASHION_CLASSES), []
        for i, label in enumerate(self.labels):
            if len(out) == total:
                break
            if taken[label] < per_class:
                taken[label] += 1
                out.append(i)
        return out

    def sample(self, per_class):
        """(index, class name, PNG bytes) of the first ``per_class`` images of each class,
        class by class."""
        chosen = sorted(self.balanced(per_class), key=lambda i: self.labels[i])
        return [(i, self.label(i), self.png(i)) for i in chosen]

    def arrays(self, n=None):
        """(images uint8 [n, rows, cols], labels uint8 [n]) as numpy arrays, all when n is None."""
        import numpy as np

        images = np.frombuffer(self.raw, np.uint8, offset=16).reshape(-1, self.rows, self.cols)
        labels = np.frombuffer(self.labels, np.uint8)
        return images[:n], labels[:n]


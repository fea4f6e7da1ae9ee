"""Test images: Debian's darknet photos and Fashion-MNIST (pgvision_client.datasets, which
the demo and the benchmarks read too), plus generated variants."""

import pathlib
import re

from pgvision_client.datasets import DARKNET, FASHION_CLASSES, PHOTOS, Fashion, encode, photo  # noqa: F401

# The runtime folder `make install` fills for the version in the control file.
VERSION = re.search(r"default_version\s*=\s*'([^']+)'", (pathlib.Path(__file__).resolve().parents[1]
                    / "extension" / "pgvision.control").read_text()).group(1)
RUNTIME_MODELS = pathlib.Path("/usr/local/lib/pgvision") / VERSION / "models"


def fashion(split="train", n=None):
    """(images uint8 [n, 28, 28], labels uint8 [n]) of a split, all of it when n is None."""
    return Fashion(split).arrays(n)


def fashion_sample(per_class, split="train"):
    """The first ``per_class`` images of each class, class by class: (index, class, PNG bytes)."""
    return Fashion(split).sample(per_class)

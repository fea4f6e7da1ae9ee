"""Generate imagenet_classes.txt: the 1000 ImageNet-1k class names in model index order.

ImageNet-1k models index their classes by WordNet id in sorted order (n01440764
"tench" is 0).  Debian's darknet package ships the 1k wnids as the first 1000
lines of imagenet.labels.list, with their short names on the same lines of
imagenet.shortnames.list.

    python models/imagenet_classes.py            # rewrite models/imagenet_classes.txt
    python models/imagenet_classes.py --check    # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import os
import sys

DARKNET_DATA = "/usr/share/darknet/data"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "imagenet_classes.txt")


def generate(data_dir: str = DARKNET_DATA) -> str:
    with open(os.path.join(data_dir, "imagenet.labels.list"), encoding="utf-8") as f:
        wnids = [line.strip() for line in f][:1000]
    with open(os.path.join(data_dir, "imagenet.shortnames.list"), encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f][:1000]
    if len(wnids) != 1000 or len(names) != 1000 or len(set(wnids)) != 1000:
        raise ValueError("expected 1000 distinct wnids and 1000 names")
    pairs = sorted(zip(wnids, names))
    labels = [name.strip() for _, name in pairs]
    if labels[0] != "tench" or labels[151] != "Chihuahua":
        raise ValueError(f"unexpected order: 0={labels[0]!r}, 151={labels[151]!r}")
    if any(not n or "\n" in n for n in labels):
        raise ValueError("empty class name")
    return "".join(n + "\n" for n in labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=DARKNET_DATA)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = generate(args.data_dir)
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {args.out} (1000 classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

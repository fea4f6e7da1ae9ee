"""Built-in models that are another built-in's graph with another spec.

    python models/variants.py --model-dir DIR

Writes DIR/NAME.json for each variant, its source's spec with the changes below; `make
install` links NAME.onnx to the source's file in the runtime folder, so the bytes are
shipped once. The sha256 is the source's, the spec makes it another model (a model never
changes under its name; the cache keys sessions by bytes and spec).

- ``*_normalized``: features scaled to length 1 ("normalize": true), so that `<->`, `<=>`
  and `<#>` rank alike and L2 distance ranks as cosine does: +0.007 precision@10 on
  Fashion-MNIST and +0.011 on the photo cut-outs over L2 on the raw feature (BENCHMARKS.md,
  section 4b). The default model of a fresh install. (Its 8-bit counterpart,
  efficientnet_lite0_int8_normalized, is a graph of its own: models/quantize.py.)
"""

import argparse
import json
import os
import pathlib

VARIANTS = {
    "efficientnet_lite0_normalized": ("efficientnet_lite0", {"normalize": True}),
}


def write(model_dir):
    folder = pathlib.Path(model_dir)
    for name, (source, changes) in VARIANTS.items():
        spec = dict(json.loads((folder / f"{source}.json").read_text(encoding="utf-8")), **changes)
        text = json.dumps(spec) + "\n"
        path = folder / f"{name}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != text:  # quick when unchanged
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    args = ap.parse_args(argv)
    write(args.model_dir)
    for name, (source, _) in VARIANTS.items():
        print(f"{name}: {source}'s graph, {name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

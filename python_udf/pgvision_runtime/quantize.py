"""8-bit models: static QDQ quantization of a registered model, calibrated on images.

onnxruntime's own quantization tools do the work: weights int8 per output channel,
activations uint8, ranges from the 99.999th percentile of each activation over the
calibration images (on the built-in's images, min/max ranges, stretched by a few outlying
activations, gave a median feature cosine of 0.976 to the float model, the percentile
0.983). CPUs with VNNI run the int8 convolutions about twice as fast (BENCHMARKS.md,
section 6).
"""

import os
import tempfile

import numpy as np

from . import preprocess
from .errors import ModelError

# More images than this add time, not quality.
MAX_CALIBRATION_IMAGES = 128
MIN_CALIBRATION_IMAGES = 8
# onnxruntime keeps every activation of every image it calibrates on until it folds them
# into its histograms (about 65 MB an image for EfficientNet-Lite0): a few images at a
# time bound that, whatever the number of images.
STRIDE = 4


def _feeds(input_name, arrays):
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        """The inputs, one at a time, in the ranges that strided calibration asks for."""

        def __init__(self):
            self.set_range(0, len(arrays))

        def __len__(self):
            return len(arrays)

        def set_range(self, start_index, end_index):
            self._items = iter(arrays[start_index:end_index])

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {input_name: item[np.newaxis]}

    return Feeds()


def calibration_arrays(images, spec):
    """The model inputs of decoded RGB images, as the model's spec prepares them."""
    return [preprocess.prepare(img, spec) for img in images]


def first_convolutions(onnx_bytes, input_name):
    """The names of the Conv nodes that read the model's input itself."""
    import onnx

    graph = onnx.load_model_from_string(onnx_bytes).graph
    return [n.name for n in graph.node if n.op_type == "Conv" and n.name and input_name in n.input]


def quantize(onnx_bytes, spec, arrays, first_float=True):
    """INT8 QDQ bytes of ``onnx_bytes`` calibrated on ``arrays`` (prepared inputs).

    ``first_float`` keeps the convolutions that read the image itself in float: they see
    the pixels at full resolution, where 8 bits cost most (EfficientNet-Lite0's stem, 3% of
    its work: precision@10 on the photo cut-outs 0.851 with it in 8 bits, 0.874 in float,
    the float model's 0.877; BENCHMARKS.md, section 6). The built-in efficientnet_lite0_int8
    was made without it, and keeps its bytes.

    Deterministic: the same bytes and inputs give the same model.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if len(arrays) < MIN_CALIBRATION_IMAGES:
        raise ModelError(f"calibration gave {len(arrays)} images; at least "
                         f"{MIN_CALIBRATION_IMAGES} are needed",
                         hint="pass a query returning more rows of image bytes")
    with tempfile.TemporaryDirectory(prefix="pgvision-quantize-") as tmp:
        source, target = os.path.join(tmp, "source.onnx"), os.path.join(tmp, "int8.onnx")
        with open(source, "wb") as f:
            f.write(onnx_bytes)
        usable = min(len(arrays), MAX_CALIBRATION_IMAGES) // STRIDE * STRIDE
        try:
            quantize_static(
                source, target, _feeds(spec["input"], arrays[:usable]),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"CalibStridedMinMax": STRIDE},
                nodes_to_exclude=first_convolutions(onnx_bytes, spec["input"]) if first_float else None)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"quantization failed: {reason}") from None
        with open(target, "rb") as f:
            return f.read()

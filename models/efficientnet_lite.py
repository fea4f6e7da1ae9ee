"""EfficientNet-Lite0 as an ONNX graph, built from a PyTorch state dict with numpy + onnx.

The state dict is the one of ``efficientnet_lite_pytorch.EfficientNet.from_name(
'efficientnet-lite0')`` (key names ``_conv_stem.weight``, ``_bn0.*``,
``_blocks.N._expand_conv.weight``, ``_blocks.N._bn0.*``, ``_depthwise_conv``,
``_bn1``, ``_project_conv``, ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``).

Architecture details that matter for parity with the reference implementation:

* activation is ReLU6 (``Clip(0, 6)``), not Swish: the Lite variants drop Swish and SE;
* convolutions use TensorFlow "SAME" padding computed statically for a 224x224 input:
  ``total = max((ceil(i/s) - 1)*s + k - i, 0)``, ``begin = total // 2``,
  ``end = total - begin``.  For stride 2 this is asymmetric (more padding at the
  bottom/right), which a symmetric ``pads`` would get wrong;
* the first and last stages keep their repeat counts (``fix_head_stem``);
* BatchNorm (eps 1e-3) is folded into the preceding convolution in float64;
* a residual Add is present when stride is 1 and the block's input and output
  widths are equal;
* dropout (and drop-connect) are training-only and do not appear.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the lowest IR that carries opset 17; read by every onnxruntime >= 1.14
IMAGE_SIZE = 224
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000

BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


def decode_block_string(s: str) -> Tuple[int, BlockSpec]:
    """'r2_k3_s22_e6_i16_o24' -> (repeats, BlockSpec of the first block of the stage)."""
    opts = {}
    for part in s.split("_"):
        m = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if not m:
            raise ValueError(f"bad block string {s!r}")
        opts[m.group(1)] = m.group(2)
    stride = opts["s"]
    if len(stride) == 2 and stride[0] != stride[1]:
        raise ValueError(f"non-square stride in {s!r}")
    return int(opts["r"]), BlockSpec(
        kernel=int(opts["k"]), stride=int(stride[0]), expand=int(opts["e"]),
        cin=int(opts["i"]), cout=int(opts["o"]))


def block_specs() -> List[BlockSpec]:
    """All 16 MBConv blocks of EfficientNet-Lite0, in order.

    Lite0 has width and depth multipliers of 1.0, so no filter rounding or repeat
    scaling changes anything (and fix_head_stem keeps stages 0 and 6 unscaled anyway).
    """
    out: List[BlockSpec] = []
    for repeats, first in (decode_block_string(s) for s in BLOCK_STRINGS):
        out.append(first)
        for _ in range(repeats - 1):
            out.append(BlockSpec(first.kernel, 1, first.expand, first.cout, first.cout))
    return out


def same_pads(size: int, kernel: int, stride: int) -> Tuple[int, int, int]:
    """TF 'SAME' padding for one spatial dim: (pad_begin, pad_end, output_size)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def expected_shapes() -> Dict[str, Tuple[int, ...]]:
    """Every state-dict tensor the graph uses, with its shape (num_batches_tracked excluded)."""
    shapes: Dict[str, Tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{p}"] = (c,)

    shapes["_conv_stem.weight"] = (STEM_CHANNELS, 3, 3, 3)
    bn("_bn0", STEM_CHANNELS)
    for i, b in enumerate(block_specs()):
        mid = b.cin * b.expand
        p = f"_blocks.{i}"
        if b.expand != 1:
            shapes[f"{p}._expand_conv.weight"] = (mid, b.cin, 1, 1)
            bn(f"{p}._bn0", mid)
        shapes[f"{p}._depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        bn(f"{p}._bn1", mid)
        shapes[f"{p}._project_conv.weight"] = (b.cout, mid, 1, 1)
        bn(f"{p}._bn2", b.cout)
    last = block_specs()[-1].cout
    shapes["_conv_head.weight"] = (HEAD_CHANNELS, last, 1, 1)
    bn("_bn1", HEAD_CHANNELS)
    shapes["_fc.weight"] = (NUM_CLASSES, HEAD_CHANNELS)
    shapes["_fc.bias"] = (NUM_CLASSES,)
    return shapes


def check_state_dict(sd: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``sd`` holds exactly the EfficientNet-Lite0 tensors."""
    want = expected_shapes()
    have = {k for k in sd if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(want) - have)
    extra = sorted(have - set(want))
    if missing or extra:
        raise ValueError(f"state dict does not match EfficientNet-Lite0: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    for k, shape in want.items():
        a = np.asarray(sd[k])
        if tuple(a.shape) != shape:
            raise ValueError(f"{k}: shape {tuple(a.shape)}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{k}: dtype {a.dtype}, expected floating point")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{k}: holds non-finite values")


def fold_bn(weight: np.ndarray, sd: Mapping[str, np.ndarray], bn: str,
            eps: float = BN_EPS) -> Tuple[np.ndarray, np.ndarray]:
    """Fold BatchNorm ``bn`` (inference statistics) into a bias-free conv weight.

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta
      = conv_{w * s}(x) + (beta - mean * s),  s = gamma / sqrt(var + eps)
    Computed in float64, returned as float32.
    """
    w = np.asarray(weight, dtype=np.float64)
    gamma = np.asarray(sd[f"{bn}.weight"], dtype=np.float64)
    beta = np.asarray(sd[f"{bn}.bias"], dtype=np.float64)
    mean = np.asarray(sd[f"{bn}.running_mean"], dtype=np.float64)
    var = np.asarray(sd[f"{bn}.running_var"], dtype=np.float64)
    scale = gamma / np.sqrt(var + eps)
    w_f = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b_f = beta - mean * scale
    return w_f.astype(np.float32), b_f.astype(np.float32)


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._names: set = set()

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv(self, name: str, x: str, w: np.ndarray, b: np.ndarray, stride: int,
             size: int, group: int = 1) -> Tuple[str, int]:
        k = w.shape[-1]
        begin, end, out = same_pads(size, k, stride)
        wn = self.const(f"{name}.weight", w)
        bn = self.const(f"{name}.bias", b)
        y = f"{name}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn], [y], name=name,
            kernel_shape=[k, k], strides=[stride, stride], dilations=[1, 1],
            pads=[begin, begin, end, end], group=group))
        return y, out

    def relu6(self, name: str, x: str) -> str:
        y = f"{name}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [y],
                                           name=f"{name}.relu6"))
        return y


def build_model(sd: Mapping[str, np.ndarray], *, doc_string: str = "",
                metadata: Sequence[Tuple[str, str]] = (), image_size: int = IMAGE_SIZE,
                graph_name: str = "efficientnet_lite0") -> onnx.ModelProto:
    """Build the ONNX model.  Input ``image`` [batch, 3, H, W] float32 (already normalised);
    outputs ``feature`` [batch, 1280] (pooled, pre-fc) and ``logits`` [batch, 1000]."""
    check_state_dict(sd)
    g = _GraphBuilder()
    g.const("relu6.min", np.array(0.0, dtype=np.float32))
    g.const("relu6.max", np.array(6.0, dtype=np.float32))

    size = image_size
    w, b = fold_bn(sd["_conv_stem.weight"], sd, "_bn0")
    x, size = g.conv("stem", "image", w, b, stride=2, size=size)
    x = g.relu6("stem", x)

    for i, spec in enumerate(block_specs()):
        p = f"_blocks.{i}"
        name = f"blocks.{i}"
        inp = x
        if spec.expand != 1:
            w, b = fold_bn(sd[f"{p}._expand_conv.weight"], sd, f"{p}._bn0")
            x, _ = g.conv(f"{name}.expand", x, w, b, stride=1, size=size)
            x = g.relu6(f"{name}.expand", x)
        w, b = fold_bn(sd[f"{p}._depthwise_conv.weight"], sd, f"{p}._bn1")
        x, out_size = g.conv(f"{name}.depthwise", x, w, b, stride=spec.stride, size=size,
                             group=w.shape[0])
        x = g.relu6(f"{name}.depthwise", x)
        w, b = fold_bn(sd[f"{p}._project_conv.weight"], sd, f"{p}._bn2")
        x, _ = g.conv(f"{name}.project", x, w, b, stride=1, size=out_size)
        if spec.stride == 1 and spec.cin == spec.cout:
            y = f"{name}.add"
            g.nodes.append(helper.make_node("Add", [x, inp], [y], name=f"{name}.add"))
            x = y
        size = out_size

    w, b = fold_bn(sd["_conv_head.weight"], sd, "_bn1")
    x, size = g.conv("head", x, w, b, stride=1, size=size)
    x = g.relu6("head", x)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pool"], ["feature"], name="flatten", axis=1))
    fc_w = g.const("fc.weight", np.asarray(sd["_fc.weight"], dtype=np.float32))
    fc_b = g.const("fc.bias", np.asarray(sd["_fc.bias"], dtype=np.float32))
    g.nodes.append(helper.make_node("Gemm", ["feature", fc_w, fc_b], ["logits"], name="fc",
                                    alpha=1.0, beta=1.0, transA=0, transB=1))

    graph = helper.make_graph(
        g.nodes, graph_name,
        inputs=[helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        outputs=[
            helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["batch", HEAD_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name="pgvision-models", producer_version="1", doc_string=doc_string)
    model.model_version = 1
    helper.set_model_props(model, dict(metadata))
    return model

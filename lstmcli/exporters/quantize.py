"""Int8 ONNX models: onnxruntime's own dynamic quantization (onnxruntime.quantization), not ours.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, batch by batch, so it
needs no calibration data. What becomes int8 here:
  * each LSTM operator -> onnxruntime's DynamicQuantizeLSTM (com.microsoft): W and R int8 with one
    scale per gate row (per_channel), the input and the recurrent state quantized at each step, the
    gate products in integer dot products (VNNI where the CPU has it);
  * the word-embedding table and an n-gram bag's table -> 8 bits (onnxruntime picks uint8 with a zero
    point for a Gather), then DequantizeLinear of the rows read. A lookup gains no speed from it, but
    the bag's table is most of an imdb_nbsvm file, and its 8 bits cost next to no accuracy
    (benchmarks/RESULTS.md, "Faster prediction").
What stays float32: the output head (a few hundred weights), and the GRU / RNN operators, for which
onnxruntime has no int8 kernel.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from lstmcli.errors import LstmcliError

# each way to quantize an export: `lstmcli export --quantize` offers its keys
QUANTIZATIONS = {
    "int8": "int8 weights, dynamically quantized activations (onnxruntime's quantize_dynamic)",
}
QUANTIZED_OPS = ("LSTM", "Gather")  # what onnxruntime may rewrite (of Gathers, those of float tables)


@contextlib.contextmanager
def _root_logger_kept():
    """onnxruntime's quantizer logs advice on the root logger and may give it a handler of its own
    (logging.basicConfig), which would then print every later log record twice: its records are
    silenced and the root logger is left as it was found."""
    root = logging.getLogger()
    handlers, level, disabled = root.handlers[:], root.level, logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(disabled)
        root.handlers[:], root.level = handlers, level


def quantize(proto, how: str) -> bytes:
    """The serialized int8 model of ONNX ModelProto `proto`."""
    if how not in QUANTIZATIONS:
        raise LstmcliError(f"unknown --quantize {how!r}; valid: {', '.join(QUANTIZATIONS)}")
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise LstmcliError("--quantize needs onnxruntime: pip install 'lstmcli[export]'") from None
    with tempfile.TemporaryDirectory(prefix="lstmcli-quantize-") as tmp, _root_logger_kept():
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(proto, out, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(QUANTIZED_OPS))
        return out.read_bytes()


def float_recurrent_ops(proto) -> list[str]:
    """The recurrent operators of `proto` that int8 leaves in float32 (onnxruntime has no int8 kernel
    for them): a reason to expect no speed-up."""
    return sorted({n.op_type for n in proto.graph.node if n.op_type in ("GRU", "RNN")})

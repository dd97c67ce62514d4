"""`lstmcli export`: a checkpoint as an ONNX model, (ids, lengths) -> logits, plus a JSON of what it needs.

The graph is written operator by operator from the checkpoint's weights (onnx.helper), not traced by
torch.onnx. Each recurrent layer becomes ONNX's own LSTM / GRU / RNN operator with `sequence_lens`,
which runs every sequence over its real steps only (the backward direction starting from its last real
token, as lstmcli's encoders do) and writes zeros past them, so one model serves any batch size, any
padded width and any mix of lengths with lstmcli's own logits. Tracing, by contrast, records the one
code path the example took. Positions past a length are ignored whatever ids they hold.

Shapes below: B batch, T padded width, E embedding size, H state size, D directions, C classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lstmcli import __version__, checkpoint
from lstmcli.config import to_dict
from lstmcli.data.batches import Truncation
from lstmcli.data.text import PAD_ID, UNK_ID, literal_rules
from lstmcli.errors import LstmcliError
from lstmcli.evaluation.thresholds import stored_thresholds
from lstmcli.exporters.quantize import float_recurrent_ops
from lstmcli.exporters.quantize import quantize as quantize_model
from lstmcli.fsutil import recover_dir, refuse_non_regular, write_bytes, write_json
from lstmcli.models.cells import CELLS, CellKind
from lstmcli.models.ngrams import HASH_MULTIPLIER
from lstmcli.progress import Progress
from lstmcli.runtime.onnx_model import FORMAT, export_name

log = logging.getLogger(__name__)
OPSET = 18  # Reduce* take their axes as an input from 18 on



def _onnx():
    try:
        import onnx
    except ImportError:
        raise LstmcliError("ONNX export needs the onnx package: pip install 'lstmcli[export]'") from None
    return onnx


class _Graph:
    """A growing list of nodes and initializers with fresh names."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self.count = onnx, [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        self.count += 1
        names = [f"{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        # named after its first output, so that onnxruntime's profiles and errors say which node
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names


def _weights(state: dict[str, torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v.detach().float().cpu().numpy()
            for k, v in state.items() if k.startswith(prefix)}


def _recurrent_layer(g: _Graph, w: dict, x: str, lens32: str, cell: CellKind, layer: int,
                     directions: int, hidden: int, peephole: bool) -> tuple[str, str]:
    """x (T, B, In) -> Y (T, D, B, H) and Y_h (D, B, H), one ONNX recurrent operator (the cell's)."""
    def rows(a: np.ndarray) -> np.ndarray:  # PyTorch's gate blocks in ONNX's order
        return np.concatenate([a[i * hidden:(i + 1) * hidden] for i in cell.onnx_gate_order()])
    sfx = ["", "_reverse"][:directions]
    W = np.stack([rows(w[f"weight_ih_l{layer}{s}"]) for s in sfx])  # (D, G*H, In)
    R = np.stack([rows(w[f"weight_hh_l{layer}{s}"]) for s in sfx])  # (D, G*H, H)
    Bias = np.stack([np.concatenate([rows(w[f"bias_ih_l{layer}{s}"]), rows(w[f"bias_hh_l{layer}{s}"])])
                     for s in sfx])  # (D, 2*G*H)
    inputs = [x, g.const(W), g.const(R), g.const(Bias), lens32]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
    if peephole:  # P (D, 3H) in ONNX's order i, o, f
        P = np.stack([np.concatenate([w[f"weight_c{gate}_l{layer}{s}"] for gate in "iof"]) for s in sfx])
        inputs += ["", "", g.const(P)]  # no initial_h, initial_c
    attrs |= dict(cell.onnx_attrs)
    y, y_h = g.op(cell.onnx_op, *inputs, outputs=3 if cell.cell_state else 2, **attrs)[:2]
    return y, y_h


def _pool(g: _Graph, y: str, y_h: str, mask: str, lengths: str, how: str) -> str:
    """The last layer's y (T, D, B, H) with mask (T, 1, B, 1) -> (B, D*H) as models/pooling.py's pool;
    y_h (D, B, H) for 'last'. Pooled per direction first, so that only (D, B, H) is transposed, never
    the whole sequence."""
    if how == "last":
        per_direction = y_h
    elif how == "mean":
        total = g.op("ReduceSum", g.op("Where", mask, y, g.const(0.0)), g.const([0], np.int64), keepdims=0)
        per_direction = g.op("Div", total, g.op("Unsqueeze", g.op("Cast", lengths, to=1),
                                                  g.const([0, 2], np.int64)))  # lengths as (1, B, 1)
    else:
        per_direction = g.op("ReduceMax", g.op("Where", mask, y, g.const(-np.inf)), g.const([0], np.int64),
                             keepdims=0)
    # (D, B, H) -> (B, D, H) -> (B, D*H): forward, then backward, as lstmcli's encoders concatenate
    return g.op("Reshape", g.op("Transpose", per_direction, perm=[1, 0, 2]), g.const([0, -1], np.int64))


def _ngram_rows(g: _Graph, ids: str, lengths: str, width: str, vocab: int, buckets: int) -> str:
    """(B, 2T-1) rows of a bag's table, as models.ngrams.ngram_ids: each real word, then each pair of
    neighbouring real words hashed into vocab + bucket; 0 (<pad>) elsewhere."""
    one = g.const(1, np.int64)
    ax1 = g.const([1], np.int64)
    positions = g.op("Unsqueeze", g.op("Range", g.const(0, np.int64), width, one), g.const([0], np.int64))
    words = g.op("Where", g.op("Less", positions, g.op("Unsqueeze", lengths, ax1)), ids, g.const(0, np.int64))
    left = g.op("Slice", words, g.const([0], np.int64), g.const([-1], np.int64), ax1)
    right = g.op("Slice", words, ax1, g.const([2**62], np.int64), ax1)
    product = g.op("Add", g.op("Mul", left, g.const(HASH_MULTIPLIER, np.int64)), right)
    hashed = g.op("Add", g.op("Mod", product, g.const(buckets, np.int64)), g.const(vocab, np.int64))
    pair_pos = g.op("Slice", positions, g.const([0], np.int64), g.const([-1], np.int64), ax1)
    inside = g.op("Less", pair_pos, g.op("Unsqueeze", g.op("Sub", lengths, one), ax1))
    pairs = g.op("Where", inside, hashed, g.const(0, np.int64))
    return g.op("Concat", words, pairs, axis=1)


def _fasttext_bag(g: _Graph, model, rows: str) -> str:
    """The fasttext bag's logits (B, C): its mean vector (B, dim), <pad> rows (id 0) counting for
    nothing, through its head."""
    w, head = _weights(model.state_dict(), "ngrams."), _weights(model.state_dict(), "ngram_head.")
    ax1 = g.const([1], np.int64)
    real = g.op("Cast", g.op("Not", g.op("Equal", rows, g.const(PAD_ID, np.int64))), to=1)  # (B, 2T-1)
    vectors = g.op("Gather", g.const(w["table.weight"]), rows)  # (B, 2T-1, dim)
    total = g.op("ReduceSum", g.op("Mul", vectors, g.op("Unsqueeze", real, g.const([2], np.int64))), ax1,
                 keepdims=0)
    count = g.op("Max", g.op("ReduceSum", real, ax1, keepdims=1), g.const(1.0))
    vector = g.op("Div", total, count)
    return g.op("Gemm", vector, g.const(head["weight"]), g.const(head["bias"]), transB=1)


def _nbsvm_bag(g: _Graph, model, rows: str) -> str:
    """The NBSVM bag's logits (B, C): each row's repeats dropped (sort descending with TopK, then a row
    equal to its left neighbour becomes <pad>), then the sum of the bag's table over what is left."""
    bag = model.ngrams
    ax1 = g.const([1], np.int64)
    n = g.op("Reshape", g.op("Gather", g.op("Shape", rows), g.const(1, np.int64), axis=0),
             g.const([1], np.int64))
    ranked = g.op("TopK", rows, n, axis=1, largest=1, sorted=1, outputs=2)[0]  # (B, N)
    head = g.op("Slice", ranked, g.const([0], np.int64), ax1, ax1)  # (B, 1)
    later = g.op("Slice", ranked, ax1, g.const([2**62], np.int64), ax1)  # (B, N-1)
    earlier = g.op("Slice", ranked, g.const([0], np.int64), g.const([-1], np.int64), ax1)
    distinct = g.op("Concat", head, g.op("Where", g.op("Equal", later, earlier), g.const(0, np.int64), later),
                    axis=1)
    with torch.no_grad():
        table = bag.table().float().cpu().numpy()  # (F, C), row 0 = 0
    total = g.op("ReduceSum", g.op("Gather", g.const(table), distinct), ax1, keepdims=0)  # (B, C)
    return g.op("Add", total, g.const(bag.bias.detach().float().cpu().numpy()))


# each kind of n-gram bag (models/spec.py's BAGS) as ONNX operators: (graph, model, rows) -> logits (B, C)
BAG_GRAPHS = {"fasttext": _fasttext_bag, "nbsvm": _nbsvm_bag}


def build_onnx(model, vocab_size: int):
    """The ONNX ModelProto of a TextClassifier (eval mode: dropout is the identity)."""
    onnx = _onnx()
    spec, state = model.spec, model.state_dict()
    g = _Graph(onnx)
    ids, lengths = "ids", "lengths"  # (B, T) int64, (B,) int64 >= 1
    width = g.op("Gather", g.op("Shape", ids), g.const(1, np.int64), axis=0)  # T, a scalar
    lens32 = g.op("Cast", lengths, to=6)  # sequence_lens is int32
    x = g.op("Transpose", g.op("Gather", g.const(state["embedding.weight"].float().numpy()), ids),
             perm=[1, 0, 2])  # (T, B, E): ONNX's recurrent operators are time-major
    w = _weights(state, "encoder.rnn.")
    y = ""  # the previous layer's output (T, D, B, H)
    for layer in range(spec.num_layers):
        if layer:  # (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H): the next layer's input
            x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.const([0, 0, -1], np.int64))
        y, y_h = _recurrent_layer(g, w, x, lens32, CELLS[spec.cell], layer, spec.num_directions,
                                  spec.hidden_size, spec.peephole)
    steps = g.op("Range", g.const(0, np.int64), width, g.const(1, np.int64))
    mask = g.op("Unsqueeze", g.op("Less", g.op("Unsqueeze", steps, g.const([1], np.int64)),
                                  g.op("Unsqueeze", lengths, g.const([0], np.int64))),
                g.const([1, 3], np.int64))  # (T, 1, B, 1): real positions
    pooled = _pool(g, y, y_h, mask, lengths, spec.pooling)
    head = _weights(state, "head.")
    logits = g.op("Gemm", pooled, g.const(head["weight"]), g.const(head["bias"]), transB=1)
    weights = state["branch_weights"].float().numpy()  # (P,) the branches' weights (calibration.py)
    logits = g.op("Mul", logits, g.const(weights[0]))
    if spec.ngram_buckets:
        rows = _ngram_rows(g, ids, lengths, width, vocab_size, spec.ngram_buckets)
        bag = BAG_GRAPHS[spec.ngram_bag](g, model, rows)
        logits = g.op("Add", logits, g.op("Mul", bag, g.const(weights[1])))
    g.nodes.append(onnx.helper.make_node("Identity", [logits], ["logits"]))
    T = onnx.TensorProto
    graph = onnx.helper.make_graph(
        g.nodes, "lstmcli", [onnx.helper.make_tensor_value_info("ids", T.INT64, ["batch", "time"]),
                             onnx.helper.make_tensor_value_info("lengths", T.INT64, ["batch"])],
        [onnx.helper.make_tensor_value_info("logits", T.FLOAT, ["batch", spec.num_classes])], g.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="lstmcli", producer_version=__version__)
    proto.ir_version = 8  # understood by onnxruntime 1.14 and newer
    onnx.checker.check_model(proto, full_check=True)
    return proto


def sidecar(ck, quantize: str | None = None) -> dict:
    """What a program needs besides the .onnx file: text -> inputs (tokenizer, vocabulary, cut), logits ->
    labels; and a digest of the checkpoint it was made from (`lstmcli predict` runs an export found in
    a checkpoint folder only while the folder's files still have that digest). A multi-label model's
    logits are each label's log-odds: "multi_label" says so, "thresholds" holds each label's fitted
    decision threshold on sigmoid(logit)."""
    data = ck.config.data
    multi = {}
    if data.multi_label:
        multi = {"multi_label": True, "thresholds": dict(zip(
            ck.label_names, stored_thresholds(ck.metrics.get("thresholds"), ck.label_names,
                                              str(ck.path / "metrics.json")), strict=True))}
    probabilities = "a sigmoid per label gives" if data.multi_label else "softmax gives"
    return {"format": FORMAT, "lstmcli": __version__, "quantize": quantize, **multi,
            "checkpoint": {"sha256": checkpoint.files_digest(ck.path), "config": to_dict(ck.config)},
            "inputs": {"ids": "int64 (batch, time): token ids, 0 (<pad>) past each length",
                       "lengths": "int64 (batch,): tokens per text, >= 1"},
            "outputs": {"logits": f"float32 (batch, classes): {probabilities} probabilities"},
            "labels": ck.label_names,
            "tokenizer": {"name": "basic_english", "lowercase": True, "replace": literal_rules(),
                          "then": "split on whitespace"},
            # as `predict` and Classifier.encode cut: the training cut, else DEFAULT_MAX_LENGTH tokens
            "cut": {"max_length": Truncation.for_inference(data).length, "truncate": data.truncate.value},
            "pad_id": PAD_ID, "unk_id": UNK_ID, "empty_text": [UNK_ID], "vocab": ck.vocab.itos}


def _refuse_to_replace(targets: list[Path], checkpoint_dir: Path, force: bool) -> None:
    """Refuse targets lstmcli must not write over: anything that is not a regular file (fsutil), a file
    of the checkpoint being exported, and, unless `force`, any file that exists."""
    own = (*checkpoint.FILES, "metrics.json", "trainer_state.pt")
    ck_files = {(checkpoint_dir / f).resolve() for f in own}
    for target in targets:
        refuse_non_regular(target, "export writes regular files only: choose another --out")
        if target.exists() and target.resolve() in ck_files:
            raise LstmcliError(f"{target} is a file of the checkpoint {checkpoint_dir}; choose an --out "
                               "outside it")
        if target.exists() and not force:
            raise LstmcliError(f"{target} exists; add --force to replace it, or choose another --out")


def export(checkpoint_dir: Path, out: Path | None = None, force: bool = False,
           quantize: str | None = None) -> tuple[Path, Path]:
    """Write `out` (the ONNX model; default: model.onnx, or model.int8.onnx, in the checkpoint folder) and
    `out` with suffix .json (labels, vocabulary, tokenizer, cut), each atomically; neither may exist
    unless `force` (and neither may be anything but a regular file). `quantize`: a key of
    quantize.QUANTIZATIONS, e.g. int8."""
    if out is not None and Path(out).name in ("", ".", ".."):  # (a folder: refused below)
        raise LstmcliError(f"--out {str(out)!r}: give a file name, e.g. {Path(out) / export_name(quantize)}")
    checkpoint_dir = checkpoint.resolve(Path(checkpoint_dir))
    out = Path(out) if out is not None else checkpoint_dir / export_name(quantize)
    if out.suffix == ".json":
        raise LstmcliError(f"--out {out}: the model's JSON goes beside it under that name; give the model "
                           "file another suffix, e.g. .onnx")
    meta = out.with_suffix(".json")
    recover_dir(checkpoint_dir)  # a swap cut short: its files are the checkpoint's, to be protected
    _refuse_to_replace([out, meta], checkpoint_dir, force)
    with Progress("exporting to ONNX", 3, unit="steps") as progress:
        ck = checkpoint.load(checkpoint_dir, "cpu", precision="fp32")  # an exported model runs in float32
        progress.update(1)
        proto = build_onnx(ck.model, len(ck.vocab))
        if quantize:
            if left := float_recurrent_ops(proto):
                log.warning("onnxruntime has no int8 %s operator: only the embedding is int8, and the model "
                            "will run no faster than in float32", "/".join(left))
            data = quantize_model(proto, quantize)
        else:
            data = proto.SerializeToString()
        progress.update(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(out, data)
        write_json(meta, sidecar(ck, quantize))
        progress.update(1)
    return out, meta

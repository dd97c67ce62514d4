"""The recurrent cells, one row each: every part of lstmcli that depends on the cell kind reads it here.

The config's `cell` choices, PyTorch's module and kernel (builtin.py), the scratch encoder's layer
(scratch.py), the ONNX operator with its gate order (export/onnx.py), parameter counts (spec.py, the
memory estimate) and FLOPs per token (`lstmcli bench`) all come from CELLS.

This file imports nothing, not even torch, so that reading a config does not load torch: torch's
classes and functions are named here and looked up by the modules that run them.

A new cell kind is a row here, a layer of its own in recurrence.py (Python loops; C++ ones in
runtime/native/recurrence.cpp if it needs speed), and the ScratchRNN method its row names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellKind:
    name: str
    about: str  # one line for --help
    gates: tuple[str, ...]  # PyTorch's blocks of weight rows, in its order: each is hidden_size rows
    onnx_gates: tuple[str, ...]  # the same blocks in the order of ONNX's operator
    torch_module: str  # the torch.nn class builtin wraps; its state_dict names are the checkpoint's
    torch_kernel: str  # the torch function that module calls for one layer (builtin's padded runs)
    scratch_layer: str  # the ScratchRNN method that runs one layer of it (models/scratch.py)
    onnx_op: str
    onnx_attrs: tuple[tuple[str, int], ...] = ()  # extra attributes of the ONNX operator
    cell_state: bool = False  # carries a cell state c beside h (torch returns (h, c))
    peephole: bool = False  # can have peephole connections (scratch only)
    # the gate order the scratch kernels keep, where it is not PyTorch's (the LSTM's: its three
    # sigmoids side by side, then tanh's block)
    scratch_gates: tuple[str, ...] = ()
    # impl `auto` picks scratch for it on a CPU in fp32: its C++ loops beat PyTorch's there
    # (benchmarks/RESULTS.md, "Scratch kernels against PyTorch's"); otherwise builtin
    auto_scratch: bool = False

    @property
    def gate_count(self) -> int:
        """Weight rows per unit of state: W_ih is (gate_count * H, input), W_hh (gate_count * H, H)."""
        return len(self.gates)

    def onnx_gate_order(self) -> list[int]:
        """For each of ONNX's gate blocks, the index of the same block in PyTorch's order."""
        return [self.gates.index(g) for g in self.onnx_gates]

    def scratch_gate_order(self) -> list[int]:
        """For each of the scratch kernels' gate blocks, the index of the same block in PyTorch's order."""
        return [self.gates.index(g) for g in self.scratch_gates or self.gates]

    def flops_per_token(self, input_size: int, hidden_size: int) -> int:
        """Matrix-multiply FLOPs of one direction of one layer per token, forward: the input product
        2·G·H·I and the recurrent one 2·G·H·H (gate arithmetic is a few FLOPs per unit against these)."""
        return 2 * self.gate_count * hidden_size * (input_size + hidden_size)


CELLS: dict[str, CellKind] = {c.name: c for c in (
    # PyTorch's LSTM rows are (i, f, g, o); ONNX's are (i, o, f, c), its c being PyTorch's g
    CellKind("lstm", "long short-term memory (Hochreiter & Schmidhuber 1997)", ("i", "f", "g", "o"),
         ("i", "o", "f", "g"), "LSTM", "lstm", "lstm_layer", "LSTM", cell_state=True, peephole=True,
         scratch_gates=("o", "i", "f", "g"), auto_scratch=True),
    # GRU: PyTorch (r, z, n), ONNX (z, r, h); PyTorch applies r after the recurrent product
    CellKind("gru", "gated recurrent unit (Cho et al. 2014)", ("r", "z", "n"), ("z", "r", "n"), "GRU", "gru",
         "gru_layer", "GRU", onnx_attrs=(("linear_before_reset", 1),)),
    CellKind("rnn", "Elman RNN with tanh", ("h",), ("h",), "RNN", "rnn_tanh", "rnn_layer", "RNN"),
)}

"""Runtime: how and where a model computes.

device.py (which device), plan.py (one decision of impl and precision per run, and the model built
from it; a training run's launch), precision.py (bf16 support per device), distributed.py (torchrun),
memory.py (what a run will need against what the machine has), process.py (the CPU settings only
callers turn on), native/ (the scratch kernels' C++ build), bench.py (`lstmcli bench`), onnx_model.py
(an exported model in an onnxruntime session).
"""

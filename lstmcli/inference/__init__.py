"""Using a checkpoint: predict.py's Classifier (texts -> labels and probabilities) on the backend
backends.py chooses (PyTorch, or an export in onnxruntime: runtime/onnx_model.py); stream.py reads texts
from a pipe or file in micro-batches as they come; tables.py writes a CSV/TSV/JSONL file's rows back with
the prediction added."""

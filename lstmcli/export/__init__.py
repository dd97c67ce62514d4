"""Export formats: a checkpoint as a model that runs without lstmcli, one module per format (onnx.py)."""

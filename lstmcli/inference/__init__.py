"""Inference: a loaded checkpoint that classifies texts (predict.py's Classifier, `lstmcli.load`)."""

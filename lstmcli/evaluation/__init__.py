"""Evaluation: metrics of a model on a split (evaluate.py), the metrics themselves (metrics.py) and
the pictures drawn from them (plots.py). Computes and returns; never imports training."""

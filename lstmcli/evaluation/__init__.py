"""Evaluation: metrics of a model on a split (evaluate.py), the metrics themselves (metrics.py) and
the pictures drawn from them into the files a caller names (plots.py). evaluate.py and metrics.py
return reports and write none; nothing here imports training."""

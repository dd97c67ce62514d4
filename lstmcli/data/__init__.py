"""Data: from a dataset's name or a user's file to padded batches of ids.

registry.py (the built-in datasets, one table), download.py and transfer.py (fetching under checks and
time limits), readers.py (file formats), splits.py (seeded train/val/test), text.py (tokenizer and
vocabulary), encode.py (ids, cached), batches.py (bucketing, truncation, collate), embeddings.py
(pretrained vectors). Imports config, errors and fsutil from below; nothing from runtime or above.
"""

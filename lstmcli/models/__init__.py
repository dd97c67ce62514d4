"""Models: torch only, no I/O.

cells.py (the recurrent cells, one table) and spec.py (ModelSpec and the tables of the other choices)
import nothing, not even torch, so that the config layer can read them. classifier.py (TextClassifier),
builtin.py (nn.LSTM/GRU/RNN with exact padded runs), scratch.py (our encoders, the equations),
recurrence.py (their autograd Functions and Python time loops), ngrams.py (the n-gram bags beside the
encoder), pooling.py, lengths.py (within-length reversal, last real position). Nothing is imported
here, so that `lstmcli.models.spec` stays free of torch.
"""

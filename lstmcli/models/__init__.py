"""Models: torch only, no I/O.

spec.py (ModelSpec, imports nothing), classifier.py (TextClassifier, pooling), ngrams.py (the n-gram
bags beside the encoder: fastText's mean, NBSVM), builtin.py (nn.LSTM/GRU/RNN with exact padded runs),
scratch.py (our encoders, the equations), recurrence.py (their autograd Functions and Python time
loops), lengths.py (within-length reversal, last real position). Nothing is imported here, so that
`lstmcli.models.spec` stays free of torch for the config layer.
"""

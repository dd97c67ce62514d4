"""Training: a run from its folder to a calibrated, tested best/.

setup.py (start or reopen a Run), fit.py (the epochs and each training step), state.py (what resume
needs; Ctrl-C handling), schedule.py (optimizer and learning rate), class_weights.py (the loss's
label weights), ngram_counts.py (an NBSVM bag's counts), calibration.py (branch weights fitted on
val), rundir.py (the run folder, its lock and `latest`), progress.py and tensorboard.py (what a
person sees while it runs).
"""

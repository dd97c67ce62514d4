"""`lstmcli tune`: a hyperparameter search over a run's config with Optuna (the `tune` extra).

- space.py: the search space, its `[tune]` table and DEFAULT_SPACE
- settings.py: a tune's settings and tune.json, --budget's durations, --storage's URLs
- study.py: the tune folder, the study in its database, the search under a budget, resume
- trial.py: one trial: its config, its training, how it ended
- outputs.py, results.py: the trials table, best.toml, the pictures, the test of the best trial, the
  summary

Optuna is imported inside the functions that use it (study.require says when it is missing).
"""

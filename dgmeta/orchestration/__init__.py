"""Declarative pipelines, sweeps, champion/challenger retraining and their schedules.

* ``spec.py``: the YAML pipeline schema (``load_pipeline``) and its conversion to a ``RunConfig``.
* ``stages.py``: ``run_pipeline`` runs the stages a spec names (train, evaluate, fewshot, register).
* ``sweep.py``: hyperparameter grids / random draws x seeds x targets, resumable and parallel.
* ``retrain.py``: train a challenger, compare it with the registered champion, promote or not.
* ``schedule.py``: cron / systemd-timer entries that call ``dgmeta retrain`` periodically.
* ``locks.py``: a non-blocking file lock so two retraining jobs of one pipeline never overlap.
"""

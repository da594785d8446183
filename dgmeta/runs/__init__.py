"""Run orchestration, above ``meta/`` and ``training/``: a run's configuration (``config``), its
plan and up-front checks (``plan``), each (target, seed) job (``job``), what it logs and saves
(``artifacts``), resuming (``resume``), the whole command (``experiment``) and the few-shot stage."""

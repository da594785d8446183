"""Guards: a diverging run stops with a precise message and keeps its last good checkpoint; weights
that became non-finite are never checkpointed; a run still alive cannot be resumed twice; two
runs can share one SQLite tracking store."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from dgmeta.errors import TrainingError
from dgmeta.hparams import default_hparams
from dgmeta.learners import LearnerContext, create_learner
from dgmeta.models import create_network
from dgmeta.training.checkpointing import RunFolder
from dgmeta.training.stepper import StageStepper
from dgmeta.training.trainer import BatchSource, Trainer
from tests.helpers import make_folder_dataset
from tests.test_resume import one_thread, subprocess_env, tiny_job_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "24", "--batch-size", "8", "--split", "random", "--quiet"]


@pytest.fixture
def toy(tmp_path):
    return make_folder_dataset(tmp_path / "toy", per_class=8)


def runs_by_role(client: MlflowClient, role: str) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`dgmeta.role` = '{role}'")


def test_divergence_stops_with_the_step_term_and_learner_and_keeps_the_last_good_checkpoint(toy, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", f"folder:{toy}", "--base", "erm", "--target", "d2", "--steps", "20", "--eval-every", "10",
              "--checkpoint-every", "1", "--set", "lr=1e6", "--tracking-uri", uri, *TINY])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"error: non-finite loss at step (\d+): term 'cls' of stage 'main' in learner 'erm' — lower --set lr=\.\.\. "
        r"or enable --set grad_clip=1\.0; the last good checkpoint is kept \(the one after step (\d+)\)",
        err,
    )
    assert match, err
    failed_step, kept_step = int(match[1]), int(match[2])
    assert kept_step == failed_step - 1 >= 1

    (checkpoint,) = (tmp_path / "runs").glob("*/*/d2-s0/checkpoint.pt")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert payload["meta"]["step"] == payload["state"]["step"] == kept_step
    assert all(torch.isfinite(t).all() for t in payload["state"]["learner"].values() if t.is_floating_point())

    client = MlflowClient(tracking_uri=uri)
    (child,) = runs_by_role(client, "child")
    (parent,) = runs_by_role(client, "parent")
    assert child.info.status == parent.info.status == "FAILED"
    assert "non-finite loss" in child.data.tags["dgmeta.error"]
    # the metrics of the good steps stay
    assert {m.step for m in client.get_metric_history(child.info.run_id, "train.loss")} == set(range(1, failed_step))


class PoisoningStepper(StageStepper):
    """A plain stepper whose step number ``poison_at`` leaves an inf weight behind a finite loss."""

    def __init__(self, learner, hparams, total_steps, poison_at: int):
        super().__init__(learner, hparams, total_steps)
        self.poison_at = poison_at

    def step(self, batch, progress=None):
        logs = super().step(batch, progress)
        if self.step_count == self.poison_at:
            with torch.no_grad():
                param = next(self.learner.parameters())
                param[(0,) * param.dim()] = float("inf")
        return logs


def test_non_finite_weights_are_never_checkpointed():
    data = tiny_job_data()
    hparams = default_hparams("erm")
    learner = create_learner("erm", create_network("test_resnet", 2, "none"), LearnerContext(2, 2, "dg", 10), hparams)
    written: list[int] = []
    trainer = Trainer(
        learner, PoisoningStepper(learner, hparams, 10, poison_at=6), data, BatchSource(data, 4, 0, augment=False),
        steps=10, eval_every=100, progress=False, checkpoint_every=2, on_checkpoint=lambda step, state: written.append(step),
    )
    with pytest.raises(TrainingError, match=r"non-finite parameter '.+' after step 6 in learner 'erm'") as raised:
        trainer.fit()
    assert written == [2, 4], "the poisoned state after step 6 was not handed over"
    assert "the last good checkpoint (step 4) is kept" in raised.value.one_line()


def test_resuming_a_run_that_is_still_running_is_refused(toy, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    argv = ["run", f"folder:{toy}", "--base", "erm", "--target", "d2", "--steps", "2", "--eval-every", "2", "--tracking-uri", uri, *TINY]
    main(argv)
    client = MlflowClient(tracking_uri=uri)
    (parent,) = runs_by_role(client, "parent")
    config_hash = parent.data.tags["dgmeta.config_hash"]
    with RunFolder(tmp_path / "runs", config_hash, parent.info.run_id).lock():  # as if another process were training it
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--resume", parent.info.run_id])
    assert exit_info.value.code == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: run {parent.info.run_id} is already running (pid ") and "Traceback" not in err
    assert client.get_run(parent.info.run_id).info.status == "FINISHED", "the refused resume changed nothing"


@pytest.mark.slow
def test_two_runs_write_to_one_new_sqlite_store_at_once(toy, tmp_path):
    store = tmp_path / "shared.db"
    commands = [
        [sys.executable, "-m", "dgmeta", "run", f"folder:{toy}", "--base", "erm", "--target", "d2", "--steps", "6",
         "--eval-every", "3", "--seed", str(seed), "--experiment", "shared", "--tracking-uri", f"sqlite:///{store}", *TINY]
        for seed in (0, 1)
    ]
    processes = [
        subprocess.Popen(c, env=subprocess_env(tmp_path / f"cache{i}"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, c in enumerate(commands)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert len(client.search_experiments()) == 2  # "Default" and "shared": created once
    children = runs_by_role(client, "child")
    assert sorted(r.data.tags["dgmeta.seed"] for r in children) == ["0", "1"]
    for run in children + runs_by_role(client, "parent"):
        assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "train.loss")) == 6


def test_the_foreign_store_check_waits_for_a_store_another_run_is_creating(tmp_path):
    """A half-created MLflow store (some tables, not yet ``experiments``) is not another application's:
    the check waits for the run that holds the store's setup lock."""
    import sqlite3
    import threading

    from dgmeta.tracking.mlflow_run import _refuse_foreign_database, _store_setup_lock

    db = tmp_path / "store.db"
    errors: list[BaseException] = []

    def check():
        try:
            _refuse_foreign_database(db)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            errors.append(exc)

    with _store_setup_lock(f"sqlite:///{db}"):
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE metrics (key TEXT)")
        checker = threading.Thread(target=check)
        checker.start()
        checker.join(0.5)
        assert checker.is_alive(), "the check read the store while its setup lock was held"
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE experiments (name TEXT)")
            connection.execute("CREATE TABLE alembic_version (version_num TEXT)")
    checker.join(10)
    assert not checker.is_alive() and errors == []
    with sqlite3.connect(tmp_path / "app.db") as connection:  # a finished foreign database is still refused
        connection.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(Exception, match="another application"):
        _refuse_foreign_database(tmp_path / "app.db")

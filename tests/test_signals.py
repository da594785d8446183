"""SIGINT/SIGTERM: finish the step, write a checkpoint, mark the runs KILLED, exit 130/143, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from dgmeta.training.signals import RunInterrupted, StopRequests, stop_signals
from tests.helpers import make_folder_dataset
from tests.test_resume import checkpoint_step, one_thread, subprocess_env, wait_for_checkpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "24", "--batch-size", "8", "--split", "random", "--quiet"]


def runs_by_role(client: MlflowClient, role: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`dgmeta.role` = '{role}'")


def test_a_deferred_stop_waits_for_the_step_and_a_second_signal_does_not():
    stop = StopRequests()
    with pytest.raises(RunInterrupted) as outside:
        stop.handle(signal.SIGTERM)  # no step to finish: stop now
    assert outside.value.exit_code == 143
    with stop.deferred():
        stop.handle(signal.SIGINT)  # recorded only
        assert stop.requested
        with pytest.raises(RunInterrupted) as again:
            stop.handle(signal.SIGINT)
        assert again.value.exit_code == 130
        with pytest.raises(RunInterrupted, match="interrupted by SIGINT after step 4, checkpoint written") as raised:
            stop.raise_if_requested(4, checkpointed=True)
        assert raised.value.exit_code == 130


def test_handlers_are_restored_after_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.handle
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_sigterm_checkpoints_marks_killed_and_exits_143(tmp_path):
    dataset = make_folder_dataset(tmp_path / "toy", per_class=8)
    store = tmp_path / "mlruns.db"
    command = [
        sys.executable, "-m", "dgmeta", "run", f"folder:{dataset}", "--base", "erm", "--target", "d2", "--steps", "400",
        "--eval-every", "200", "--checkpoint-every", "3", "--tracking-uri", f"sqlite:///{store}", *TINY,
    ]
    process = subprocess.Popen(command, env=subprocess_env(tmp_path / "cache"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        checkpoint, _ = wait_for_checkpoint(process, tmp_path / "runs", min_step=3)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (parent,) = runs_by_role(client, "parent")
    (child,) = runs_by_role(client, "child")
    step = checkpoint_step(checkpoint)
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"error: interrupted by SIGTERM after step {step}, checkpoint written — "
        f"continue with the same command plus --resume {parent.info.run_id}"
    )
    assert step < 400, "the run stopped early, at the step it was in"
    for run in (parent, child):
        assert run.info.status == "KILLED" and run.data.tags["dgmeta.error"] == "interrupted"
    # every step up to the checkpoint reached the store before the process ended
    assert {m.step for m in client.get_metric_history(child.info.run_id, "train.loss")} == set(range(1, step + 1))


@pytest.mark.slow
def test_sigint_then_resume_auto_skips_finished_jobs(tmp_path, capsys):
    dataset = make_folder_dataset(tmp_path / "toy", per_class=8)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    argv = ["run", f"folder:{dataset}", "--base", "erm", "--target", "d1", "--target", "d2", "--steps", "20",
            "--eval-every", "10", "--checkpoint-every", "2", "--tracking-uri", uri, *TINY]
    runs = tmp_path / "runs"
    finished = threading.Event()

    def interrupt_during_d2() -> None:  # Ctrl-C once the second job has written a checkpoint
        while not finished.wait(0.01):
            if any(checkpoint_step(p) for p in runs.glob("*/*/d2-s0/checkpoint.pt")):
                os.kill(os.getpid(), signal.SIGINT)
                return

    watcher = threading.Thread(target=interrupt_during_d2, daemon=True)
    watcher.start()
    try:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
    finally:
        finished.set()
        watcher.join()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT after step" in err and "Traceback" not in err

    client = MlflowClient(tracking_uri=uri)
    children = {r.data.tags["dgmeta.target"]: r for r in runs_by_role(client, "child")}
    assert children["d1"].info.status == "FINISHED" and children["d2"].info.status == "KILLED"
    (d2_checkpoint,) = runs.glob("*/*/d2-s0/checkpoint.pt")
    stopped_at = checkpoint_step(d2_checkpoint)
    d1_losses = client.get_metric_history(children["d1"].info.run_id, "train.loss")

    main(argv + ["--resume", "auto"])
    assert "MLflow parent run" in capsys.readouterr().out
    (parent,) = runs_by_role(client, "parent")
    assert parent.info.status == "FINISHED" and "test_acc" in parent.data.metrics
    after = {r.data.tags["dgmeta.target"]: r for r in runs_by_role(client, "child")}
    assert set(after) == {"d1", "d2"} and len(runs_by_role(client, "child")) == 2, "no new child runs"
    assert all(r.info.status == "FINISHED" for r in after.values())
    # d1 was not trained again; d2 continued from its checkpoint
    assert len(client.get_metric_history(after["d1"].info.run_id, "train.loss")) == len(d1_losses) == 20
    assert int(after["d2"].data.tags["dgmeta.resumed_from_step"]) == stopped_at
    mean = (after["d1"].data.metrics["test_acc"] + after["d2"].data.metrics["test_acc"]) / 2
    assert parent.data.metrics["test_acc"] == pytest.approx(mean)
    assert not list(runs.glob("*/*/*/checkpoint.pt")) and not list(runs.glob("*/*")), "finished: nothing left in runs/"

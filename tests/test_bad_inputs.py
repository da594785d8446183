"""The bad-input catalogue (docs/bad_inputs.md), one test per row: the exact one-line message, the
exit code, no traceback. The table in the doc and the cases here must agree row for row."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from tests.fixtures_data import make_pacs
from tests.helpers import make_folder_dataset
from tests.test_resume import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "24", "--batch-size", "4", "--split", "random",
        "--steps", "2", "--eval-every", "2", "--quiet"]


def registered(values: dict) -> list[str]:
    """The registries' names, for messages that list them (a new learner or meta term is one file)."""
    from dgmeta.learners.registry import learner_names
    from dgmeta.meta.registry import meta_term_names

    values.update(learners=", ".join(learner_names()), terms=", ".join(meta_term_names()))
    return []


@dataclass
class Case:
    """One catalogue row. ``make(tmp, values)`` builds the fixture and returns the argv; it may add
    placeholder values (run ids, ports) that the expected message uses as ``{name}``, and
    environment variables for the command as ``values["env"]``."""

    row: str
    make: Callable[[Path, dict], list[str]]
    message: str  # with {tmp} and any placeholders ``make`` filled in
    code: int = 2
    leaves_runs: bool = False  # the mistake is found inside a job: its runs end FAILED


def store(tmp: Path) -> list[str]:
    return ["--tracking-uri", f"sqlite:///{tmp / 'mlruns.db'}"]


def toy(tmp: Path, **kwargs) -> str:
    root = tmp / "toy"
    if not root.exists():
        make_folder_dataset(root, per_class=4, **kwargs)
    return f"folder:{root}"


def run_toy(tmp: Path, *extra: str) -> list[str]:
    return ["run", toy(tmp), "--target", "d2", *TINY, *store(tmp), *extra]


def broken_toy(change: Callable[[Path], None]) -> Callable[[Path, dict], list[str]]:
    def make(tmp: Path, values: dict) -> list[str]:
        toy(tmp)
        change(tmp / "toy")
        return run_toy(tmp)

    return make


def pacs_with_list_line(line: str) -> Callable[[Path, dict], list[str]]:
    def make(tmp: Path, values: dict) -> list[str]:
        make_pacs(tmp / "data", per_class=2)
        with open(tmp / "data" / "pacs_splits" / "photo_train_kfold.txt", "a") as handle:
            handle.write(line + "\n")
        return ["run", "pacs", "--data-root", str(tmp / "data"), "--split", "official", "--target", "photo", "--steps", "2", *store(tmp)]

    return make


def save_foreign_network(path: Path, backbone: str) -> Path:
    from dgmeta.models import create_network

    torch.save(create_network(backbone, 2, "none").state_dict(), path)
    return path


def diverged_run(tmp: Path, values: dict) -> list[str]:
    """A run that failed (lr=1e6) after writing checkpoints; its parent id goes to ``values``."""
    argv = run_toy(tmp, "--checkpoint-every", "1", "--set", "lr=1e6", "--steps", "20", "--eval-every", "10")
    with pytest.raises(SystemExit):
        main(argv)
    (parent,) = MlflowClient(tracking_uri=store(tmp)[1]).search_runs(["1"], "tags.`dgmeta.role` = 'parent'")
    values["run_id"] = parent.info.run_id
    (values["checkpoint"],) = (tmp / "runs").glob("*/*/d2-s0/checkpoint.pt")
    return argv


def truncated_checkpoint(tmp: Path, values: dict) -> list[str]:
    argv = diverged_run(tmp, values)
    path = values["checkpoint"]
    path.write_bytes(path.read_bytes()[:1000])
    return argv + ["--resume", values["run_id"]]


def other_backbone_resume(tmp: Path, values: dict) -> list[str]:
    argv = diverged_run(tmp, values)
    return argv + ["--resume", values["run_id"], "--backbone", "test_efficientnet"]


def closed_port(tmp: Path, values: dict) -> list[str]:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        values["port"] = sock.getsockname()[1]
    return run_toy(tmp, "--tracking-uri", f"http://127.0.0.1:{values['port']}")


def fewshot_model(tmp: Path) -> Path:
    from dgmeta.models import create_network
    from dgmeta.models.checkpoint import save_network

    meta = {"backbone": "test_resnet", "num_classes": 2, "classes": ["a", "b"], "image_size": 24, "dataset": "toy",
            "domains": ["d0", "d1", "d2"], "train_domains": ["d0", "d1"], "target": "d2", "meta_mode": "none"}
    return save_network(tmp / "network.pt", create_network("test_resnet", 2, "none"), meta)


def write_pipeline(text: str) -> Callable[[Path, dict], list[str]]:
    def make(tmp: Path, values: dict) -> list[str]:
        (tmp / "bad.yaml").write_text(text)
        return ["run", "--config", str(tmp / "bad.yaml"), *store(tmp)]

    return make


def undecodable(root: Path) -> None:
    (root / "d0" / "a" / "broken.png").write_bytes(b"not a png at all")


def escaping_link(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (root / "d0" / "a" / "d0_a_000.png").rename(outside / "x.png")
    (root / "d0" / "a" / "link.png").symlink_to(outside / "x.png")


def junk_store(tmp: Path, values: dict) -> list[str]:
    (tmp / "junk.db").write_bytes(b"junk" * 300)
    return run_toy(tmp, "--tracking-uri", f"sqlite:///{tmp / 'junk.db'}")


def home_below_a_file(tmp: Path, values: dict) -> list[str]:
    (tmp / "home.txt").write_text("")
    values["env"] = {"DGMETA_HOME": f"{tmp / 'home.txt'}/x"}
    return run_toy(tmp)


def make_empty(path: Path) -> None:
    path.mkdir(parents=True)


def schedule_spec_named(name: str) -> Callable[[Path, dict], list[str]]:
    def make(tmp: Path, values: dict) -> list[str]:
        (tmp / name).write_text("dataset: toy\nregister: {model_name: toy}\n")
        return ["schedule", "install", str(tmp / name), "--cron", "@daily", "--crontab-file", str(tmp / "crontab")]

    return make


def link(name: str, target: str) -> Callable[[Path], None]:
    """A symlink ``root/name`` -> ``target`` (relative to the link's folder, or absolute)."""
    def change(root: Path) -> None:
        (root / name).symlink_to(target)

    return change


def one_image_per_class(tmp: Path, values: dict) -> list[str]:
    make_folder_dataset(tmp / "tiny", per_class=1)
    return ["run", f"folder:{tmp / 'tiny'}", "--target", "d2", *TINY, *store(tmp)]


def foreign_database(tmp: Path, values: dict) -> list[str]:
    import sqlite3

    connection = sqlite3.connect(tmp / "app.db")
    connection.executescript("CREATE TABLE customers (id INTEGER); CREATE TABLE orders (id INTEGER); INSERT INTO customers VALUES (1);")
    connection.commit()
    connection.close()
    values["before"] = (tmp / "app.db").read_bytes()
    return run_toy(tmp, "--tracking-uri", f"sqlite:///{tmp / 'app.db'}")


def huge_images(tmp: Path, values: dict) -> list[str]:
    from dgmeta.resources import machine_memory_bytes

    values["memory"] = f"{machine_memory_bytes() / 2**30:.1f}"
    return run_toy(tmp, "--image-size", "100000")


CASES = [
    Case("missing data root", lambda t, v: ["run", "pacs", "--data-root", str(t / "nope"), *TINY, *store(t)],
         "error: data root {tmp}/nope does not exist (from --data-root) — pass --data-root DIR or set DGMETA_DATA to the folder that holds PACS/, OfficeHome/ or DomainNet/"),
    Case("folder dataset that does not exist", lambda t, v: ["run", f"folder:{t / 'nope'}", *TINY, *store(t)],
         "error: folder dataset {tmp}/nope does not exist — expected {tmp}/nope/<domain>/<class>/<image>"),
    Case("wrong layout: images directly in a domain folder",
         broken_toy(lambda r: (make_empty(r / "d3"), (r / "d0" / "a" / "d0_a_000.png").rename(r / "d3" / "x.png"))),
         "error: wrong layout: images directly in {tmp}/toy/d3 (e.g. x.png) — expected {tmp}/toy/<domain>/<class>/<image>"),
    Case("empty domain folder", broken_toy(lambda r: make_empty(r / "d3")),
         "error: domain folder {tmp}/toy/d3 is empty — expected {tmp}/toy/<domain>/<class>/<image>"),
    Case("empty class folder", broken_toy(lambda r: make_empty(r / "d1" / "c")),
         "error: class folder {tmp}/toy/d1/c holds no images — remove it or fill it; expected {tmp}/toy/<domain>/<class>/<image>"),
    Case("domains with different classes", broken_toy(lambda r: (r / "d1" / "b").rename(r / "d1" / "z")),
         "error: domains disagree on classes: {tmp}/toy/d1 lacks 'b' compared with {tmp}/toy/d0 — every domain needs the same class folders"),
    Case("split list naming a missing file", pacs_with_list_line("photo/dog/missing.jpg 1"),
         "error: split list photo_train_kfold.txt names a missing file {tmp}/data/PACS/photo/dog/missing.jpg — restore the file (a complete PACS copy has all 9,991 images)"),
    Case("split list pointing outside the data root", pacs_with_list_line("../../etc/passwd 1"),
         "error: photo_train_kfold.txt line 4: path '../../etc/passwd' points outside the dataset folder — split lists may only name files inside the dataset folder; fix or replace the list"),
    Case("folder dataset with a symlink leading outside", broken_toy(escaping_link),
         "error: {tmp}/toy/d0/a: {tmp}/toy/d0/a/link.png resolves to {tmp}/outside/x.png, outside the dataset folder {tmp}/toy — replace the link with the real file or folder"),
    Case("undecodable image", broken_toy(undecodable),
         "error: cannot decode image {tmp}/toy/d0/a/broken.png: cannot identify image file '{tmp}/toy/d0/a/broken.png' — replace or remove the file, then run `dgmeta data verify`",
         leaves_runs=True),
    Case("unknown dataset", lambda t, v: ["run", "pacs_v2", *TINY, *store(t)],
         "error: unknown dataset 'pacs_v2' — did you mean 'pacs'? choose one of: domainnet, folder, office_home, pacs, pacs-mini"),
    Case("unknown backbone", lambda t, v: run_toy(t, "--backbone", "resnet_nope"),
         "error: unknown backbone 'resnet_nope' — give any timm model name (timm.list_models()), e.g. tf_efficientnet_lite0 or resnet18"),
    Case("unknown base learner", lambda t, v: registered(v) + run_toy(t, "--base", "dan"),
         "error: unknown --base 'dan' — did you mean 'dann'? choose one of: {learners}"),
    Case("unknown meta mode", lambda t, v: registered(v) + run_toy(t, "--meta", "inits"),
         "error: unknown --meta 'inits' — choose terms from: none, {terms}, joined by + (e.g. init+critic)"),
    Case("unknown protocol", lambda t, v: run_toy(t, "--protocol", "uda"),
         "error: unknown --protocol 'uda' — choose one of: dg, msda, ssda"),
    Case("unknown memory mode", lambda t, v: run_toy(t, "--memory", "max"),
         "error: unknown --memory 'max' — choose lean (return freed memory to the OS) or fast (keep it for reuse)"),
    Case("protocol the learner cannot run", lambda t, v: run_toy(t, "--base", "mcd", "--protocol", "dg"),
         "error: --base mcd cannot run under --protocol dg — use --protocol msda or ssda"),
    Case("unknown few-shot method", lambda t, v: ["fewshot", str(fewshot_model(t)), "--data", toy(t), "--domain", "d2", "--method", "protonet", *store(t)],
         "error: unknown few-shot method 'protonet' — did you mean 'prototype'? choose one of: finetune, linear, maml, prototype"),
    Case("target that is not a domain of the dataset", lambda t, v: ["run", toy(t), "--target", "mars", *TINY, *store(t)],
         "error: unknown domain 'mars' for dataset folder:{tmp}/toy — choose one of: d0, d1, d2"),
    Case("zero steps", lambda t, v: run_toy(t, "--steps", "0"),
         "error: --steps must be a positive integer, got 0 — pass e.g. --steps 600"),
    Case("negative steps", lambda t, v: run_toy(t, "--steps", "-5"),
         "error: --steps must be a positive integer, got -5 — pass e.g. --steps 600"),
    Case("zero batch size", lambda t, v: run_toy(t, "--batch-size", "0"),
         "error: --batch-size must be a positive integer, got 0 — pass e.g. --batch-size 16"),
    Case("negative image size", lambda t, v: run_toy(t, "--image-size", "-24"),
         "error: --image-size must be a positive integer, got -24 — pass e.g. --image-size 224"),
    Case("image size too small", lambda t, v: run_toy(t, "--image-size", "8"),
         "error: --image-size 8 is too small — use at least 16 pixels (128 or 224 for real runs)"),
    Case("negative checkpoint interval", lambda t, v: run_toy(t, "--checkpoint-every", "-1"),
         "error: --checkpoint-every must be 0 (at every evaluation) or a positive number of steps, got -1 — pass e.g. --checkpoint-every 50"),
    Case("--shots larger than a class", lambda t, v: run_toy(t, "--protocol", "ssda", "--shots", "9"),
         "error: --shots 9 is larger than class 0 of the target has train images (3) — use --shots 3 or fewer"),
    Case("hyperparameter that does not exist", lambda t, v: run_toy(t, "--set", "learning_rate=0.1"),
         "error: unknown hyperparameter 'learning_rate' for this base/meta — known: augment, dropout, ema_decay, freeze_bn, freeze_levels, grad_clip, head_init, head_lr_mult, lr, lr_schedule, momentum, optimizer, probe_C, swad_converge, swad_tolerance, swad_tolerance_ratio, warmup_steps, weight_decay"),
    Case("head_init=probe for a learner with its own head", lambda t, v: run_toy(t, "--base", "mme", "--set", "head_init=probe"),
         "error: --set head_init=probe fits a linear head, but --base mme replaces the head with its own classifier — drop --set head_init=probe for this learner"),
    Case("freeze_levels beyond the backbone", lambda t, v: run_toy(t, "--set", "freeze_levels=99"),
         "error: freeze_levels=99 would freeze the whole backbone (5 feature levels) — use --set freeze_levels=0..4"),
    Case("hyperparameter value of the wrong type", lambda t, v: run_toy(t, "--set", "lr=fast"),
         "error: --set lr=fast: expected float — give a float value, e.g. lr=0.0001"),
    Case("corrupt or truncated checkpoint", truncated_checkpoint,
         "error: checkpoint {checkpoint} is corrupt or truncated — delete it to restart this (target, seed) from step 0, or resume another run",
         leaves_runs=True),
    Case("resume with another --backbone", other_backbone_resume,
         "error: run {run_id} was started with other options (--backbone was test_resnet, now test_efficientnet) — repeat the options of the original command, or drop --resume to start a new run",
         leaves_runs=True),
    Case("--weights file of a different architecture",
         lambda t, v: run_toy(t, "--weights", str(save_foreign_network(t / "effnet.pt", "test_efficientnet"))),
         "error: weights file {tmp}/effnet.pt does not fit backbone 'test_resnet' (75 missing, 90 unexpected tensors; first unexpected: 'featurizer.mean') — use weights saved for test_resnet, or pass the backbone they were saved for"),
    Case("--weights file that does not exist", lambda t, v: run_toy(t, "--weights", str(t / "nope.pt")),
         "error: weights file {tmp}/nope.pt does not exist — --weights takes imagenet, none or a path to an existing .pth/.pt/.bin/.safetensors file"),
    Case("--resume of an unknown run", lambda t, v: run_toy(t, "--resume", "0123456789abcdef"),
         "error: --resume 0123456789abcdef: no such run in the tracking store sqlite:///{tmp}/mlruns.db — pass the parent or child run id printed by `dgmeta run`, or --resume auto"),
    Case("tracking store folder that does not exist", lambda t, v: run_toy(t, "--tracking-uri", f"sqlite:///{t / 'nope' / 'mlruns.db'}"),
         "error: tracking store folder {tmp}/nope does not exist — create it or pass another --tracking-uri"),
    Case("tracking store that is a folder", lambda t, v: run_toy(t, "--tracking-uri", f"sqlite:///{t}"),
         "error: tracking store {tmp} is a folder, not a SQLite file — pass e.g. --tracking-uri sqlite:///{tmp}/mlruns.db"),
    Case("unreadable tracking store (not a database)", junk_store,
         "error: cannot open MLflow store sqlite:///{tmp}/junk.db (DatabaseError: (sqlite3.DatabaseError) file is not a database) — check --tracking-uri / MLFLOW_TRACKING_URI"),
    Case("unreachable tracking server", closed_port,
         "error: MLflow tracking server http://127.0.0.1:{port} is unreachable ([Errno 111] Connection refused) — start it (see mlflow/README.md) or pass another --tracking-uri"),
    Case("unknown tracking URI scheme", lambda t, v: run_toy(t, "--tracking-uri", "mlfow://localhost:5000"),
         "error: unsupported tracking URI scheme 'mlfow' in mlfow://localhost:5000 — use sqlite:///PATH/mlruns.db, a folder path, or http://HOST:PORT of an MLflow server"),
    Case("image cache folder that cannot be created", lambda t, v: run_toy(t, "--cache-dir", f"{t / 'toy' / 'd0' / 'a' / 'd0_a_001.png'}/cache"),
         "error: cannot create the image cache folder {tmp}/toy/d0/a/d0_a_001.png/cache/images: Not a directory — set DGMETA_CACHE or --cache-dir to a writable folder",
         leaves_runs=True),
    Case("checkpoint folder that cannot be written (DGMETA_HOME)", home_below_a_file,
         "error: cannot write checkpoints to {tmp}/home.txt/x/runs: Not a directory — set DGMETA_HOME to a writable folder (checkpoints go to $DGMETA_HOME/runs)"),
    Case("malformed pipeline YAML", write_pipeline("dataset: [pacs\nbase: erm\n"),
         "error: {tmp}/bad.yaml: malformed YAML at line 2 (expected ',' or ']', but got ':') — fix the YAML syntax (indentation, colons, quotes)"),
    Case("pipeline YAML without a dataset", write_pipeline("base: erm\nsteps: 10\n"),
         "error: {tmp}/bad.yaml: missing required key 'dataset' — add `dataset: ...` to the spec"),
    Case("pipeline path with a line break (schedule)", schedule_spec_named("toy\n* * * * * touch pwned.yaml"),
         "error: pipeline path '{tmp}/toy\\n* * * * * touch pwned.yaml' contains U+000A (line feed), which cannot go into a crontab line or a systemd unit — rename it or pass a value without control characters or line breaks"),
    Case("--on-calendar with a line break", lambda t, v: [*schedule_spec_named("toy.yaml")(t, v)[:3], "--systemd", "--unit-dir", str(t / "units"), "--on-calendar", "daily\nExecStartPre=/bin/sh"],
         "error: --on-calendar value 'daily\\nExecStartPre=/bin/sh' contains U+000A (line feed), which cannot go into a crontab line or a systemd unit — rename it or pass a value without control characters or line breaks"),
    Case("negative seed", lambda t, v: run_toy(t, "--seed", "-1"),
         "error: --seed -1 is outside 0..4294967295 — pass a non-negative integer below 2**32, e.g. --seed 0"),
    Case("seed of 2**32 or more", lambda t, v: run_toy(t, "--seed", "4294967296"),
         "error: --seed 4294967296 is outside 0..4294967295 — pass a non-negative integer below 2**32, e.g. --seed 0"),
    Case("--seed given twice", lambda t, v: run_toy(t, "--seed", "1", "--seed", "1"),
         "error: --seed 1 is given more than once — give each --seed once"),
    Case("--target given twice", lambda t, v: ["run", toy(t), "--target", "d1", "--target", "d1", *TINY, *store(t)],
         "error: --target d1 is given more than once — give each --target once"),
    Case("empty experiment name", lambda t, v: run_toy(t, "--experiment", ""),
         "error: the --experiment name is empty — give the MLflow experiment name, e.g. --experiment dgmeta"),
    Case("negative learning rate", lambda t, v: run_toy(t, "--set", "lr=-0.01"),
         "error: --set lr=-0.01: lr must be a number > 0 — pass e.g. --set lr=0.0001"),
    Case("momentum outside [0, 1)", lambda t, v: run_toy(t, "--set", "optimizer=sgd", "--set", "momentum=1.5"),
         "error: --set momentum=1.5: momentum must be a number in [0, 1) — pass e.g. --set momentum=0.9"),
    Case("negative weight decay", lambda t, v: run_toy(t, "--set", "weight_decay=-0.001"),
         "error: --set weight_decay=-0.001: weight_decay must be a number >= 0 — pass e.g. --set weight_decay=0.0005"),
    Case("dropout of 1", lambda t, v: run_toy(t, "--set", "dropout=1"),
         "error: --set dropout=1: dropout must be a number in [0, 1) — pass e.g. --set dropout=0.0"),
    Case("unknown learning-rate schedule", lambda t, v: run_toy(t, "--set", "lr_schedule=linear"),
         "error: --set lr_schedule=linear: lr_schedule must be one of: cosine, constant, dann — pass e.g. --set lr_schedule=cosine"),
    Case("unknown augment value", lambda t, v: run_toy(t, "--set", "augment=off"),
         "error: --set augment=off: augment must be one of: standard, none — pass e.g. --set augment=standard"),
    Case("negative gradient clip", lambda t, v: run_toy(t, "--set", "grad_clip=-1"),
         "error: --set grad_clip=-1: grad_clip must be a number >= 0 — pass e.g. --set grad_clip=0.0"),
    Case("negative warm-up steps", lambda t, v: run_toy(t, "--set", "warmup_steps=-5"),
         "error: --set warmup_steps=-5: warmup_steps must be an integer >= 0 — pass e.g. --set warmup_steps=0"),
    Case("symlink loop in a class folder", broken_toy(link("d0/a/loop.png", "loop.png")),
         "error: {tmp}/toy/d0/a: {tmp}/toy/d0/a/loop.png is a symbolic link loop — replace the link with the real file or folder"),
    Case("folder symlink to a folder that contains it", broken_toy(link("d3", ".")),
         "error: {tmp}/toy: {tmp}/toy/d3 is a symbolic link loop (to {tmp}/toy, a folder that contains it) — replace the link with the real file or folder"),
    Case("broken symlink to an image", broken_toy(link("d0/a/gone.png", "../../../nowhere.png")),
         "error: {tmp}/toy/d0/a: {tmp}/toy/d0/a/gone.png is a broken symbolic link (to ../../../nowhere.png, which does not exist) — restore its target or remove the link"),
    Case("broken symlink to a class folder", broken_toy(link("d1/c", "zzz")),
         "error: {tmp}/toy/d1: {tmp}/toy/d1/c is a broken symbolic link (to zzz, which does not exist) — restore its target or remove the link"),
    Case("source domain with one image per class", one_image_per_class,
         "error: source domain d0 has 2 train and 0 validation images (target d2) — training and model selection need both: give every class of each source domain at least 2 images (a random split holds out 20% of each class), or drop that domain from the data"),
    Case("--shots taking every train image of the target", lambda t, v: run_toy(t, "--protocol", "ssda", "--shots", "3"),
         "error: --shots 3 takes 6 labelled images of target d2, which leaves 0 unlabelled train and at most 2 test images — use --shots 2 or fewer, or a target with more images"),
    Case("sqlite store that is another application's database", foreign_database,
         "error: tracking store {tmp}/app.db is a SQLite database of another application (tables: customers, orders), not an MLflow store — pass another --tracking-uri, e.g. a new file next to it (MLflow creates its tables in an empty one)"),
    Case("image size no machine can hold", huge_images,
         "error: --image-size 100000 with --batch-size 4 (8 images a step) needs at least 1192.1 GiB of memory for the input batch alone; this machine has {memory} GiB — use a smaller --image-size or --batch-size (the benchmarks run 224 px and 32 images per domain)"),
]


def doc_rows() -> dict[str, tuple[str, int]]:
    """``row -> (message, exit code)`` from the markdown table of docs/bad_inputs.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("`` error:") and cells[2].endswith(" ``"):
            rows[cells[0]] = (cells[2][3:-3], int(cells[3]))
    return rows


def test_the_doc_lists_every_case_with_the_same_message_and_code():
    rows = doc_rows()
    assert len(rows) >= 20
    assert list(rows) == [case.row for case in CASES]
    for case in CASES:
        assert rows[case.row] == (case.message, case.code), case.row


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created: copying it saves each case the migrations."""
    path = tmp_path_factory.mktemp("store") / "mlruns.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch, empty_store):
    shutil.copy(empty_store, tmp_path / "mlruns.db")
    values: dict = {}
    argv = case.make(tmp_path, values)
    for name, value in values.pop("env", {}).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()  # a fixture's own output (a failed run made on purpose) is not under test
    runs_before = count_runs(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not is_mlflow_log(line)]
    expected = case.message.format(tmp=tmp_path, **values)
    assert lines == [expected]
    assert exit_info.value.code == case.code
    assert "Traceback" not in err
    if not case.leaves_runs:
        assert count_runs(tmp_path) == runs_before, "a mistake found up front leaves no MLflow run behind"
    if "before" in values:  # the file the command was pointed at is left as it was
        assert (tmp_path / "app.db").read_bytes() == values["before"]


def is_mlflow_log(line: str) -> bool:
    """MLflow's own INFO lines when it creates a store's tables."""
    return bool(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow", line))


def count_runs(tmp: Path) -> int:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


# -- a read-only store: root may write anywhere, so for root the folder is a read-only mount -------
def read_only(folder: Path) -> list[str]:
    """Make ``folder`` read-only for the command; returns the prefix that runs the command so."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    # root: a read-only tmpfs over the folder, in a private mount namespace that ends with the command
    mount = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro none "$0" && exec "$@"', str(folder)]
    if shutil.which("unshare") is None or subprocess.run([*mount, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a way to mount a read-only folder")
    return mount


def test_read_only_tracking_folder(tmp_path):
    dataset = make_folder_dataset(tmp_path / "toy", per_class=4)
    folder = tmp_path / "store"
    folder.mkdir()
    prefix = read_only(folder)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "dgmeta", "run", f"folder:{dataset}", "--target", "d2", *TINY,
         "--tracking-uri", f"sqlite:///{folder / 'mlruns.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: tracking store {folder / 'mlruns.db'} is not writable — fix its permissions or pass another --tracking-uri"
    ]


@pytest.mark.parametrize("argv, error", [
    (["run", "pacs", "--bogus"], "Error: No such option: --bogus"),
    (["run", "pacs", "--steps", "abc"], "Error: Invalid value for '--steps'"),
])
def test_command_line_syntax_errors_are_click_messages_not_tracebacks(argv, error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(error)


def test_environment_failures_escaping_from_libraries_become_one_line_errors():
    from mlflow.exceptions import MlflowException

    from dgmeta.cli.environment import environment_errors
    from dgmeta.errors import DgmetaError, TrackingError

    with pytest.raises(TrackingError) as tracking:
        with environment_errors():
            raise MlflowException("attempt to write a readonly database\nsecond line")
    assert tracking.value.one_line() == (
        "MLflow tracking store failed (MlflowException: attempt to write a readonly database) — "
        "check --tracking-uri / MLFLOW_TRACKING_URI and that the store is writable"
    )
    with pytest.raises(DgmetaError, match=r"^Permission denied: /data/x — fix the folder's permissions"):
        with environment_errors():
            raise PermissionError(13, "Permission denied", "/data/x")
    with pytest.raises(ValueError):  # a bug keeps its traceback
        with environment_errors():
            raise ValueError("bug")

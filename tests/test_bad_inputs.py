"""The bad-input catalogue (docs/bad_inputs.md), one test per row: the exact one-line message, the
exit code, no traceback. The table in the doc and the cases here must agree row for row."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from mlflow.tracking import MlflowClient

from dgmeta.cli.main import main
from tests.fixtures_data import make_pacs
from tests.helpers import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "24", "--batch-size", "4", "--split", "random",
        "--steps", "2", "--eval-every", "2", "--quiet"]


@dataclass
class Case:
    """One catalogue row. ``make(tmp, values)`` builds the fixture and returns the argv; it may add
    placeholder values (run ids, ports) that the expected message uses as ``{name}``."""

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
        return ["run", "pacs", "--data-root", str(tmp / "data"), "--split", "official", "--target", "photo", *TINY[:-6], *store(tmp)]

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


def make_empty(path: Path) -> None:
    path.mkdir(parents=True)


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
         "error: {tmp}/data/pacs_splits/photo_train_kfold.txt:5: path '../../etc/passwd' points outside the dataset folder — split lists may only name files inside the dataset folder; fix or replace the list"),
    Case("folder dataset with a symlink leading outside", broken_toy(escaping_link),
         "error: {tmp}/toy/d0/a: {tmp}/toy/d0/a/link.png resolves to {tmp}/outside/x.png, outside the dataset folder {tmp}/toy — replace the link with the real file or folder"),
    Case("undecodable image", broken_toy(undecodable),
         "error: cannot decode image {tmp}/toy/d0/a/broken.png: cannot identify image file '{tmp}/toy/d0/a/broken.png' — replace or remove the file, then run `dgmeta data verify`",
         leaves_runs=True),
    Case("unknown dataset", lambda t, v: ["run", "pacs_v2", *TINY, *store(t)],
         "error: unknown dataset 'pacs_v2' — did you mean 'pacs'? choose one of: domainnet, folder, office_home, pacs, pacs-mini"),
    Case("unknown backbone", lambda t, v: run_toy(t, "--backbone", "resnet_nope"),
         "error: unknown backbone 'resnet_nope' — give any timm model name (timm.list_models()), e.g. tf_efficientnet_lite0 or resnet18"),
    Case("unknown base learner", lambda t, v: run_toy(t, "--base", "dan"),
         "error: unknown --base 'dan' — did you mean 'dann'? choose one of: dann, erm, jigen, mcd"),
    Case("unknown meta mode", lambda t, v: run_toy(t, "--meta", "inits"),
         "error: unknown --meta 'inits' — did you mean 'init'? choose one of: critic, init, init+critic, none"),
    Case("unknown protocol", lambda t, v: run_toy(t, "--protocol", "uda"),
         "error: unknown --protocol 'uda' — choose one of: dg, msda, ssda"),
    Case("protocol the learner cannot run", lambda t, v: run_toy(t, "--base", "mcd", "--protocol", "dg"),
         "error: --base mcd cannot run under --protocol dg — use --protocol msda or ssda"),
    Case("unknown few-shot method", lambda t, v: ["fewshot", str(fewshot_model(t)), "--data", toy(t), "--domain", "d2", "--method", "protonet", *store(t)],
         "error: unknown few-shot method 'protonet' — did you mean 'prototype'? choose one of: finetune, linear, maml, prototype"),
    Case("target that is not a domain of the dataset", lambda t, v: ["run", toy(t), "--target", "mars", *TINY, *store(t)],
         "error: unknown domain 'mars' for dataset folder:{tmp}/toy — choose one of: d0, d1, d2"),
    Case("zero steps", lambda t, v: run_toy(t, "--steps", "0"),
         "error: --steps must be a positive integer, got 0 — pass e.g. --steps 300"),
    Case("negative steps", lambda t, v: run_toy(t, "--steps", "-5"),
         "error: --steps must be a positive integer, got -5 — pass e.g. --steps 300"),
    Case("zero batch size", lambda t, v: run_toy(t, "--batch-size", "0"),
         "error: --batch-size must be a positive integer, got 0 — pass e.g. --batch-size 32"),
    Case("negative image size", lambda t, v: run_toy(t, "--image-size", "-24"),
         "error: --image-size must be a positive integer, got -24 — pass e.g. --image-size 128"),
    Case("image size too small", lambda t, v: run_toy(t, "--image-size", "8"),
         "error: --image-size 8 is too small — use at least 16 pixels (128 or 224 for real runs)"),
    Case("negative checkpoint interval", lambda t, v: run_toy(t, "--checkpoint-every", "-1"),
         "error: --checkpoint-every must be 0 (at every evaluation) or a positive number of steps, got -1 — pass e.g. --checkpoint-every 50"),
    Case("--shots larger than a class", lambda t, v: run_toy(t, "--protocol", "ssda", "--shots", "9"),
         "error: --shots 9 is larger than class 0 of the target has train images (3) — use --shots 3 or fewer"),
    Case("hyperparameter that does not exist", lambda t, v: run_toy(t, "--set", "learning_rate=0.1"),
         "error: unknown hyperparameter 'learning_rate' for erm+none — choose from: augment, dropout, grad_clip, head_lr_mult, lr, lr_schedule, momentum, warmup_steps, weight_decay"),
    Case("hyperparameter value of the wrong type", lambda t, v: run_toy(t, "--set", "lr=fast"),
         "error: --set lr=fast: expected float — give a float value, e.g. lr=0.01"),
    Case("corrupt or truncated checkpoint", truncated_checkpoint,
         "error: checkpoint {checkpoint} is corrupt or truncated — delete it to restart this (target, seed) from step 0, or resume another run",
         leaves_runs=True),
    Case("resume with another --backbone", other_backbone_resume,
         "error: run {run_id} was started with other options (--backbone was test_resnet, now test_efficientnet) — repeat the options of the original command, or drop --resume to start a new run",
         leaves_runs=True),
    Case("--weights file of a different architecture",
         lambda t, v: run_toy(t, "--weights", str(save_foreign_network(t / "effnet.pt", "test_efficientnet"))),
         "error: {tmp}/effnet.pt does not fit test_resnet: 0 of 20 backbone tensors matched (e.g. conv1.weight missing) — use weights saved from the same --backbone architecture"),
    Case("--weights file that does not exist", lambda t, v: run_toy(t, "--weights", str(t / "nope.pt")),
         "error: weights file {tmp}/nope.pt does not exist — --weights takes imagenet, none or a path to an existing .pth/.pt/.bin/.safetensors file"),
    Case("--resume of an unknown run", lambda t, v: run_toy(t, "--resume", "0123456789abcdef"),
         "error: --resume 0123456789abcdef: no such run in the tracking store sqlite:///{tmp}/mlruns.db — pass the parent or child run id printed by `dgmeta run`, or --resume auto"),
    Case("tracking store folder that does not exist", lambda t, v: run_toy(t, "--tracking-uri", f"sqlite:///{t / 'nope' / 'mlruns.db'}"),
         "error: tracking store folder {tmp}/nope does not exist — create it or pass another --tracking-uri"),
    Case("tracking store that is a folder", lambda t, v: run_toy(t, "--tracking-uri", f"sqlite:///{t}"),
         "error: tracking store {tmp} is a folder, not a SQLite file — pass e.g. --tracking-uri sqlite:///{tmp}/mlruns.db"),
    Case("unreadable tracking store (not a database)",
         lambda t, v: ((t / "junk.db").write_bytes(b"junk" * 300), run_toy(t, "--tracking-uri", f"sqlite:///{t / 'junk.db'}"))[1],
         "error: cannot open MLflow store sqlite:///{tmp}/junk.db (DatabaseError: (sqlite3.DatabaseError) file is not a database) — check --tracking-uri / MLFLOW_TRACKING_URI"),
    Case("unreachable tracking server", closed_port,
         "error: MLflow tracking server http://127.0.0.1:{port} is unreachable ([Errno 111] Connection refused) — start it (see mlflow/README.md) or pass another --tracking-uri"),
    Case("unknown tracking URI scheme", lambda t, v: run_toy(t, "--tracking-uri", "mlfow://localhost:5000"),
         "error: unsupported tracking URI scheme 'mlfow' in mlfow://localhost:5000 — use sqlite:///PATH/mlruns.db, a folder path, or http://HOST:PORT of an MLflow server"),
    Case("image cache folder that cannot be created", lambda t, v: run_toy(t, "--cache-dir", f"{t / 'toy' / 'd0' / 'a' / 'd0_a_001.png'}/cache"),
         "error: cannot create the image cache folder {tmp}/toy/d0/a/d0_a_001.png/cache/images: Not a directory — set DGMETA_CACHE or --cache-dir to a writable folder",
         leaves_runs=True),
    Case("checkpoint folder that cannot be written (DGMETA_HOME)", lambda t, v: (os.environ.__setitem__("DGMETA_HOME", f"{t / 'home.txt'}/x"), (t / "home.txt").write_text(""), run_toy(t))[2],
         "error: cannot write checkpoints to {tmp}/home.txt/x/runs: Not a directory — set DGMETA_HOME to a writable folder (checkpoints go to $DGMETA_HOME/runs)"),
    Case("malformed pipeline YAML", write_pipeline("dataset: [pacs\nbase: erm\n"),
         "error: {tmp}/bad.yaml is not valid YAML (line 2, column 5): expected ',' or ']', but got ':' — fix the syntax; a pipeline is a mapping such as `dataset: pacs`"),
    Case("pipeline YAML with an unknown key", write_pipeline("dataset: pacs\nlearning_rate: 0.1\n"),
         "error: {tmp}/bad.yaml: unknown key 'learning_rate' — known keys: backbone, base, batch_size, dataset, description, eval_every, experiment, fewshot, hparams, image_size, meta, name, protocol, register, schedule, seeds, shots, split, stages, steps, targets, weights"),
]


def doc_rows() -> dict[str, tuple[str, int]]:
    """``row -> (message, exit code)`` from the markdown table of docs/bad_inputs.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("`error:"):
            rows[cells[0]] = (cells[2].strip("`").replace("\\|", "|"), int(cells[3]))
    return rows


def test_the_doc_lists_every_case_with_the_same_message_and_code():
    rows = doc_rows()
    assert len(rows) >= 20
    assert list(rows) == [case.row for case in CASES]
    for case in CASES:
        assert rows[case.row] == (case.message, case.code), case.row


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv("DGMETA_HOME", raising=False)  # a case sets it through os.environ
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[c.row for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    values: dict = {}
    argv = case.make(tmp_path, values)
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


def is_mlflow_log(line: str) -> bool:
    """MLflow's own INFO lines when it creates a store's tables."""
    return bool(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow", line))


def count_runs(tmp: Path) -> int:
    db = tmp / "mlruns.db"
    if not db.is_file():
        return 0
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


# -- a read-only store needs a user the permissions apply to (root writes anywhere) ---------------
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_read_only_tracking_folder(tmp_path):
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="dgmeta-ro-"))  # outside pytest's private (0700) tmp dir
    try:
        dataset = make_folder_dataset(base / "toy", per_class=4)
        readonly = base / "store"
        readonly.mkdir()
        for folder in (base, dataset, *dataset.rglob("*")):
            folder.chmod(0o755 if folder.is_dir() else 0o644)
        readonly.chmod(0o555)
        as_other_user = os.geteuid() == 0
        result = subprocess.run(
            [sys.executable, "-m", "dgmeta", "run", f"folder:{dataset}", "--target", "d2", *TINY,
             "--tracking-uri", f"sqlite:///{readonly / 'mlruns.db'}", "--cache-dir", str(base / "cache")],
            env={**os.environ, "HOME": str(base)}, cwd=base, capture_output=True, text=True, timeout=120,
            user=65534 if as_other_user else None,  # root ignores permissions: run as nobody
        )
        base.chmod(0o777)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: tracking store {readonly / 'mlruns.db'} is not writable — fix its permissions or pass another --tracking-uri"
        ]
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)

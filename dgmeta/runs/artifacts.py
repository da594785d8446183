"""What a run leaves behind: its MLflow tags and params, ``config.json``, ``results.json``, the saved
network and plots, and the :class:`RunResult` read back from them when a resumed command skips a
finished job."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgmeta.evaluation.selection import SELECTION_RULE
from dgmeta.runs.config import RunConfig
from dgmeta.runs.plan import ResolvedPlan


@dataclass
class RunResult:
    target: str
    seed: int
    run_id: str
    test_acc: float
    selected_step: int
    val_acc: float
    per_domain: dict[str, float]
    model_path: Path | None = None
    oracle_test_acc: float = float("nan")
    images_per_second: float = 0.0
    data_wait_fraction: float = 0.0
    #: target accuracy of the best live checkpoint by source validation (differs from test_acc
    #: when a weight average is the reported model)
    live_test_acc: float = float("nan")


def run_tags(config: RunConfig, plan: ResolvedPlan, **extra) -> dict[str, str]:
    from dgmeta.tracking.mlflow_run import git_commit

    tags = {
        "dgmeta.dataset": config.dataset,
        "dgmeta.base": config.base,
        "dgmeta.meta": config.meta,
        "dgmeta.protocol": plan.protocol,
        "dgmeta.split": plan.dataset.split_kind,
        "dgmeta.selection": SELECTION_RULE,
        "dgmeta.backbone": config.backbone,
        "dgmeta.weights": config.weights,
        "dgmeta.git_commit": git_commit(),
        "dgmeta.data_fingerprint": plan.dataset.fingerprint(),
    }
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def flat_params(config: RunConfig, hparams: dict, **extra) -> dict[str, object]:
    params = {k: v for k, v in config.to_dict().items() if k not in ("hparams", "targets", "seeds", "fewshot")}
    params.update({f"hp.{k}": v for k, v in hparams.items()})
    params.update(extra)
    return params


def device_params(device: torch.device) -> dict[str, str]:
    """The device a run computed on, for MLflow next to the ``device`` it was asked for."""
    from dgmeta.device import device_label

    return {"device.resolved": device_label(device)}


def finished_result(tracking, run, target: str, seed: int) -> RunResult:
    """The result of a job that finished before its command was resumed, read back from its artifacts."""
    run_id = run.info.run_id
    out = tempfile.mkdtemp(prefix="dgmeta-resume-")
    results = json.loads(Path(tracking.client.download_artifacts(run_id, "results.json", out)).read_text())
    model_path = Path(tracking.client.download_artifacts(run_id, "model/network.pt", out))
    weights = results.get("weights", "live")
    selected = next(c for c in results["checkpoints"] if c["step"] == results["selected_step"] and c.get("weights", "live") == weights)
    return RunResult(
        target, seed, run_id, results["test_acc"], results["selected_step"], selected["val_mean"], results["per_domain"],
        model_path, float("nan") if results["oracle_test_acc"] is None else results["oracle_test_acc"], results["images_per_second"], results["data_wait_fraction"],
    )


def log_artifacts(child, config, plan, learner, data, outcome, target, seed, per_domain) -> Path:
    from dgmeta.models.checkpoint import save_network
    from dgmeta.models.network import DomainNetwork
    from dgmeta.tracking.mlflow_model import log_network_model

    out = Path(tempfile.mkdtemp(prefix="dgmeta-run-"))
    child.log_text(json.dumps({**config.to_dict(), "protocol": plan.protocol, "target": target, "seed": seed, "hparams_resolved": plan.hparams}, indent=2, default=str), "config.json")
    results = {
        "target": target,
        "seed": seed,
        "protocol": plan.protocol,
        "split": plan.dataset.split_kind,
        "selection": SELECTION_RULE,
        "test_acc": per_domain[target],
        "selected_step": outcome.history.selected().step,
        "per_domain": per_domain,
        "checkpoints": outcome.history.to_dict(),
        "oracle_test_acc_label": "oracle (selected on the target; never reported as test_acc)",
        "oracle_test_acc": outcome.history.oracle().test[target] if outcome.history.oracle() is not None else None,
        "weights": outcome.history.selected().weights,
        "images_per_second": outcome.images_per_second,
        "data_wait_fraction": outcome.data_wait_fraction,
    }
    learned = learner.report(list(plan.dataset.classes))
    if learned:
        results["learner"] = learned
    child.log_text(json.dumps(results, indent=2), "results.json")
    network = DomainNetwork.__new__(DomainNetwork)
    torch.nn.Module.__init__(network)
    network.featurizer = learner.featurizer
    network.classifier = learner.export_classifier()
    network.feature_dim = learner.feature_dim
    meta = {
        "backbone": config.backbone,
        "num_classes": len(plan.dataset.classes),
        "classes": list(plan.dataset.classes),
        "image_size": config.image_size,
        "dataset": config.dataset,
        "domains": list(plan.dataset.domains),
        "train_domains": list(data.sources),
        "target": target,
        "seed": seed,
        "base": config.base,
        "meta_mode": config.meta,
        "protocol": plan.protocol,
        "dropout": float(plan.hparams["dropout"]),
        "hparams": dict(plan.hparams),
    }
    model_path = save_network(out / "network.pt", network, meta)
    model_path = log_network_model(child, model_path, network, meta, data.test.images)
    _log_plots(child, out, learner, data, outcome, target, per_domain, config, plan)
    return model_path


def _log_plots(child, out: Path, learner, data, outcome, target, per_domain, config, plan) -> None:
    try:
        from dgmeta.tracking import plots
    except ImportError:
        return
    from dgmeta.evaluation.accuracy import predict_array

    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    paths = [
        plots.plot_domain_accuracy(per_domain, target, plot_dir / "domain_accuracy.png"),
        plots.plot_training_curves(outcome.losses, plot_dir / "training_curves.png"),
    ]
    pred, _ = predict_array(learner, data.test.images, precision=config.precision)
    paths.append(plots.plot_confusion(data.test.labels, pred, list(plan.dataset.classes), plot_dir / "confusion_target.png"))
    # t-SNE on a bounded, seeded subset per domain: features coloured by domain and by class.
    rng = np.random.default_rng(0)
    feats, doms, labs = [], [], []
    domain_arrays = list(zip(data.sources, data.val)) + [(target, data.test)]
    for index, (_, arrays) in enumerate(domain_arrays):
        take = rng.permutation(len(arrays.labels))[:150]
        _, f = predict_array(learner, arrays.images[np.sort(take)], precision=config.precision, return_features=learner.featurizer)
        feats.append(f)
        doms.append(np.full(len(take), index))
        labs.append(arrays.labels[np.sort(take)])
    if sum(len(d) for d in doms) >= 10:
        paths.append(plots.plot_tsne(np.concatenate(feats), np.concatenate(doms), np.concatenate(labs), [d for d, _ in domain_arrays], list(plan.dataset.classes), plot_dir / "tsne.png", seed=0))
    for path in paths:
        if path is not None:
            child.log_artifact(path, "plots")

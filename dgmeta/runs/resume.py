"""Finding the MLflow runs a `dgmeta run ... --resume RUN_ID|auto` continues.

``RUN_ID`` is the parent run of an earlier command or any of its child runs; ``auto`` is the
newest parent run in the experiment with the same config hash that did not finish (RUNNING
after a crash or ``kill -9``, KILLED after a signal, FAILED after an error). The command must
describe the same computation: a different config hash is refused, naming the first option
that differs. Children already FINISHED are skipped; the others continue from their checkpoint
(or from step 0 when none was written) in the same child run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from dgmeta.errors import ConfigError

PARENT_TAG = "mlflow.parentRunId"


@dataclass
class ResumePoint:
    parent: Any  # mlflow.entities.Run
    children: dict[tuple[str, int], Any] = field(default_factory=dict)

    @property
    def parent_run_id(self) -> str:
        return self.parent.info.run_id


def find_resume_point(tracking, config, plan, expected_params: dict[str, object]) -> ResumePoint | None:
    """The parent run to continue, or None for ``--resume auto`` when there is nothing unfinished."""
    client = tracking.client
    config_hash = config.config_hash(protocol=plan.protocol)
    if config.resume == "auto":
        parent = _latest_unfinished(client, tracking.experiment_id, config_hash)
        if parent is None:
            if not config.quiet:
                print(f"--resume auto: no unfinished run with config hash {config_hash}; starting a new run", file=sys.stderr)
            return None
    else:
        parent = _parent_of(client, _get_run(client, config.resume, tracking.uri))
        stored_hash = parent.data.tags.get("dgmeta.config_hash")
        if stored_hash != config_hash:
            raise ConfigError(
                f"run {parent.info.run_id} was started with other options ({_first_difference(parent.data.params, expected_params)})",
                "repeat the options of the original command, or drop --resume to start a new run",
            )
    # new child runs of a resumed parent belong in the parent's experiment, whatever --experiment says
    tracking.experiment_id = parent.info.experiment_id
    return ResumePoint(parent, _children(client, parent))


def _get_run(client, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"--resume {run_id}: no such run in the tracking store {uri}",
            "pass the parent or child run id printed by `dgmeta run`, or --resume auto",
        ) from None


def _parent_of(client, run):
    role = run.data.tags.get("dgmeta.role")
    if role == "child" and PARENT_TAG in run.data.tags:
        return client.get_run(run.data.tags[PARENT_TAG])
    if role != "parent":
        raise ConfigError(
            f"--resume {run.info.run_id}: that run was not made by `dgmeta run`",
            "pass the parent or child run id printed by `dgmeta run`, or --resume auto",
        )
    return run


def _latest_unfinished(client, experiment_id: str, config_hash: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`dgmeta.role` = 'parent' and tags.`dgmeta.config_hash` = '{config_hash}'"
            " and attributes.status != 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _children(client, parent) -> dict[tuple[str, int], Any]:
    """(target, seed) -> child run; a FINISHED one wins over an older unfinished duplicate."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    found: dict[tuple[str, int], Any] = {}
    for run in runs:
        tags = run.data.tags
        if "dgmeta.target" not in tags or "dgmeta.seed" not in tags:
            continue
        key = (tags["dgmeta.target"], int(tags["dgmeta.seed"]))
        if key not in found or found[key].info.status != "FINISHED":
            found[key] = run
    return found


def _first_difference(stored: dict[str, str], expected: dict[str, object]) -> str:
    from dgmeta.runs.config import _NOT_HASHED

    for key, value in expected.items():
        if key in _NOT_HASHED or key not in stored or stored[key] == str(value)[:6000]:
            continue
        flag = f"--set {key[3:]}" if key.startswith("hp.") else f"--{key.replace('_', '-')}"
        return f"{flag} was {stored[key]}, now {value}"
    return "the config hash differs"


def reopen(tracking, run):
    """A :class:`RunLogger` writing into an existing run, marked RUNNING again."""
    from dgmeta.tracking.mlflow_run import RunLogger

    tracking.client.update_run(run.info.run_id, status="RUNNING")
    return RunLogger(tracking.client, run.info.run_id)


def missing_params(run, params: dict[str, object]) -> dict[str, object]:
    """Params not yet on ``run``: MLflow refuses to change a logged value (``resume`` itself differs)."""
    logged = run.data.params if run is not None else {}
    return {k: v for k, v in params.items() if k not in logged}

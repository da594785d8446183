"""`dgmeta retrain SPEC`: train a challenger and promote it only if it beats the champion.

1. Lock the pipeline (a second retrain of the same spec fails at once with one line).
2. Find the champion (alias ``champion`` of the spec's ``register.model_name``). The challenger
   is trained on the champion's targets and seeds, so the comparison is paired and fair; a spec
   whose explicit protocol differs from the champion's is refused before any training.
3. If neither the data fingerprint nor the config hash changed since the champion, there is
   nothing new to learn from: skip (``--force`` retrains anyway).
4. Run the spec's stages plus train and register; the register stage decides (``promotion.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from dgmeta.errors import ConfigError
from dgmeta.locks import pipeline_lock
from dgmeta.orchestration.promotion import SKIPPED, Decision
from dgmeta.orchestration.spec import STAGES, load_pipeline
from dgmeta.orchestration.stages import TrainFn, default_echo, pipeline_config_hash, resolved_protocol, run_pipeline
from dgmeta.runs.config import RunConfig

FingerprintFn = Callable[[RunConfig], str]


def dataset_fingerprint(config: RunConfig) -> str:
    """The same fingerprint training tags its runs with (file list + split files)."""
    from dgmeta.data import create_dataset

    return create_dataset(config.dataset, config.data_root, config.split, seed=0).fingerprint()


def align_with_champion(config: RunConfig, champion) -> None:
    """Evaluate the challenger on the champion's targets and seeds (not part of the config hash)."""
    targets = [t for t in champion.tags.get("targets", "").split(",") if t]
    seeds = [int(s) for s in champion.tags.get("seeds", "").split(",") if s.strip().lstrip("-").isdigit()]
    if targets:
        config.targets = targets
    if seeds:
        config.seeds = seeds
    theirs = champion.tags.get("protocol", "")
    if config.protocol is not None and theirs and resolved_protocol(config) != theirs:
        raise ConfigError(
            f"the spec's protocol {config.protocol} differs from the champion's ({theirs}); the two cannot be compared",
            "register this protocol under another register.model_name, or restore the protocol",
        )


def retrain(
    pipeline: str | Path,
    force: bool = False,
    margin: float | None = None,
    cli_overrides: dict[str, Any] | None = None,
    set_overrides: list[str] | None = None,
    train_fn: TrainFn | None = None,
    fingerprint_fn: FingerprintFn | None = None,
    echo: Callable[[str], None] | None = None,
) -> Decision:
    from dgmeta.tracking.model_registry import CHAMPION, client_for, version_by_alias

    echo = echo or default_echo
    spec = load_pipeline(pipeline)
    if spec.register is None:
        raise ConfigError(f"{pipeline} has no register: section", "add register: {model_name: NAME, margin: 0.5} to retrain it")
    if margin is not None and margin < 0:
        raise ConfigError(f"--margin {margin} is negative", "give percentage points >= 0, e.g. --margin 0.5")
    margin = spec.register.margin if margin is None else margin
    name = spec.register.model_name

    with pipeline_lock(pipeline):
        config = spec.to_run_config(cli_overrides, set_overrides)
        client = client_for(config.tracking_uri)
        champion = version_by_alias(name, CHAMPION, client)
        if champion is not None:
            align_with_champion(config, champion)
            echo(f"champion: {name} v{champion.version} (test_acc {float(champion.tags.get('test_acc', 'nan')) * 100:.2f}%), "
                 f"challenger trains on targets {','.join(config.targets or [])} seeds {','.join(map(str, config.seeds))}")
            if not force:
                fingerprint = (fingerprint_fn or dataset_fingerprint)(config)
                same_data = fingerprint == champion.tags.get("data_fingerprint")
                same_config = pipeline_config_hash(config) == champion.tags.get("config_hash")
                if same_data and same_config:
                    reason = f"data fingerprint and config hash unchanged since champion v{champion.version}"
                    echo(f"skipped: {reason} (pass --force to retrain anyway)")
                    return Decision(SKIPPED, reason, name, margin, champion_version=str(champion.version))
        else:
            echo(f"no champion for {name} yet: the challenger will be promoted if it trains successfully")
        stages = [s for s in STAGES if s in set(spec.stages) | {"train", "register"}]
        outcome = run_pipeline(spec, config, train_fn=train_fn, stages=stages, margin=margin, echo=echo)
        return outcome["register"]

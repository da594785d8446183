"""Every hyperparameter declares its domain; overrides outside it are refused with the allowed values,
before any run exists (the CLI cases are in tests/test_bad_inputs.py)."""

from __future__ import annotations

import pytest

from dgmeta.errors import ConfigError
from dgmeta.hparams import apply_overrides, default_hparams, hparam_table, random_hparams
from dgmeta.learners.registry import learner_names
from dgmeta.resources import check_step_memory, step_input_bytes
from dgmeta.runs.config import RunConfig
from tests.helpers import meta_modes

BASES = learner_names()
METAS = meta_modes()


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("meta", METAS)
def test_every_hyperparameter_declares_a_domain_that_holds_its_default_and_draws(base, meta):
    for key, spec in hparam_table(base, meta).items():
        assert spec.domain is not None, f"{key} has no declared domain"
        assert spec.domain.allows(spec.default), key
    for seed in range(20):
        for key, value in random_hparams(base, meta, seed).items():
            assert hparam_table(base, meta)[key].domain.allows(value), (key, value)


@pytest.mark.parametrize("override, message", [
    ("lr=-0.1", "--set lr=-0.1: lr must be a number > 0"),
    ("lr=0", "--set lr=0: lr must be a number > 0"),
    ("lr=nan", "--set lr=nan: lr must be a number > 0"),
    ("lr=inf", "--set lr=inf: lr must be a number > 0"),
    ("momentum=-0.5", "--set momentum=-0.5: momentum must be a number in [0, 1)"),
    ("momentum=1", "--set momentum=1: momentum must be a number in [0, 1)"),
    ("weight_decay=-1e-4", "--set weight_decay=-1e-4: weight_decay must be a number >= 0"),
    ("dropout=1.0", "--set dropout=1.0: dropout must be a number in [0, 1)"),
    ("dropout=-0.1", "--set dropout=-0.1: dropout must be a number in [0, 1)"),
    ("grad_clip=-1", "--set grad_clip=-1: grad_clip must be a number >= 0"),
    ("warmup_steps=-10", "--set warmup_steps=-10: warmup_steps must be an integer >= 0"),
    ("lr_schedule=linear", "--set lr_schedule=linear: lr_schedule must be one of: cosine, constant, dann"),
    ("lr_schedule=Cosine", "--set lr_schedule=Cosine: lr_schedule must be one of: cosine, constant, dann"),
    ("augment=off", "--set augment=off: augment must be one of: standard, none"),
    ("optimizer=adamw", "--set optimizer=adamw: optimizer must be one of: adam, sgd"),
    ("freeze_levels=-1", "--set freeze_levels=-1: freeze_levels must be an integer >= 0"),
    ("ema_decay=1", "--set ema_decay=1: ema_decay must be a number in (0, 1)"),
    ("ema_decay=0", "--set ema_decay=0: ema_decay must be a number in (0, 1)"),
    ("swad_converge=0", "--set swad_converge=0: swad_converge must be an integer >= 1"),
    ("swad_tolerance=-2", "--set swad_tolerance=-2: swad_tolerance must be an integer >= 1"),
    ("swad_tolerance_ratio=-0.1", "--set swad_tolerance_ratio=-0.1: swad_tolerance_ratio must be a number >= 0"),
    ("head_lr_mult=0", "--set head_lr_mult=0: head_lr_mult must be a number > 0"),
])
def test_common_overrides_outside_their_domain_are_refused(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(default_hparams("erm"), [override])
    key = override.split("=")[0]
    assert info.value.message == message
    assert info.value.hint.startswith(f"pass e.g. --set {key}=")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("base, meta, override", [
    ("dann", "none", "disc_dropout=1"),
    ("dann", "none", "disc_layers=0"),
    ("dann", "none", "lambda_max=-1"),
    ("mcd", "none", "num_k=0"),
    ("jigen", "none", "unshuffled_ratio=1.5"),
    ("jigen", "none", "grid=1"),
    ("erm", "init", "meta_order=3"),
    ("erm", "init", "meta_schedule=onlin"),
    ("erm", "init", "inner_steps=0"),
    ("erm", "init", "meta_batch_fraction=0"),
    ("erm", "critic", "critic_lr=-1e-3"),
    ("erm", "critic", "critic_hidden=0"),
])
def test_learner_and_meta_overrides_outside_their_domain_are_refused(base, meta, override):
    with pytest.raises(ConfigError, match=rf"^--set {override}: {override.split('=')[0]} must be "):
        apply_overrides(default_hparams(base, meta), [override])


def test_values_inside_the_domain_pass_and_ints_become_floats():
    hparams = apply_overrides(default_hparams("erm"), ["lr=1e6", "momentum=0", "dropout=0.5", "augment=none", "lr_schedule=dann", "grad_clip=0"])
    assert (hparams["lr"], hparams["momentum"], hparams["augment"], hparams["lr_schedule"]) == (1e6, 0.0, "none", "dann")
    assert apply_overrides(default_hparams("erm"), {"lr": 1})["lr"] == 1.0 and isinstance(apply_overrides(default_hparams("erm"), {"lr": 1})["lr"], float)
    with pytest.raises(ConfigError, match="warmup_steps must be an integer"):
        apply_overrides(default_hparams("erm"), {"warmup_steps": 2.5})  # a dict override is not parsed, still checked


@pytest.mark.parametrize("seeds, message", [
    ([-1], "--seed -1 is outside 0..4294967295"),
    ([2**32], "--seed 4294967296 is outside 0..4294967295"),
    ([0, 3, 0], "--seed 0 is given more than once"),
])
def test_seeds_are_checked(seeds, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        RunConfig(seeds=seeds).validate()
    RunConfig(seeds=[0, 2**32 - 1]).validate()


def test_repeated_targets_and_empty_experiment_are_refused():
    with pytest.raises(ConfigError, match="^--target photo is given more than once"):
        RunConfig(targets=["photo", "sketch", "photo"]).validate()
    for name in ("", "   "):
        with pytest.raises(ConfigError, match="^the --experiment name is empty"):
            RunConfig(experiment=name).validate()


def test_memory_bound_refuses_only_what_cannot_fit():
    gib = 2**30
    check_step_memory(224, 32, 32 * 4, memory=1 * gib)  # the benchmarks' size fits in 1 GiB by this count
    assert step_input_bytes(224, 128) < 0.1 * gib
    with pytest.raises(ConfigError, match=r"^--image-size 20000 with --batch-size 32 \(96 images a step\) needs at least 572\.2 GiB .* this machine has 64\.0 GiB"):
        check_step_memory(20000, 32, 96, memory=64 * gib)
    with pytest.raises(ConfigError, match="needs at least"):
        check_step_memory(224, 10**7, 3 * 10**7, memory=64 * gib)

"""MetaDA init and Feature-Critic steppers (dgmeta/meta/init.py, critic.py, __init__.py) on tiny models."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch
from dgmeta.meta import EpisodicStepper, create_stepper, meta_term_names, total_calls
from dgmeta.meta.critic import CriticTerm, FeatureCritic
from dgmeta.meta.episodes import Episode, EpisodeSampler, split_batch
from dgmeta.meta.gradient import functional_features, meta_gradient, scratch_buffers
from dgmeta.meta.init import MetaInitTerm
from dgmeta.training.stepper import StageStepper
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import DTYPE, accuracy, base_gradient, blobs, make_learner, snapshot

S = 3
PLAIN_SGD = {"optimizer": "sgd", "freeze_bn": False, "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant", "head_lr_mult": 1.0, "lr": 0.1}


def hparams(meta: str, base: str = "erm", **overrides) -> dict:
    defaults = default_hparams(base, meta)
    # the exact-arithmetic checks below rebuild one sampled episode from the whole batch
    # (the all-splits average has its own tests in test_meta_faithful.py)
    one_episode = {"meta_batch_fraction": 1.0, "meta_splits": "sample"} if "meta_batch_fraction" in defaults else {}
    return apply_overrides(defaults, {**PLAIN_SGD, **one_episode, **overrides})


def first_episode(batch, seed=0, held_out=1):
    train_ids, test_ids = EpisodeSampler(S, held_out, seed)()
    return split_batch(batch, train_ids, test_ids)


# ------------------------------------------------------------------ registry
def test_create_stepper_picks_the_mode_and_counts_sources_from_the_context():
    learner = make_learner("erm", protocol="ssda")
    assert type(create_stepper("none", learner, hparams("none"), 10)) is StageStepper
    init = create_stepper("init", learner, hparams("init"), 10)
    assert type(init) is EpisodicStepper and init.sampler.source_domains == S  # the shots' index S excluded
    assert isinstance(init.term("init"), MetaInitTerm)
    critic = create_stepper("critic", learner, hparams("critic"), 10, num_sources=S)
    assert type(critic) is EpisodicStepper and isinstance(critic.term("critic"), CriticTerm)
    both = create_stepper("init+critic", learner, hparams("init+critic"), 10, num_sources=S)
    assert type(both) is EpisodicStepper and [t.name for t in both.terms] == ["init", "critic"]
    reversed_order = create_stepper("critic+init", learner, hparams("critic+init"), 10, num_sources=S)
    assert [t.name for t in reversed_order.terms] == ["critic", "init"]  # composed generically, in the order given
    assert meta_term_names() == ["critic", "init"]
    for bad in ("maml", "init+init", "init+maml"):
        with pytest.raises(ConfigError):
            create_stepper(bad, learner, hparams("none"), 10)


def test_bad_meta_hyperparameters_are_config_errors():
    learner = make_learner("erm")
    for bad in ({"meta_order": 3}, {"meta_schedule": "sometimes"}, {"inner_steps": 0}, {"meta_test_domains": 3}):
        with pytest.raises(ConfigError):
            create_stepper("init", learner, hparams("init", **bad), 10, S)


# ------------------------------------------------------------------ MetaDA init
@pytest.mark.parametrize("order", [1, 2])
def test_online_step_is_base_gradient_plus_weighted_meta_gradient(order):
    hp = hparams("init", meta_order=order, meta_weight=0.7, inner_lr=2.0)  # 2 x lr 0.1: an inner step of 0.2
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=1)
    stepper = create_stepper("init", learner, hp, 10, S, seed=5)
    logs = stepper.step(batch)

    train, test = first_episode(batch, seed=5)
    g_meta = meta_gradient(reference, train, test, 0.0, 0.2, 1, order).grads
    g_base = base_gradient(reference, batch)
    for name, before in snapshot(reference).items():
        expected = before - 0.1 * (g_base[name] + 0.7 * g_meta[name])
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name
    assert logs["meta/grad_norm"] > 0 and logs["meta/val_loss"] > 0 and "loss" in logs


def test_offline_schedule_meta_steps_first_then_base_steps():
    hp = hparams("init", meta_schedule="offline", offline_meta_steps=3, meta_lr=0.05, inner_lr=2.0)  # inner step 0.2
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=2)
    stepper = create_stepper("init", learner, hp, 10, S, seed=1)
    assert stepper.total_calls == total_calls(stepper) == 13

    logs = stepper.step(batch)
    train, test = first_episode(batch, seed=1)
    g_meta = meta_gradient(reference, train, test, 0.0, 0.2, 1, 1).grads
    for name, before in snapshot(reference).items():
        assert torch.allclose(dict(learner.named_parameters())[name], before - 0.05 * g_meta[name], rtol=1e-12), name
    assert "loss" not in logs and logs["meta/val_loss"] > 0
    assert stepper.step_count == 0 and stepper.progress() == 0.0
    assert all(not opt.state for opt in stepper.optimizers.values())  # base optimizers untouched

    stepper.step(batch)
    stepper.step(batch)
    assert stepper.step_count == 0 and not stepper.in_meta_phase()
    logs = stepper.step(batch)
    assert "loss" in logs and "meta/val_loss" not in logs and stepper.step_count == 1


def test_offline_meta_training_lowers_the_held_out_loss_after_adaptation():
    hp = hparams("init", meta_schedule="offline", offline_meta_steps=30, meta_lr=0.1, inner_lr=1.0)  # inner step 0.1
    learner = make_learner("erm")
    stepper = create_stepper("init", learner, hp, 10, S, seed=0)
    losses = [stepper.step(blobs(S, 9, seed=100 + step))["meta/val_loss"] for step in range(30)]
    assert sum(losses[-6:]) < 0.5 * sum(losses[:6])


@pytest.mark.parametrize("kind,protocol,order", [("erm", "dg", 1), ("erm", "dg", 2), ("two_heads", "msda", 1)])
def test_online_meta_init_training_beats_chance_on_an_unseen_domain(kind, protocol, order):
    hp = hparams("init", meta_order=order, inner_lr=2.0, lr=0.05)  # inner step 0.1
    learner = make_learner(kind, protocol=protocol, seed=3)
    stepper = create_stepper("init", learner, hp, 40, S, seed=0)
    target = blobs(1, 90, seed=999, first_domain=S, shift=1.0)
    assert accuracy(learner, target) < 0.6
    for step in range(40):
        batch = blobs(S, 9, seed=step)
        if protocol != "dg":
            batch = batch.with_target(blobs(1, 9, seed=500 + step, first_domain=S, shift=1.0).x)
        logs = stepper.step(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert accuracy(learner, target) > 0.9  # 3 classes: chance is 1/3


def test_non_finite_meta_loss_is_a_training_error():
    learner = make_learner("erm")
    stepper = create_stepper("init", learner, hparams("init", inner_lr=1e300, lr=1e10), 10, S)  # each finite, the inner step overflows
    with pytest.raises(TrainingError):
        stepper.step(blobs(S, 6, seed=0))


# ------------------------------------------------------------------ Feature-Critic
def test_feature_critic_is_a_non_negative_set_function():
    critic = FeatureCritic(4, hidden=8).to(DTYPE)
    features = torch.randn(10, 4, dtype=DTYPE)
    value = critic(features)
    assert value.shape == () and value >= 0
    assert torch.allclose(critic(features[torch.randperm(10)]), value)  # order of the batch is irrelevant


def test_critic_step_trains_the_model_on_base_loss_plus_weighted_critic_on_the_full_batch():
    hp = hparams("critic", critic_weight=0.5, critic_lr=0.01, critic_hidden=8)
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    stepper = create_stepper("critic", learner, hp, 10, S, seed=0)
    critic_before = snapshot(stepper.term("critic").critic)
    batch = blobs(S, 6, seed=4)
    logs = stepper.step(batch)

    changed = [n for n, p in stepper.term("critic").critic.named_parameters() if not torch.equal(p, critic_before[n])]
    assert changed  # the critic took its Adam step ...
    params = dict(reference.named_parameters())
    aux = 0.5 * stepper.term("critic").critic(functional_features(reference, params, scratch_buffers(reference), batch.x))
    g_aux = dict(zip(params, torch.autograd.grad(aux, list(params.values()), allow_unused=True)))
    g_base = base_gradient(reference, batch)
    for name, before in snapshot(reference).items():
        extra = 0.0 if g_aux[name] is None else g_aux[name]
        expected = before - 0.1 * (g_base[name] + extra)  # ... and the model used the updated critic
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name
    assert logs["critic/aux_loss"] == pytest.approx(float(aux.detach()))
    assert not any(k.startswith("critic") or "critic" in k for k in learner.state_dict())  # not part of the network
    assert set(stepper.state_dict()["meta"]["terms"]["critic"]) == {"critic", "optimizer"}


def spurious_sources(per_domain: int, generator: torch.Generator) -> Batch:
    """Two weakly informative dims shared by all domains, plus one spurious dim per source: strongly
    label-correlated in its own domain, loud noise (std 3) in all others. One SGD step on some
    sources leans on their spurious dims, which are noise on the held-out source, so a penalty that
    shrinks features along high-variance inputs (e.g. a feature-norm penalty) helps there."""
    xs, ys, ds = [], [], []
    for d in range(S):
        y = torch.randint(0, 2, (per_domain,), generator=generator)
        sign = (2 * y - 1).to(DTYPE)
        shared = 0.7 * sign[:, None] + torch.randn(per_domain, 2, generator=generator, dtype=DTYPE)
        spurious = 3.0 * torch.randn(per_domain, S, generator=generator, dtype=DTYPE)
        spurious[:, d] = 1.5 * sign + 0.3 * torch.randn(per_domain, generator=generator, dtype=DTYPE)
        xs.append(torch.cat([shared, spurious], 1))
        ys.append(y)
        ds.append(torch.full((per_domain,), d))
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(ds))


def mean_meta_loss(term, learner, batches, step_sizes) -> float:
    """The critic's meta-objective averaged over fixed episodes, without training it."""
    state = copy.deepcopy(term.state_dict())
    total = 0.0
    for batch, (train_ids, test_ids) in batches:
        episode = Episode(train_ids, test_ids, *split_batch(batch, train_ids, test_ids))
        total += term.update_critic(learner, episode, 0.0, step_sizes)["critic/meta_loss"]
        term.load_state_dict(copy.deepcopy(state))
    return total / len(batches)


def test_critic_learns_a_regulariser_that_helps_the_held_out_source():
    hp = hparams("critic", lr=0.05, critic_lr=1e-3, critic_inner_lr=10.0, critic_hidden=32, critic_weight=1.0)  # alpha 0.5
    learner = make_learner("erm", in_dim=2 + S, feature_dim=8, num_classes=2, activation=False, hparams=hp)
    stepper = create_stepper("critic", learner, hp, 160, S, seed=0)
    untrained = copy.deepcopy(stepper.term("critic"))
    generator = torch.Generator().manual_seed(0)
    meta_losses = [stepper.step(spurious_sources(16, generator))["critic/meta_loss"] for _ in range(160)]

    assert any(not torch.equal(p, q) for p, q in zip(stepper.term("critic").critic.parameters(), untrained.critic.parameters()))
    early, late = sum(meta_losses[:40]) / 40, sum(meta_losses[-40:]) / 40
    assert late < early and late < -0.01
    # Same model, same episodes: the trained critic improves held-out loss, the untrained one barely moves it.
    probe_generator = torch.Generator().manual_seed(42)
    probes = [(spurious_sources(16, probe_generator), ([0, 1, 2][:d] + [0, 1, 2][d + 1 :], [d])) for d in range(S) for _ in range(4)]
    trained_value = mean_meta_loss(stepper.term("critic"), learner, probes, stepper.step_sizes())
    untrained_value = mean_meta_loss(untrained, learner, probes, stepper.step_sizes())
    assert trained_value < -0.01 and trained_value < untrained_value - 0.01


# ------------------------------------------------------------------ init + critic, resume
def test_init_plus_critic_adds_both_terms_to_the_same_step():
    hp = hparams("init+critic", meta_weight=0.5, critic_weight=0.3, inner_lr=2.0, critic_hidden=8)  # inner step 0.2
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=6)
    stepper = create_stepper("init+critic", learner, hp, 10, S, seed=2)
    logs = stepper.step(batch)
    assert {"meta/val_loss", "meta/grad_norm", "critic/meta_loss", "critic/aux_loss", "loss"} <= set(logs)

    train, test = first_episode(batch, seed=2)
    g_meta = meta_gradient(reference, train, test, 0.0, 0.2, 1, 1).grads
    params = dict(reference.named_parameters())
    aux = 0.3 * stepper.term("critic").critic(functional_features(reference, params, scratch_buffers(reference), batch.x))
    g_aux = dict(zip(params, torch.autograd.grad(aux, list(params.values()), allow_unused=True)))
    g_base = base_gradient(reference, batch)
    for name, before in snapshot(reference).items():
        extra = 0.0 if g_aux[name] is None else g_aux[name]
        expected = before - 0.1 * (g_base[name] + 0.5 * g_meta[name] + extra)
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize(
    "meta,overrides",
    [
        ("init", {"meta_order": 2}),
        ("init", {"meta_schedule": "offline", "offline_meta_steps": 2}),
        ("critic", {}),
        ("init+critic", {"meta_schedule": "offline", "offline_meta_steps": 2, "momentum": 0.9}),
    ],
)
def test_resume_from_state_dict_continues_identically(meta, overrides):
    hp = hparams(meta, **overrides, **({"critic_hidden": 8} if "critic" in meta else {}))
    batches = [blobs(S, 6, seed=10 + i).with_target(blobs(1, 6, seed=50 + i, first_domain=S).x) for i in range(6)]

    def fresh():
        learner = make_learner("two_heads", protocol="msda")
        return learner, create_stepper(meta, learner, hp, 10, S, seed=3)

    learner, stepper = fresh()
    for batch in batches[:3]:
        stepper.step(batch)
    buffer = io.BytesIO()
    torch.save({"learner": learner.state_dict(), "stepper": stepper.state_dict()}, buffer)
    for batch in batches[3:]:
        stepper.step(batch)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # checkpoints are loaded safely
    resumed_learner, resumed = fresh()
    resumed_learner.load_state_dict(saved["learner"])
    resumed.load_state_dict(saved["stepper"])
    for batch in batches[3:]:
        resumed.step(batch)
    for (name, p), q in zip(learner.named_parameters(), resumed_learner.parameters()):
        assert torch.equal(p, q), name
    for term, resumed_term in zip(stepper.terms, resumed.terms):
        if hasattr(term, "critic"):
            assert all(torch.equal(p, q) for p, q in zip(term.critic.parameters(), resumed_term.critic.parameters()))

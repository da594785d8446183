"""The reference-faithful meta defaults and options (issue 17) on tiny models, against independent
computations: the one-split default and the all-splits average, tied inner step sizes, the inner_lr=0 control, the Adam
inner step, the shortest-path meta-gradient, MetaDA's SSDA episode, episode batch norm and the
Feature-Critic warm start."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners.base import Batch
from dgmeta.meta import create_stepper
from dgmeta.meta.episodes import split_batch, target_shot_episode
from dgmeta.meta.gradient import inner_adapt, meta_gradient, trainable_params
from test_meta_fixtures import single_thread  # noqa: F401  (autouse)
from test_meta_fixtures import DTYPE, base_gradient, blobs, make_learner, snapshot

S = 3
LR = 0.1
PLAIN_SGD = {"optimizer": "sgd", "freeze_bn": False, "momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant", "head_lr_mult": 1.0, "lr": LR}


def hparams(meta: str, **overrides) -> dict:
    return apply_overrides(default_hparams("erm", meta), {**PLAIN_SGD, **overrides})


def held_out_gradient(learner, batch: Batch) -> dict[str, torch.Tensor]:
    names, params = zip(*trainable_params(learner).items())
    loss = F.cross_entropy(learner(batch.x), batch.y)
    return dict(zip(names, torch.autograd.grad(loss, params)))


# ------------------------------------------------------------------ the all-splits average
def test_all_splits_average_the_meta_term_over_every_held_out_split():
    hp = hparams("init", meta_weight=0.7, inner_lr=2.0, meta_splits="all")
    assert default_hparams("erm", "init")["meta_batch_fraction"] == 1.0
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=1)
    logs = create_stepper("init", learner, hp, 10, S, seed=5).step(batch)
    assert logs["meta/episodes"] == S

    explicit = [([0, 1], [2]), ([0, 2], [1]), ([1, 2], [0])]  # written out, not produced by the code under test
    per_split = [meta_gradient(reference, *split_batch(batch, tr, te), 0.0, 2.0 * LR, 1, 1).grads for tr, te in explicit]
    g_base = base_gradient(reference, batch)
    for name, before in snapshot(reference).items():
        mean = sum(g[name] for g in per_split) / len(per_split)
        expected = before - LR * (g_base[name] + 0.7 * mean)
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name
    # the splits really differ, so an average over fewer of them would not pass the check above
    assert float((per_split[0]["classifier.weight"] - per_split[1]["classifier.weight"]).norm()) > 1e-3


def test_default_term_is_the_meta_gradient_of_one_held_out_split_a_step():
    assert default_hparams("erm", "init")["meta_splits"] == "sample"
    hp = hparams("init", meta_weight=0.7, inner_lr=2.0)
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=1)
    twin = create_stepper("init", copy.deepcopy(learner), hp, 10, S, seed=5)
    held_out = list(twin.next_episodes(batch)[0].meta_test_ids)
    logs = create_stepper("init", learner, hp, 10, S, seed=5).step(batch)
    assert logs["meta/episodes"] == 1

    meta_train = [d for d in range(S) if d not in held_out]
    g_meta = meta_gradient(reference, *split_batch(batch, meta_train, held_out), 0.0, 2.0 * LR, 1, 1).grads
    g_base = base_gradient(reference, batch)
    for name, before in snapshot(reference).items():
        expected = before - LR * (g_base[name] + 0.7 * g_meta[name])
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name


def test_sampled_splits_cycle_so_their_mean_over_a_round_is_the_all_splits_mean():
    learner = make_learner("erm")
    batch = blobs(S, 6, seed=2)
    sampler_stepper = create_stepper("init", learner, hparams("init", meta_splits="sample"), 10, S, seed=3)
    all_stepper = create_stepper("init", learner, hparams("init", meta_splits="all"), 10, S, seed=3)
    sampled = [tuple(sampler_stepper.next_episodes(batch)[0].meta_test_ids) for _ in range(S)]
    assert sorted(sampled) == [(0,), (1,), (2,)]
    assert sorted(tuple(e.meta_test_ids) for e in all_stepper.next_episodes(batch)) == [(0,), (1,), (2,)]


# ------------------------------------------------------------------ tied step sizes
def test_inner_step_sizes_follow_each_groups_outer_learning_rate():
    hp = hparams("init", head_lr_mult=10.0, lr_schedule="cosine", inner_lr=0.5)
    learner = make_learner("erm")
    stepper = create_stepper("init", learner, hp, 10, S, seed=0)
    sizes = stepper.step_sizes()
    assert sizes["featurizer.0.weight"] == pytest.approx(LR) and sizes["classifier.weight"] == pytest.approx(10 * LR)
    stepper.step(blobs(S, 6, seed=0))
    stepper.step(blobs(S, 6, seed=1))  # this step's schedule factor: cos at progress 0.1
    factor = 0.5 * (1 + math.cos(math.pi * 0.1))
    sizes = stepper.step_sizes()
    assert sizes["featurizer.0.weight"] == pytest.approx(LR * factor) and sizes["classifier.weight"] == pytest.approx(10 * LR * factor)

    # the term steps each parameter by inner_lr x its own size: against a plain per-group SGD step
    episode = stepper.next_episodes(blobs(S, 6, seed=7))[0]
    theta = snapshot(learner)
    alphas = {n: 0.5 * s for n, s in sizes.items()}
    adapted = inner_adapt(learner, theta, episode.meta_train, 0.0, alphas, 1, create_graph=False).params
    model = copy.deepcopy(learner)
    opt = torch.optim.SGD([{"params": model.featurizer.parameters(), "lr": 0.5 * LR * factor},
                           {"params": model.classifier.parameters(), "lr": 5 * LR * factor}])
    model.zero_grad(set_to_none=True)  # the copy carries the last step's gradients
    model(episode.meta_train, stage="main").loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.allclose(adapted[name], p, rtol=1e-12, atol=1e-14), name
    for name in ("featurizer.0.weight", "classifier.weight"):  # both groups really moved
        assert not torch.allclose(adapted[name], theta[name])


def test_inner_lr_zero_is_the_extra_supervised_term_control():
    hp = hparams("init", inner_lr=0.0, meta_weight=1.0, meta_splits="all")
    learner = make_learner("erm")
    reference = copy.deepcopy(learner).train()
    batch = blobs(S, 6, seed=3)
    create_stepper("init", learner, hp, 10, S, seed=0).step(batch)
    g_base = base_gradient(reference, batch)
    held_out = [held_out_gradient(reference, batch.select(batch.domain == d)) for d in range(S)]
    for name, before in snapshot(reference).items():
        expected = before - LR * (g_base[name] + sum(g[name] for g in held_out) / S)
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name


def test_adam_inner_step_is_a_fresh_adams_first_step():
    learner = make_learner("erm")
    batch = blobs(S, 6, seed=4)
    theta = snapshot(learner)
    adapted = inner_adapt(learner, theta, batch, 0.0, 0.01, 1, create_graph=False, rule="adam").params
    model = copy.deepcopy(learner)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(batch, stage="main").loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.allclose(adapted[name], p, rtol=1e-9, atol=1e-12), name
    # the defaults pick it for an Adam outer optimizer, plain SGD for SGD
    adam_term = create_stepper("init", make_learner("erm"), apply_overrides(default_hparams("erm", "init"), {}), 10, S).term("init")
    sgd_term = create_stepper("init", make_learner("erm"), hparams("init"), 10, S).term("init")
    assert (adam_term.rule, sgd_term.rule) == ("adam", "sgd")


# ------------------------------------------------------------------ shortest path
def test_shortest_path_is_the_path_sum_of_gradients():
    learner = make_learner("erm")
    learner.train()
    batch = blobs(S, 6, seed=5)
    train, test = split_batch(batch, [0, 2], [1])
    alpha = 0.3
    result = meta_gradient(learner, train, test, 0.0, alpha, 1, 1, method="shortest_path").grads
    # k = 1: grad L_train(theta) + grad L_val(theta'), theta' one SGD step away (first-order MLDG)
    g_train = base_gradient(copy.deepcopy(learner), train)
    model = copy.deepcopy(learner)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.sub_(alpha * g_train[name])
    g_val = held_out_gradient(model, test)
    for name in g_train:
        assert torch.allclose(result[name], g_train[name] + g_val[name], rtol=1e-10, atol=1e-13), name
    # ... which is the (theta - theta_end) / alpha of the episode's whole SGD path
    with torch.no_grad():
        end = {n: p - alpha * g_val[n] for n, p in model.named_parameters()}
    for name, start in snapshot(learner).items():
        assert torch.allclose((start - end[name]) / alpha, result[name], rtol=1e-8, atol=1e-10), name
    fomaml = meta_gradient(learner, train, test, 0.0, alpha, 1, 1).grads
    assert float((fomaml["classifier.weight"] - result["classifier.weight"]).norm()) > 1e-3


def test_shortest_path_needs_first_order():
    with pytest.raises(ConfigError):
        create_stepper("init", make_learner("erm"), hparams("init", meta_update="shortest_path", meta_order=2), 10, S)


# ------------------------------------------------------------------ MetaDA's SSDA episode
def ssda_batch(seed: int = 0) -> tuple[Batch, Batch, torch.Tensor]:
    sources = blobs(S, 6, seed=seed)
    shots = blobs(1, 3, seed=seed + 1, first_domain=S)
    unlabelled = blobs(1, 8, seed=seed + 2, first_domain=S).x
    batch = Batch(torch.cat([sources.x, shots.x]), torch.cat([sources.y, shots.y]), torch.cat([sources.domain, shots.domain]), unlabelled)
    return batch, shots, unlabelled


def test_target_shot_episode_adapts_toward_the_unlabelled_target_and_scores_the_shots():
    batch, shots, unlabelled = ssda_batch()
    episode = target_shot_episode(batch, S)
    assert torch.equal(episode.meta_test.x, shots.x) and torch.equal(episode.meta_test.y, shots.y)
    assert episode.meta_test.target_x is None
    assert torch.equal(episode.meta_train.target_x, unlabelled)  # images only: Batch has no field for their labels
    assert (episode.meta_train.domain < S).all() and len(episode.meta_train) == S * 6
    assert torch.equal(episode.meta_train.y, batch.y[: S * 6])  # only the sources' own labels

    hp = hparams("init", meta_episode="target_shots", inner_lr=2.0, meta_weight=1.0)
    learner = make_learner("two_heads", protocol="ssda")
    reference = copy.deepcopy(learner).train()
    stepper = create_stepper("init", learner, hp, 10, S, seed=0)
    logs = stepper.step(batch)
    assert logs["meta/episodes"] == 1
    expected_meta = meta_gradient(reference, episode.meta_train, episode.meta_test, 0.0, 2.0 * LR, 1, 1).grads
    got = stepper.term("init").meta_gradient(reference, episode, 0.0, {n: LR for n in expected_meta}).grads
    for name in expected_meta:
        assert torch.allclose(got[name], expected_meta[name], rtol=1e-12), name


@pytest.mark.parametrize("shots_in_base", [True, False])
def test_shots_in_base_decides_whether_the_base_step_trains_on_the_target_shots(shots_in_base):
    batch, _, _ = ssda_batch()
    hp = hparams("init", meta_episode="target_shots", inner_lr=2.0, meta_weight=0.7, meta_shots_in_base=shots_in_base)
    learner = make_learner("erm", protocol="ssda")
    reference = copy.deepcopy(learner).train()
    create_stepper("init", learner, hp, 10, S, seed=0).step(batch)

    sources_only = batch.select(batch.domain < S)  # written out: every labelled domain but the shots' index S
    g_base = base_gradient(reference, batch if shots_in_base else sources_only)
    episode = target_shot_episode(batch, S)  # the meta term scores the shots either way
    g_meta = meta_gradient(reference, episode.meta_train, episode.meta_test, 0.0, 2.0 * LR, 1, 1).grads
    for name, before in snapshot(reference).items():
        expected = before - LR * (g_base[name] + 0.7 * g_meta[name])
        assert torch.allclose(dict(learner.named_parameters())[name], expected, rtol=1e-10, atol=1e-12), name
    # the shots do move the base gradient, so the check above tells the two settings apart
    g_full, g_sources = base_gradient(reference, batch), base_gradient(reference, sources_only)
    assert float((g_full["classifier.weight"] - g_sources["classifier.weight"]).norm()) > 1e-3


def test_shots_out_of_base_needs_the_target_shot_episode():
    with pytest.raises(ConfigError, match="meta_episode=target_shots"):
        create_stepper("init", make_learner("erm", protocol="ssda"), hparams("init", meta_shots_in_base=False), 10, S)


def test_target_shot_episode_refuses_batches_and_protocols_without_shots():
    batch, _, _ = ssda_batch()
    with pytest.raises(TrainingError):
        target_shot_episode(batch.select(batch.domain < S), S)
    with pytest.raises(TrainingError):
        target_shot_episode(batch.with_target(None), S)
    with pytest.raises(ConfigError):
        create_stepper("init", make_learner("erm", protocol="msda"), hparams("init", meta_episode="target_shots"), 10, S)


# ------------------------------------------------------------------ batch norm in episodes
@pytest.mark.parametrize("policy", ["base", "batch"])
def test_offline_episodes_follow_the_batch_norm_policy(policy):
    hp = hparams("init", freeze_bn=True, episode_bn=policy, meta_schedule="offline", offline_meta_steps=1, meta_lr=0.05, meta_splits="sample")
    learner = make_learner("erm", batchnorm=True)
    with torch.no_grad():  # running statistics far from any batch's, so the two modes differ
        learner.featurizer[1].running_mean.fill_(2.0)
        learner.featurizer[1].running_var.fill_(5.0)
    reference = copy.deepcopy(learner)
    batch = blobs(S, 6, seed=8)
    stepper = create_stepper("init", learner, hp, 10, S, seed=1)
    episode = copy.deepcopy(stepper).next_episode(batch)
    stepper.step(batch)
    reference.train()
    if policy == "base":
        reference.featurizer[1].eval()
    g = meta_gradient(reference, episode.meta_train, episode.meta_test, 0.0, LR, 1, 1).grads
    other = copy.deepcopy(reference)
    other.featurizer[1].train(policy == "base")
    g_other = meta_gradient(other, episode.meta_train, episode.meta_test, 0.0, LR, 1, 1).grads
    for name, before in snapshot(reference).items():
        assert torch.allclose(dict(learner.named_parameters())[name], before - 0.05 * g[name], rtol=1e-10, atol=1e-12), name
    assert float((g["featurizer.0.weight"] - g_other["featurizer.0.weight"]).norm()) > 1e-4


# ------------------------------------------------------------------ Feature-Critic defaults and warm start
def test_critic_defaults_are_the_official_weight():
    assert default_hparams("erm", "critic")["critic_weight"] == 0.01
    assert default_hparams("erm", "critic")["warm_start"] == ""


def test_warm_start_loads_featurizer_and_classifier(tmp_path):
    from dgmeta.models.checkpoint import save_network

    donor = make_learner("erm", seed=11)
    path = save_network(tmp_path / "network.pt", donor, {"backbone": "tiny"})
    learner = make_learner("erm", seed=0)
    create_stepper("critic", learner, hparams("critic", warm_start=str(path), critic_hidden=8), 10, S)
    for (name, p), q in zip(learner.named_parameters(), donor.parameters()):
        assert torch.equal(p, q), name

    wrong = make_learner("erm", seed=0, num_classes=4)
    with pytest.raises(ConfigError):
        create_stepper("critic", wrong, hparams("critic", warm_start=str(path), critic_hidden=8), 10, S)
    with pytest.raises(ConfigError):
        create_stepper("critic", make_learner("erm"), hparams("critic", warm_start=str(tmp_path / "missing.pt")), 10, S)

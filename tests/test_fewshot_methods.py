import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgmeta.errors import ConfigError
from dgmeta.evaluation.fewshot import FEWSHOT_METHODS, confidence95, run_fewshot
from dgmeta.evaluation.fewshot.adapt import (
    adapt_all_layers,
    linear_logits,
    normalized_linear_logits,
    proto_head,
    support_loss,
)
from dgmeta.evaluation.fewshot.embed import embed_images
from dgmeta.evaluation.fewshot.methods import ProtoMAML, create_method
from dgmeta.models.network import create_network

WAYS = 5


def separable_features(per_class=30, dim=64, seed=0, spread=0.6):
    """Class c lives around its own random direction; noise well below the class separation."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(WAYS, dim))
    labels = np.repeat(np.arange(WAYS), per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return torch.from_numpy(features.astype(np.float32)), labels


def _run(features, labels, methods, shots=(1, 5), episodes=40, **kw):
    return run_fewshot(
        None, {}, None, labels, ways=WAYS, shots=list(shots), queries=10, episodes=episodes,
        methods=methods, seed=0, features=features, progress=False, **kw,
    )


def test_registry_knows_the_four_methods():
    assert FEWSHOT_METHODS.names() == ["finetune", "linear", "maml", "prototype"]
    with pytest.raises(ConfigError, match="did you mean 'prototype'"):
        create_method("prototypes", None, {})


def test_prototype_is_near_perfect_on_separable_features():
    features, labels = separable_features()
    report = _run(features, labels, ["prototype"])
    for shots in (1, 5):
        assert report.result("prototype", shots).accuracy > 0.98


def test_prototype_uses_the_support_labels():
    """Same features, but labels unrelated to them: accuracy must fall to chance."""
    features, labels = separable_features()
    shuffled = np.random.default_rng(1).permutation(labels)
    acc = _run(features, shuffled, ["prototype"], shots=[5]).result("prototype", 5).accuracy
    assert abs(acc - 1 / WAYS) < 0.1


@pytest.mark.parametrize("method", ["linear", "finetune"])
def test_linear_and_finetune_well_above_chance(method):
    features, labels = separable_features(spread=1.2)  # harder: not every episode is perfect
    report = _run(features, labels, [method], episodes=30)
    assert report.result(method, 1).accuracy > 0.6
    assert report.result(method, 5).accuracy > 0.9


def test_more_shots_help_on_a_noisy_fixture():
    features, labels = separable_features(spread=2.5)
    report = _run(features, labels, ["prototype", "linear"], episodes=60)
    for method in ("prototype", "linear"):
        assert report.result(method, 5).accuracy > report.result(method, 1).accuracy + 0.05


def test_ci95_formula_and_paired_episodes():
    features, labels = separable_features(spread=2.5)
    report = _run(features, labels, ["prototype", "linear"], shots=[1], episodes=25)
    rows = report.episode_rows()
    for method in ("prototype", "linear"):
        accs = np.array([r["accuracy"] for r in rows if r["method"] == method])
        result = report.result(method, 1)
        assert result.episodes == 25 == len(accs)
        assert result.accuracy == pytest.approx(accs.mean())
        assert result.ci95 == pytest.approx(1.96 * accs.std() / math.sqrt(25))
        assert result.seconds_per_episode > 0
    # both methods saw exactly the same episodes (paired comparison)
    classes = {m: [r["classes"] for r in rows if r["method"] == m] for m in ("prototype", "linear")}
    assert classes["prototype"] == classes["linear"]
    assert confidence95([0.5, 0.5, 0.5]) == 0.0
    assert confidence95([0.0, 1.0]) == pytest.approx(1.96 * 0.5 / math.sqrt(2))


def test_report_markdown_and_rows():
    features, labels = separable_features()
    report = _run(features, labels, ["prototype"], shots=[1, 5], episodes=5)
    assert [(r["method"], r["shots"]) for r in report.to_rows()] == [("prototype", 1), ("prototype", 5)]
    text = report.markdown()
    assert "| prototype | 1 |" in text and "| prototype | 5 |" in text and "5-way" in text


# -- methods on images: tiny timm network, colour-coded classes ------------------------------


def colour_images(per_class=12, size=16, seed=0):
    """Class c is a noisy image of its own colour: separable, yet the network sees pixels."""
    rng = np.random.default_rng(seed)
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230]])
    labels = np.repeat(np.arange(WAYS), per_class)
    images = palette[labels][:, :, None, None] + rng.normal(0, 25, size=(len(labels), 3, size, size))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return create_network("test_resnet", 7)


def test_embed_matches_featurizer_in_eval_mode(tiny_network):
    images, _ = colour_images(per_class=3)
    tiny_network.train()
    features = embed_images(tiny_network.featurizer, images, batch_size=4, progress=False)
    assert tiny_network.featurizer.training  # mode restored
    tiny_network.eval()
    with torch.no_grad():
        expected = tiny_network.featurizer(torch.from_numpy(images).float() / 255)
    assert features.shape == (len(images), tiny_network.feature_dim)
    assert torch.allclose(features, expected, atol=1e-5)


def test_maml_refuses_a_model_without_meta_learned_init(tiny_network):
    with pytest.raises(ConfigError) as info:
        create_method("maml", tiny_network, {"meta_mode": "critic"})
    assert "--meta init" in info.value.one_line() and "'critic'" in info.value.one_line()


def test_proto_head_starts_as_the_nearest_prototype_classifier():
    features, labels = separable_features(per_class=4)
    head = proto_head(features, torch.from_numpy(labels), WAYS)
    centres = torch.stack([features[labels == c].mean(0) for c in range(WAYS)])
    query = features + 0.3 * torch.randn_like(features)
    nearest = torch.cdist(query, centres).argmin(1)
    assert torch.equal(linear_logits(query, head).argmax(1), nearest)
    hot = proto_head(features, torch.from_numpy(labels), WAYS, temperature=10.0)
    assert torch.equal(linear_logits(query, hot).argmax(1), nearest)


def test_adapting_all_layers_lowers_the_support_loss_and_leaves_the_network_alone(tiny_network):
    images, labels = colour_images(per_class=2)
    x, y = torch.from_numpy(images).float() / 255, torch.from_numpy(labels)
    before = {k: v.clone() for k, v in tiny_network.state_dict().items()}
    features = F.normalize(embed_images(tiny_network.featurizer, images, progress=False), dim=-1)
    head = proto_head(features, y, WAYS, ProtoMAML.temperature)  # maml's own configuration
    logits = normalized_linear_logits
    adapted = adapt_all_layers(tiny_network.featurizer, head, logits, x, y, steps=5, lr=ProtoMAML.default_lr)
    losses = adapted.support_losses + [support_loss(tiny_network.featurizer, adapted, logits, x, y)]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert all(torch.equal(before[k], v) for k, v in tiny_network.state_dict().items())
    changed = [n for n, p in tiny_network.featurizer.named_parameters() if not torch.equal(adapted.params[n], p)]
    # every layer is adapted, down to the first conv (the convs behind timm's zero-initialised
    # residual BN gammas get no gradient, hence not a check on every single tensor)
    assert "body.conv1.0.weight" in changed and len(changed) > len(adapted.params) // 2
    assert not torch.equal(adapted.head["weight"], head["weight"])


def test_guarded_adaptation_never_raises_the_support_loss_where_plain_sgd_does(tiny_network):
    images, labels = colour_images(per_class=2)
    x, y = torch.from_numpy(images).float() / 255, torch.from_numpy(labels)
    features = F.normalize(embed_images(tiny_network.featurizer, images, progress=False), dim=-1)
    head = proto_head(features, y, WAYS, ProtoMAML.temperature)
    logits = normalized_linear_logits
    too_large = 5.0  # a step size that overshoots on this support set
    plain = adapt_all_layers(tiny_network.featurizer, head, logits, x, y, steps=5, lr=too_large)
    plain_losses = plain.support_losses + [support_loss(tiny_network.featurizer, plain, logits, x, y)]
    assert max(plain_losses[1:]) > plain_losses[0], plain_losses  # the fixture does overshoot
    guarded = adapt_all_layers(tiny_network.featurizer, head, logits, x, y, steps=5, lr=too_large, max_halvings=12)
    losses = guarded.support_losses + [support_loss(tiny_network.featurizer, guarded, logits, x, y)]
    assert len(losses) > 2 and losses[-1] < losses[0], losses  # it still adapts, at smaller steps
    assert all(later <= earlier + 1e-6 for earlier, later in zip(losses, losses[1:])), losses


def test_maml_and_finetune_all_run_on_an_init_model_above_chance(tiny_network):
    images, labels = colour_images()
    meta = {"meta_mode": "init+critic", "hparams": {"inner_lr": 0.01, "inner_steps": 1}}
    report = run_fewshot(
        tiny_network, meta, images, labels, ways=WAYS, shots=[1], queries=4, episodes=4,
        methods=["maml", "finetune"], seed=0, finetune_all=True, progress=False,
    )
    assert [r.method for r in report.results] == ["maml", "finetune-all"]
    for r in report.results:
        assert r.accuracy > 0.5  # chance is 0.2

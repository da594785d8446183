"""Behaviour of the base DA learners (DANN, MCD, JiGen) on tiny synthetic fixtures."""

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from dgmeta.errors import ConfigError
from dgmeta.hparams import apply_overrides, default_hparams
from dgmeta.learners import Batch, LearnerContext, create_learner
from dgmeta.learners.jigsaw import shuffle_tiles
from dgmeta.models import create_network
from dgmeta.training.stepper import StageStepper
from tests.helpers import learner_protocols

NUM_CLASSES = 3
SOURCES = 2
IMAGE = 32
# per-domain brightness: two labelled sources and a target between them, unlabelled in training
DOMAIN_SHIFT = {0: 0.0, 1: 0.12, "target": 0.06}


def coloured_images(n: int, domain, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = dominant colour channel; domain = brightness; a fixed ramp gives tiles a position."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    ramp = torch.linspace(0.0, 0.2, IMAGE)
    x = 0.3 + ramp[None, None, :, None] + ramp.flip(0)[None, None, None, :] * 0.5
    x = x + 0.08 * torch.rand(n, 3, IMAGE, IMAGE, generator=generator)
    x[torch.arange(n), y] += 0.3
    return (x + DOMAIN_SHIFT[domain]).clamp(0, 1), y


def make_batch(protocol: str, generator: torch.Generator, per_domain: int = 12) -> Batch:
    xs, ys, ds = [], [], []
    for d in range(SOURCES):
        x, y = coloured_images(per_domain, d, generator)
        xs.append(x), ys.append(y), ds.append(torch.full((per_domain,), d))
    if protocol == "ssda":  # labelled target shots carry domain index = number of sources
        x, y = coloured_images(NUM_CLASSES, "target", generator)
        xs.append(x), ys.append(y), ds.append(torch.full((NUM_CLASSES,), SOURCES))
    target_x = None if protocol == "dg" else coloured_images(per_domain, "target", generator)[0]
    return Batch(torch.cat(xs), torch.cat(ys), torch.cat(ds), target_x)


def context(protocol: str, total_steps: int = 40) -> LearnerContext:
    return LearnerContext(NUM_CLASSES, SOURCES + (protocol == "ssda"), protocol, total_steps)


def hparams(name: str, **overrides) -> dict:
    # the learner objectives are under test here, on SGD from a random tiny network (no ImageNet
    # batch-norm statistics to keep), as before the pretrained-backbone defaults
    base = {"lr": 0.01, "num_permutations": 10, "optimizer": "sgd", "freeze_bn": False}
    base = {k: v for k, v in base.items() if k in default_hparams(name)}
    return apply_overrides(default_hparams(name), {**base, **overrides})


def learner(name: str, protocol: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    network = create_network("test_resnet", NUM_CLASSES, weights="none")
    return create_learner(name, network, context(protocol), hparams(name, **overrides))


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on the shared 2-core machine two threads oversubscribe and crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# every registered learner under each protocol it declares (MME has its own fixture: tests/test_mme.py)
SUPPORTED = learner_protocols(exclude=("mme",))


@pytest.mark.parametrize("name,protocol", SUPPORTED)
def test_learner_beats_chance_on_unseen_target(name, protocol):
    model = learner(name, protocol)
    stepper = StageStepper(model, model.hparams)
    generator = torch.Generator().manual_seed(1)
    steps = 40
    for step in range(steps):
        logs = stepper.step(make_batch(protocol, generator), step / steps)
    assert all(np.isfinite(v) for v in logs.values())
    x, y = coloured_images(90, "target", torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        accuracy = (model.predict(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8, f"{name}/{protocol}: target accuracy {accuracy:.2f} (chance 0.33)"


# -- DANN ---------------------------------------------------------------------------------


class TinyNetwork(nn.Module):
    """An MLP featurizer on 8x8 images: small enough to train to adversarial invariance in 300 steps."""

    def __init__(self, size: int = 8, feature_dim: int = 16):
        super().__init__()
        self.featurizer = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * size * size, 32), nn.ReLU(), nn.Linear(32, feature_dim)
        )
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, NUM_CLASSES)


def noisy_colour_images(n: int, domain: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = dominant channel; domain 1 is 0.1 brighter, under per-pixel noise of width 0.3."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = 0.3 + 0.3 * torch.rand(n, 3, 8, 8, generator=generator)
    x[torch.arange(n), y] += 0.3
    return x + 0.1 * domain, y


def domain_probe_accuracy(model) -> float:
    """Held-out accuracy of a fresh logistic regression telling the two domains apart from
    the frozen features (scaled by one global factor, so squashed directions stay squashed)."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.cat([noisy_colour_images(300, d, generator)[0] for d in (0, 1)])
    domains = np.repeat([0, 1], 300)
    model.eval()
    with torch.no_grad():
        features = model.features(x).numpy()
    features = (features - features.mean(0)) / features.std()
    order = np.random.RandomState(0).permutation(600)
    train, test = order[:300], order[300:]
    probe = LogisticRegression(max_iter=5000).fit(features[train], domains[train])
    return probe.score(features[test], domains[test])


def test_dann_features_hide_the_domain_better_than_erm():
    steps, probes = 300, {}
    for name in ("erm", "dann"):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        model = create_learner(
            name, TinyNetwork(), LearnerContext(NUM_CLASSES, 2, "dg", steps),
            hparams(name, lr_schedule="constant", **({"lambda_max": 0.3} if name == "dann" else {})),
        )
        stepper = StageStepper(model, model.hparams)
        for step in range(steps):
            xs, ys = zip(*(noisy_colour_images(32, d, generator) for d in (0, 1)))
            stepper.step(Batch(torch.cat(xs), torch.cat(ys), torch.arange(2).repeat_interleave(32)), step / steps)
        probes[name] = domain_probe_accuracy(model)
    assert probes["erm"] > 0.95, probes  # the fixture's domain is easy to read from ERM features
    assert probes["dann"] < probes["erm"] - 0.15, probes


def test_dann_discriminator_targets_per_protocol():
    generator = torch.Generator().manual_seed(0)
    dg = learner("dann", "dg")
    batch = make_batch("dg", generator)
    x, domains = dg.discriminator_inputs(batch)
    assert x is batch.x and torch.equal(domains, batch.domain)
    assert dg.adversary.discriminator.num_domains == SOURCES

    msda = learner("dann", "msda")
    batch = make_batch("msda", generator)
    x, domains = msda.discriminator_inputs(batch)
    assert len(x) == len(batch) + len(batch.target_x)
    assert domains.tolist() == [0] * len(batch) + [1] * len(batch.target_x)
    assert msda.adversary.discriminator.num_domains == 2

    ssda = learner("dann", "ssda")
    batch = make_batch("ssda", generator)
    _, domains = ssda.discriminator_inputs(batch)
    shots = (batch.domain == SOURCES).long()  # labelled target shots join the target side
    assert domains.tolist() == shots.tolist() + [1] * len(batch.target_x)
    assert shots.sum() == NUM_CLASSES


def test_dann_logs_terms_and_follows_the_lambda_schedule():
    model = learner("dann", "msda", lambda_max=0.5)
    batch = make_batch("msda", torch.Generator().manual_seed(0))
    start = model(batch, stage="main", progress=0.0)
    end = model(batch, stage="main", progress=1.0)
    assert set(start.terms) == {"cls", "adv", "disc_acc", "lambda"}
    assert start.terms["lambda"].item() == 0.0
    assert end.terms["lambda"].item() == pytest.approx(0.5, abs=1e-3)
    torch.testing.assert_close(start.loss, start.terms["cls"] + start.terms["adv"])


def test_dann_without_target_images_under_msda_is_a_one_line_error():
    model = learner("dann", "msda")
    batch = make_batch("dg", torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="needs unlabelled target images"):
        model(batch, stage="main", progress=0.5)


def test_dann_under_dg_needs_two_source_domains():
    with pytest.raises(ConfigError, match="two source domains"):
        create_learner("dann", TinyNetwork(), LearnerContext(NUM_CLASSES, 1, "dg"), hparams("dann"))


# -- MCD ----------------------------------------------------------------------------------


def test_mcd_declares_its_three_stages_and_a_differently_initialised_second_classifier():
    model = learner("mcd", "msda", num_k=3)
    stages = {s.name: s for s in model.stages()}
    assert list(stages) == ["A", "B", "C"]
    assert set(stages["A"].modules) == {"featurizer", "classifier", "classifier2"}
    assert set(stages["B"].modules) == {"classifier", "classifier2"}
    assert stages["C"].modules == ("featurizer",) and stages["C"].repeat == 3
    assert model.classifier2.weight.shape == model.classifier.weight.shape
    assert not torch.equal(model.classifier2.weight, model.classifier.weight)


def test_mcd_stage_b_raises_and_stage_c_lowers_target_discrepancy():
    """Stage B minimises ``CE - discrepancy``, so its step can lower the discrepancy when the CE
    pull dominates; what it must do is end higher than the same step without the discrepancy
    term (stage A's CE, applied to the classifiers only). Stage C's step must lower it."""
    model = learner("mcd", "msda")  # fresh heads: predictions not yet saturated
    batch = make_batch("msda", torch.Generator().manual_seed(0))
    stages = {s.name: s for s in model.stages()}

    def discrepancy(m) -> float:
        with torch.no_grad():
            return m.discrepancy(m.featurizer(batch.target_x)).item()

    def step(m, objective_stage: str, updated_stage: str, lr: float) -> None:
        optimizer = torch.optim.SGD(m.stage_parameters(stages[updated_stage]), lr=lr)
        m.zero_grad(set_to_none=True)
        m(batch, stage=objective_stage, progress=0.5).loss.backward()
        optimizer.step()

    cls_only = copy.deepcopy(model)
    step(cls_only, "A", "B", lr=0.05)
    step(model, "B", "B", lr=0.05)
    assert all(p.grad is None for p in model.featurizer.parameters())  # B never backprops into G
    after_b = discrepancy(model)
    assert after_b > discrepancy(cls_only) + 0.01, (after_b, discrepancy(cls_only))
    step(model, "C", "C", lr=0.01)
    after_c = discrepancy(model)
    assert after_c < after_b - 0.005, (after_b, after_c)


def test_mcd_predicts_with_both_classifiers_and_exports_them_as_one_head():
    model = learner("mcd", "msda")
    x = make_batch("msda", torch.Generator().manual_seed(0)).x
    model.eval()
    with torch.no_grad():
        features = model.featurizer(x)
        both = model.classifier(features) + model.classifier2(features)
        torch.testing.assert_close(model.predict(x), both)
        torch.testing.assert_close(model.export_classifier()(features), both)
    assert isinstance(model.export_classifier(), nn.Linear)


def test_mcd_refuses_dg_naming_the_protocol_that_works():
    with pytest.raises(ConfigError, match="--protocol msda"):
        learner("mcd", "dg")
    with pytest.raises(ConfigError, match="num_k"):
        learner("mcd", "msda", num_k=0)


# -- JiGen --------------------------------------------------------------------------------


def test_jigen_scramble_keeps_exactly_the_unshuffled_fraction():
    model = learner("jigen", "dg", unshuffled_ratio=0.7)
    x = make_batch("dg", torch.Generator().manual_seed(0)).x  # 24 images
    scrambled, labels = model.scramble(x)
    keep = labels == 0
    assert keep.sum().item() == round(0.7 * 24)
    assert labels.max() <= model.num_permutations and model.jigsaw_head.out_features == model.num_permutations + 1
    assert torch.equal(scrambled[keep], x[keep])
    assert all(not torch.equal(scrambled[i], x[i]) for i in torch.nonzero(~keep).flatten())


def test_jigen_learns_to_recognise_permutations():
    # An MLP sees pixel positions directly, so this isolates JiGen's labelling and training of
    # the jigsaw head from a pooled CNN's difficulty with spatial layout.
    size, texture = 12, torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(9))

    def textured(n, generator):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
        x = 0.5 * texture + 0.1 * torch.rand(n, 3, size, size, generator=generator)
        x[torch.arange(n), y] += 0.3
        return x, y

    torch.manual_seed(0)
    model = create_learner(
        "jigen", TinyNetwork(size, 32), LearnerContext(NUM_CLASSES, 1, "dg", 150),
        hparams("jigen", unshuffled_ratio=0.5, lr=0.03),
    )
    generator = torch.Generator().manual_seed(0)
    stepper = StageStepper(model, model.hparams)
    for step in range(150):
        x, y = textured(32, generator)
        stepper.step(Batch(x, y, torch.zeros_like(y)), step / 150)
    x, _ = textured(200, torch.Generator().manual_seed(5))
    labels = torch.randint(1, model.num_permutations + 1, (200,), generator=torch.Generator().manual_seed(6))
    model.eval()
    with torch.no_grad():
        logits = model.jigsaw_head(model.featurizer(shuffle_tiles(x, labels, model.permutations)))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.5, accuracy  # chance among the P = 10 permutations: 0.1


def test_jigen_target_terms_only_under_domain_adaptation():
    dg = learner("jigen", "dg")
    assert set(dg(make_batch("dg", torch.Generator().manual_seed(0)), stage="main").terms) == {"cls", "jigsaw"}
    msda = learner("jigen", "msda")
    terms = msda(make_batch("msda", torch.Generator().manual_seed(0)), stage="main").terms
    assert set(terms) == {"cls", "jigsaw", "entropy", "target_jigsaw"}
    with pytest.raises(ConfigError, match="unshuffled_ratio"):
        learner("jigen", "dg", unshuffled_ratio=0.0)


# -- the contract the meta wrappers rely on -------------------------------------------------


@pytest.mark.parametrize(
    "name,protocol,stage", [("dann", "msda", "main"), ("mcd", "msda", "A"), ("mcd", "msda", "C"), ("jigen", "msda", "main")]
)
def test_objective_under_functional_call_uses_the_given_parameters(name, protocol, stage):
    model = learner(name, protocol)
    batch = make_batch(protocol, torch.Generator().manual_seed(0))
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    torch.manual_seed(7)
    direct = model(batch, stage=stage, progress=0.5).loss
    torch.manual_seed(7)
    functional = torch.func.functional_call(model, params, (batch,), {"stage": stage, "progress": 0.5}).loss
    torch.testing.assert_close(functional, direct)
    zeroed = {**params, "classifier.weight": torch.zeros_like(params["classifier.weight"])}
    torch.manual_seed(7)
    assert torch.func.functional_call(model, zeroed, (batch,), {"stage": stage, "progress": 0.5}).loss != functional
    grads = torch.autograd.grad(functional, [params[n] for n in params if n.startswith("featurizer.")], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

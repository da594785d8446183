import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgmeta.losses import (
    DomainAdversarialLoss,
    DomainDiscriminator,
    GradientReversalLayer,
    classifier_discrepancy,
    dann_lambda,
    grad_reverse,
    prediction_entropy,
)


@pytest.mark.parametrize("coeff", [1.0, 0.3, 2.5])
def test_gradient_reversal_is_identity_forward_and_scales_gradient_by_minus_lambda(coeff):
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    weights = torch.randn(4, 6)
    y = GradientReversalLayer()(x, coeff)
    assert torch.equal(y, x)
    (weights * y).sum().backward()
    # d/dx sum(w * x) = w, so the reversed gradient must be exactly -coeff * w
    torch.testing.assert_close(x.grad, -coeff * weights)


def test_gradient_reversal_matches_finite_differences_of_the_negated_function():
    torch.manual_seed(1)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    f = lambda t: (t.sin() * torch.arange(1.0, 6.0, dtype=torch.float64)).sum()  # noqa: E731
    f(grad_reverse(x, 0.7)).backward()
    eps = 1e-6
    numeric = torch.stack(
        [(f(x.detach() + eps * e) - f(x.detach() - eps * e)) / (2 * eps) for e in torch.eye(5, dtype=torch.float64)]
    )
    torch.testing.assert_close(x.grad, -0.7 * numeric)


def test_gradient_reversal_supports_second_order_gradients():
    w = torch.tensor([2.0], requires_grad=True)
    x = torch.tensor([3.0])
    loss = (grad_reverse(w * x, 0.5) ** 2).sum()
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    assert g.requires_grad  # meta-gradients of second order must pass through the GRL
    torch.testing.assert_close(g, torch.tensor([-0.5 * 2 * (2.0 * 3.0) * 3.0]))


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) > 0.9999
    assert abs(dann_lambda(1.0, gamma=1.0) - (2 / (1 + math.exp(-1)) - 1)) < 1e-12
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and all(0.0 <= v < 1.0 for v in values)


def test_domain_discriminator_shape_and_depth():
    disc = DomainDiscriminator(16, 3, hidden=8, layers=2, dropout=0.5)
    assert disc(torch.randn(5, 16)).shape == (5, 3)
    assert sum(isinstance(m, nn.Linear) for m in disc.modules()) == 3
    assert sum(isinstance(m, nn.Linear) for m in DomainDiscriminator(16, 2, layers=0).modules()) == 1


def test_adversarial_loss_weighs_each_domain_equally_and_reports_balanced_accuracy():
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, 2, hidden=8, layers=1, dropout=0.0)
    adversary = DomainAdversarialLoss(disc)
    features = torch.randn(10, 4)
    domains = torch.tensor([0] * 8 + [1] * 2)  # imbalanced: 8 source, 2 target
    loss, accuracy = adversary(features, domains, 1.0)
    ce = F.cross_entropy(disc(features), domains, reduction="none")
    torch.testing.assert_close(loss, 0.5 * (ce[:8].mean() + ce[8:].mean()))
    correct = (disc(features).argmax(1) == domains).float()
    torch.testing.assert_close(accuracy, 0.5 * (correct[:8].mean() + correct[8:].mean()))
    assert not accuracy.requires_grad


def test_adversarial_loss_trains_discriminator_and_reverses_featurizer_gradient():
    torch.manual_seed(0)
    featurizer = nn.Linear(3, 4)
    adversary = DomainAdversarialLoss(DomainDiscriminator(4, 2, hidden=8, layers=1, dropout=0.0))
    x, domains = torch.randn(12, 3), torch.arange(12) % 2

    def grads(coeff):
        featurizer.zero_grad()
        adversary.zero_grad()
        adversary(featurizer(x), domains, coeff).loss.backward()
        return featurizer.weight.grad.clone(), adversary.discriminator.net[0].weight.grad.clone()

    plain_featurizer = torch.autograd.grad(
        F.cross_entropy(adversary.discriminator(featurizer(x)), domains), featurizer.weight
    )[0]
    feat_grad, disc_grad = grads(0.4)
    torch.testing.assert_close(feat_grad, -0.4 * plain_featurizer)  # featurizer ascends the domain loss
    feat_zero, disc_grad_zero = grads(0.0)
    assert torch.count_nonzero(feat_zero) == 0
    torch.testing.assert_close(disc_grad, disc_grad_zero)  # the discriminator always descends at full strength


def test_classifier_discrepancy():
    logits = torch.randn(6, 4)
    assert classifier_discrepancy(logits, logits).item() == 0.0
    a = torch.tensor([[100.0, 0.0]])
    b = torch.tensor([[0.0, 100.0]])
    assert abs(classifier_discrepancy(a, b).item() - 1.0) < 1e-6  # |1-0| + |0-1| over 2 classes
    x, y = torch.randn(8, 5), torch.randn(8, 5)
    assert classifier_discrepancy(x, y).item() == pytest.approx(classifier_discrepancy(y, x).item())
    assert 0 < classifier_discrepancy(x, y).item() <= 2 / 5


def test_prediction_entropy_bounds_and_gradient_direction():
    assert prediction_entropy(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))
    confident = torch.tensor([[1000.0, 0.0, 0.0]])
    assert prediction_entropy(confident).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(prediction_entropy(confident))
    logits = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    prediction_entropy(logits).backward()
    assert logits.grad[0, 0] < 0  # lowering entropy means growing the already-largest logit

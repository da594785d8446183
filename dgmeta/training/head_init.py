"""Start the classifier from a linear probe on the frozen features (LP-FT).

Kumar et al. (ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") show that fine-tuning from a random head first spends its steps pushing
the backbone towards whatever the random head needs, which distorts the pretrained features that
out-of-distribution accuracy depends on; fitting the head first (a logistic regression on the
frozen features) and then fine-tuning everything avoids that. At a short budget it also means the
model starts at the probe's accuracy instead of at chance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dgmeta.data.augment import resize_batch


def linear_layer(head: nn.Module) -> nn.Linear:
    """The linear map of a head (a Linear, or a Sequential whose last module is one)."""
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head[-1]
    raise TypeError(f"head_init=probe needs a linear classifier head, got {type(head).__name__}")


@torch.no_grad()
def frozen_features(featurizer: nn.Module, images: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    was_training = featurizer.training
    featurizer.eval()
    out = []
    for start in range(0, len(images), batch):
        # a float32 copy: the decoded images may be a read-only memory map
        x = torch.from_numpy(np.asarray(images[start:start + batch], dtype=np.float32)).div_(255)
        if x.shape[-1] != size:
            x = resize_batch(x, size)
        out.append(featurizer(x).float().numpy())
    featurizer.train(was_training)
    return np.concatenate(out)


def fit_probe_head(head: nn.Module, features: np.ndarray, labels: np.ndarray, C: float) -> float:
    """Set ``head`` to the L2 logistic regression of ``labels`` on ``features``; its train accuracy.

    The regression is fitted on standardised features (lbfgs converges in a few hundred
    iterations there) and folded back, so the head takes the raw features the network produces.
    """
    from sklearn.linear_model import LogisticRegression

    mean, std = features.mean(0), features.std(0) + 1e-6
    probe = LogisticRegression(C=C, max_iter=1000).fit((features - mean) / std, labels)
    linear = linear_layer(head)
    coef = np.zeros((linear.out_features, features.shape[1]), dtype=np.float64)
    bias = np.full(linear.out_features, -1e4)  # a class absent from the sources is never predicted
    coef[probe.classes_] = probe.coef_ if len(probe.classes_) > 2 else np.vstack([-probe.coef_, probe.coef_]) / 2
    bias[probe.classes_] = probe.intercept_ if len(probe.classes_) > 2 else np.array([-probe.intercept_[0], probe.intercept_[0]]) / 2
    weight = coef / std
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias - weight @ mean, dtype=linear.bias.dtype))
    return float(probe.score((features - mean) / std, labels))


def init_head_from_probe(network: nn.Module, train: list, size: int, C: float) -> float:
    """Fit ``network.classifier`` on the frozen features of the sources' train arrays."""
    features = np.concatenate([frozen_features(network.featurizer, d.images, size) for d in train])
    labels = np.concatenate([d.labels for d in train])
    return fit_probe_head(network.classifier, features, labels, C)

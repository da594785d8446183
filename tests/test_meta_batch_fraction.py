import torch

from dgmeta.learners.base import Batch
from dgmeta.meta.stepper import leading_fraction_per_domain


def test_fraction_keeps_leading_share_of_every_domain():
    domain = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    keep = leading_fraction_per_domain(domain, 0.5)
    for d in range(3):
        index = (domain == d).nonzero().flatten()
        assert keep[index].tolist() == [True, True, False, False]
    tiny = leading_fraction_per_domain(torch.tensor([0, 1, 1, 1]), 0.1)
    assert tiny.tolist() == [True, True, False, False]  # never drops a domain entirely


def test_episode_uses_fraction_and_stays_disjoint():
    from dgmeta.hparams import apply_overrides, default_hparams
    from dgmeta.meta import create_stepper
    from test_meta_fixtures import make_learner

    learner = make_learner("erm", sources=3)
    hp = apply_overrides(default_hparams("erm", "init"), {"meta_batch_fraction": 0.5})
    stepper = create_stepper("init", learner, hp, total_steps=10, num_sources=3, seed=0)
    x = torch.arange(24, dtype=torch.float64).view(24, 1).expand(24, 5).contiguous()
    batch = Batch(x, torch.zeros(24, dtype=torch.long), torch.arange(24) % 3)
    episode = stepper.next_episode(batch)
    assert len(episode.meta_train) + len(episode.meta_test) == 12
    train_rows = set(episode.meta_train.x[:, 0].tolist())
    test_rows = set(episode.meta_test.x[:, 0].tolist())
    assert not train_rows & test_rows

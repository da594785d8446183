"""Episode sampling and splitting (dgmeta/meta/episodes.py)."""

from __future__ import annotations

import pytest
import torch

from dgmeta.errors import ConfigError, TrainingError
from dgmeta.learners.base import Batch
from dgmeta.meta.episodes import EpisodeSampler, split_batch


@pytest.mark.parametrize("sources,held_out", [(2, 1), (3, 1), (4, 2), (5, 2), (6, 3)])
def test_sampler_splits_are_disjoint_sources_only_and_cover_every_source(sources, held_out):
    sampler = EpisodeSampler(sources, held_out, seed=3)
    rounds = -(-sources // held_out)  # ceil: every source held out once per round
    seen_test: set[int] = set()
    for call in range(4 * rounds):
        train, test = sampler()
        assert len(test) == held_out and len(set(test)) == held_out
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(range(sources))  # never the target index S, nothing missing
        seen_test.update(test)
        if call + 1 == rounds:
            assert seen_test == set(range(sources))


def test_sampler_is_seeded_and_varies_with_the_seed():
    def draws(seed):
        sampler = EpisodeSampler(4, 1, seed)
        return [tuple(sampler()[1]) for _ in range(24)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert len(set(draws(0)[:4])) == 4  # a permutation per round, not a fixed cycle of one domain


def test_sampler_state_resumes_the_same_sequence():
    sampler = EpisodeSampler(5, 2, seed=7)
    for _ in range(3):
        sampler()
    state = sampler.state_dict()
    expected = [sampler() for _ in range(6)]
    resumed = EpisodeSampler(5, 2, seed=123)
    resumed.load_state_dict(state)
    assert [resumed() for _ in range(6)] == expected


@pytest.mark.parametrize("sources,held_out", [(1, 1), (3, 0), (3, 3)])
def test_impossible_splits_are_config_errors(sources, held_out):
    with pytest.raises(ConfigError):
        EpisodeSampler(sources, held_out)


def _batch(sources=3, per=4, shots=0, target=True):
    """Labelled sources 0..S-1 (plus S = target shots), features encode the domain for checking."""
    domain = torch.cat([torch.arange(sources).repeat_interleave(per), torch.full((shots,), sources)])
    x = domain.double().view(-1, 1).repeat(1, 2)
    y = torch.arange(len(domain)) % 3
    target_x = torch.full((per, 2), 99.0, dtype=torch.float64) if target else None
    return Batch(x, y, domain, target_x)


def test_split_routes_domains_and_makes_the_held_out_images_the_adaptation_target():
    batch = _batch(shots=2)
    train, test = split_batch(batch, [0, 2], [1])
    assert set(train.domain.tolist()) == {0, 2} and set(test.domain.tolist()) == {1}
    assert torch.equal(train.target_x, batch.x[batch.domain == 1])  # held-out source, not the true target
    assert test.target_x is None
    for half in (train, test):
        assert 3 not in half.domain.tolist()  # ssda target shots are in neither half
        assert not (half.x == 99.0).any() and (half.target_x is None or not (half.target_x == 99.0).any())
        assert torch.equal(half.x[:, 0].long(), half.domain)  # labels/images stay with their samples


def test_split_without_unlabelled_target_keeps_the_inner_objective_a_dg_one():
    batch = _batch(target=False)
    train, test = split_batch(batch, [1, 2], [0])
    assert train.target_x is None and test.target_x is None
    forced, _ = split_batch(batch, [1, 2], [0], meta_test_as_target=True)
    assert torch.equal(forced.target_x, batch.x[batch.domain == 0])


def test_split_refuses_overlap_and_missing_domains():
    batch = _batch()
    with pytest.raises(ValueError):
        split_batch(batch, [0, 1], [1])
    with pytest.raises(TrainingError):
        split_batch(batch.select(batch.domain != 2), [0, 1], [2])

import numpy as np
import pytest

from dgmeta.errors import ConfigError
from dgmeta.evaluation.fewshot.sampler import EpisodeSampler, parse_ways

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


def _labels(counts=(30, 25, 40, 22, 31, 26, 35), seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)  # classes interleaved, as in a real listing


def test_episode_invariants():
    labels = _labels()
    sampler = EpisodeSampler(labels, ways=5, shots=3, queries=7, seed=1)
    for episode in sampler.episodes(50):
        assert episode.ways == 5 and len(set(episode.classes.tolist())) == 5
        assert len(episode.support) == 5 * 3 and len(episode.query) == 5 * 7
        everything = np.concatenate([episode.support, episode.query])
        assert len(np.unique(everything)) == len(everything)  # no duplicates, support ∩ query = ∅
        assert np.bincount(episode.support_labels, minlength=5).tolist() == [3] * 5
        assert np.bincount(episode.query_labels, minlength=5).tolist() == [7] * 5
        # episode-local label k really is dataset class classes[k]
        assert (labels[episode.support] == episode.classes[episode.support_labels]).all()
        assert (labels[episode.query] == episode.classes[episode.query_labels]).all()


def test_same_seed_same_episodes_and_different_seed_differs():
    labels = _labels()
    a = EpisodeSampler(labels, 5, 2, 4, seed=7)
    b = EpisodeSampler(labels, 5, 2, 4, seed=7)
    c = EpisodeSampler(labels, 5, 2, 4, seed=8)
    for i in (0, 3, 99):
        ea, eb = a.episode(i), b.episode(i)
        assert np.array_equal(ea.support, eb.support) and np.array_equal(ea.query, eb.query)
        assert np.array_equal(ea.classes, eb.classes)
        assert np.array_equal(a.episode(i).support, ea.support)  # order of calls does not matter
    assert any(not np.array_equal(a.episode(i).support, c.episode(i).support) for i in range(5))
    assert not np.array_equal(a.episode(0).support, a.episode(1).support)


def test_classes_of_an_episode_do_not_depend_on_shots():
    labels = _labels()
    one, five = EpisodeSampler(labels, 3, 1, 5, seed=2), EpisodeSampler(labels, 3, 5, 5, seed=2)
    for i in range(10):
        assert np.array_equal(one.episode(i).classes, five.episode(i).classes)


def test_ways_all_uses_every_class():
    sampler = EpisodeSampler(_labels(), "all", 1, 2)
    assert sampler.ways == 7
    assert sorted(sampler.episode(0).classes.tolist()) == list(range(7))


def test_too_many_ways_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        EpisodeSampler(_labels(), 10, 1, 5, domain="sketch")
    text = info.value.one_line()
    assert "--ways 10" in text and "only 7 classes" in text and "--ways all" in text and "\n" not in text


def test_class_too_small_names_the_class_and_its_count():
    with pytest.raises(ConfigError) as info:
        EpisodeSampler(_labels(), 5, 5, 20, class_names=CLASSES, domain="photo")
    text = info.value.one_line()
    assert "'guitar'" in text and "only 22 images" in text and "5 + 20 = 25" in text


@pytest.mark.parametrize("bad", ["x", "1", 0])
def test_parse_ways_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        parse_ways(bad)
    assert parse_ways("ALL") == "all" and parse_ways("5") == 5

"""Class-balanced sampling of training images."""

import numpy as np
import pytest

from datasets.severstal import Annotations
from training.data import WeightedShardSampler, class_balance_weights


def annotations_with(label_sets):
    rles = {f"{i:09x}.jpg": {c: "1 1" for c in labels} for i, labels in enumerate(label_sets) if labels}
    return Annotations(None, [f"{i:09x}.jpg" for i in range(len(label_sets))], rles)


def test_weights_balance_labels():
    labels = [()] * 50 + [(3,)] * 40 + [(1,)] * 8 + [(2,)] * 2
    ann = annotations_with(labels)
    uniform = class_balance_weights(ann, ann.image_ids, 0.0)
    assert np.allclose(uniform, 1 / 100)
    balanced = class_balance_weights(ann, ann.image_ids, 1.0)
    share = {label: balanced[[i for i, ls in enumerate(labels) if ls == label]].sum() for label in set(labels)}
    assert all(v == pytest.approx(0.25) for v in share.values())  # each label drawn equally often
    half = class_balance_weights(ann, ann.image_ids, 0.5)
    assert half[-1] > uniform[-1] and half[-1] < balanced[-1]  # the rare class 2 in between


def test_sampler_is_seeded_and_shards_one_draw():
    weights = np.full(10, 0.1)
    ranks = [WeightedShardSampler(weights, 2, r, seed=0) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(3)
    first = [list(s) for s in ranks]
    assert [len(f) for f in first] == [5, 5] and first == [list(s) for s in ranks]  # same epoch, same draw
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != first[0]
    weights = np.array([0.0] * 9 + [1.0])
    assert set(WeightedShardSampler(weights, 1, 0, seed=0)) == {9}

"""Phenotypes: probabilities read at peaks, and the SC-CNN classification scores
against scikit-learn-style reference values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from micronet.runtime.class_metrics import classification_scores
from micronet.runtime.classes import class_colour, class_probabilities


def test_probabilities_are_the_softmax_at_each_peak():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30, 40)).astype(np.float32)
    xy = np.array([[3, 7], [39, 29], [0, 0], [12.4, 5.6]])
    probs = class_probabilities(logits, xy)
    assert probs.shape == (4, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    for (x, y), row in zip(np.rint(xy).astype(int), probs):
        e = np.exp(logits[:, y, x] - logits[:, y, x].max())
        np.testing.assert_allclose(row, e / e.sum(), rtol=1e-5)
    assert class_probabilities(logits, np.zeros((0, 2))).shape == (0, 4)


def test_scores_ignore_unlabelled_truth_and_weight_by_support():
    true = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 0])
    s = classification_scores(true, pred, ["a", "b", "c"])
    assert s.support == [3, 2, 1]
    assert s.confusion == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    # a: P 2/3 R 2/3; b: P 1/2 R 1/2; c: P 1 R 1
    np.testing.assert_allclose(s.f1, [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(s.weighted_f1, (3 * 2 / 3 + 2 * 0.5 + 1.0) / 6)
    assert s.accuracy == pytest.approx(4 / 6)
    assert "| **weighted** |" in s.table()


def test_scores_refuse_out_of_range_classes():
    with pytest.raises(ValueError, match="0..1"):
        classification_scores(np.array([0, 2]), np.array([0, 1]), ["a", "b"])


def test_known_classes_have_conventional_colours():
    assert class_colour("epithelial") == (200, 0, 0)
    assert len(class_colour("something else", 3)) == 3

"""Loss combiners: the min-norm weights against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from unlearning.combiners import MinNormGradient, WeightedSum, min_norm_weights


def test_min_norm_two_orthogonal_vectors():
    """g1 = (1, 0), g2 = (0, 2): w1 = <g2 - g1, g2> / |g1 - g2|^2 = 4 / 5 -> (0.8, 0.2);
    combination (0.8, 0.4), the closest point of the segment to the origin."""
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert min_norm_weights(g @ g.T).tolist() == pytest.approx([0.8, 0.2], abs=1e-6)


def test_min_norm_picks_the_shorter_of_aligned_vectors():
    """g1 = (1, 1), g2 = (3, 3): every combination points the same way; the shortest is g1 alone."""
    g = torch.tensor([[1.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    assert min_norm_weights(g @ g.T).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_min_norm_opposite_vectors_cancel():
    """g1 = (1, 0), g2 = (-1, 0): w = (1/2, 1/2) gives the zero vector."""
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert min_norm_weights(g @ g.T).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)


def test_combiners_on_losses():
    """L1 = x, L2 = 2y on params (x, y): gradients (1, 0), (0, 2) -> weights (0.8, 0.2); x = y = 1 gives
    0.8 * 1 + 0.2 * 2 = 1.2; the weighted sum gives 3."""
    x, y = torch.ones(1, requires_grad=True), torch.ones(1, requires_grad=True)
    terms = {"forget": x.sum(), "retain": 2 * y.sum()}
    assert WeightedSum()(terms, [x, y]).item() == pytest.approx(3.0)
    loss = MinNormGradient()(terms, [x, y])
    assert loss.item() == pytest.approx(1.2, abs=1e-5)
    loss.backward()
    assert x.grad.item() == pytest.approx(0.8, abs=1e-5) and y.grad.item() == pytest.approx(0.4, abs=1e-5)

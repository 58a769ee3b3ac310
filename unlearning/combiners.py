"""How the loss terms (gamma * forget, alpha * retain) become one loss.

`WeightedSum` adds them. `MinNormGradient` is the multiple-gradient descent of MOLLM (arXiv 2412.20412,
after Desideri's MGDA): it weighs the terms by the convex combination whose gradient has the smallest
norm, a direction that decreases no term's loss at the expense of another while one exists.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


class WeightedSum:
    """loss = sum of the (already weighted) terms."""

    def __call__(self, terms: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(terms.values())).sum()


def min_norm_weights(gram: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """argmin_{w in simplex} || sum_i w_i g_i ||^2 from the Gram matrix G_ij = <g_i, g_j>.

    Frank-Wolfe with exact line search: each step moves toward the vertex with the smallest
    <g_e, current>; for two vectors this reaches the closed form w_1 = clamp(<g_2 - g_1, g_2> / |g_1 - g_2|^2, 0, 1).
    """
    n = gram.size(0)
    w = torch.full((n,), 1.0 / n, dtype=gram.dtype)
    for _ in range(iterations):
        grad = gram @ w  # <g_e, current combination> for every vertex e
        e = int(torch.argmin(grad))
        direction = -w.clone()
        direction[e] += 1.0
        # minimise |v + t d|^2 over t in [0, 1], with v = current combination, d = g_e - v
        d_norm = direction @ gram @ direction
        if d_norm <= 1e-12:
            break
        t = float((-(direction @ gram @ w) / d_norm).clamp(0.0, 1.0))
        if t <= 1e-9:
            break
        w = w + t * direction
    return w


class MinNormGradient:
    """loss = sum_i w_i * term_i with w (no gradient) the min-norm weights of the terms' gradients."""

    def __call__(self, terms: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
        values = list(terms.values())
        if len(values) == 1:
            return values[0]
        grads = []
        for value in values:
            parts = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                    for g, p in zip(parts, params)]))
        flat = torch.stack(grads)
        weights = min_norm_weights((flat @ flat.T).double()).to(flat.dtype)
        return sum(w * v for w, v in zip(weights, values))

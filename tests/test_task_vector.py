"""Task-vector negation: the edit against hand-computed weights, applied through the module's hook."""

from __future__ import annotations

import torch

from tests.conftest import make_tiny_llama
from unlearning.methods.task_vector import TaskVector, negate_task_vector
from unlearning.module import UnlearningModule


def test_negate_task_vector_hand_computed():
    """theta = (1, 2), reinforced = (3, 2), scale 0.5: (1 - 0.5 * 2, 2 - 0) = (0, 2)."""
    out = negate_task_vector(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0]), 0.5)
    assert out.tolist() == [0.0, 2.0]


def test_prepare_edits_every_weight(tokenizer):
    policy, reinforced = make_tiny_llama(tokenizer, seed=0), make_tiny_llama(tokenizer, seed=1)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    module = UnlearningModule(policy, TaskVector(scale=2.0), torch.optim.SGD, frozen={"reinforced": reinforced})
    module.on_fit_start()
    for name, param in policy.named_parameters():
        expected = before[name] - 2.0 * (dict(reinforced.named_parameters())[name] - before[name])
        assert torch.allclose(param, expected)

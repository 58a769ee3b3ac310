"""Loss math against numbers computed by hand (in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from unlearning.methods.grad_ascent import grad_ascent_loss
from unlearning.methods.npo import npo_loss
from unlearning.ops import IGNORE_INDEX, kl_to_reference, mean_token_nll, sequence_logprob, token_logprobs


def two_token_logits(*rows: list[float]) -> torch.Tensor:
    """Logits [1, T, 2] from per-position rows."""
    return torch.tensor([list(rows)], dtype=torch.float32)


def test_token_logprobs_shift_and_mask():
    """Vocab 2. Position 0 logits (ln 3, 0) -> p = (3/4, 1/4); position 1 logits (0, 0) -> (1/2, 1/2).
    labels = [-100, 0, 1]: token 1 (=0) is predicted at position 0 -> ln(3/4); token 2 (=1) at
    position 1 -> ln(1/2). Position 2's logits predict nothing."""
    logits = two_token_logits([math.log(3), 0.0], [0.0, 0.0], [5.0, -5.0])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    logp, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert logp[0].tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 2)], abs=1e-6)
    total, count = sequence_logprob(logits, labels)
    assert total.item() == pytest.approx(math.log(3 / 8), abs=1e-6) and count.item() == 2


def test_ignored_labels_never_index_the_vocabulary():
    """All labels ignored: sum 0 over 0 tokens (a -100 gather would otherwise read vocab id V-100)."""
    total, count = sequence_logprob(torch.randn(1, 3, 200), torch.full((1, 3), IGNORE_INDEX))
    assert total.item() == 0.0 and count.item() == 0


def test_grad_ascent_is_negative_mean_nll():
    """Same logits as above: NLL = -(ln 3/4 + ln 1/2)/2 = 0.4904; gradient ascent loss = -0.4904."""
    logits = two_token_logits([math.log(3), 0.0], [0.0, 0.0], [5.0, -5.0])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    expected = -(math.log(3 / 4) + math.log(1 / 2)) / 2
    assert mean_token_nll(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert grad_ascent_loss(logits, labels).item() == pytest.approx(-expected, abs=1e-6)


def test_npo_loss_hand_computed():
    """beta = 1, log p_theta = (-1, -3), log p_ref = (-2, -2): beta*(theta - ref) = (1, -1).
    log sigmoid(-1) = -1.313262, log sigmoid(1) = -0.313262; mean -0.813262; loss = -2 * mean = 1.626523."""
    loss = npo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), beta=1.0)
    assert loss.item() == pytest.approx(1.626523, abs=1e-5)


def test_npo_loss_at_reference_is_2_ln2_over_beta():
    """p_theta = p_ref: -(2/beta) log sigmoid(0) = (2/beta) ln 2; beta = 0.1 -> 13.862944."""
    logp = torch.tensor([-4.0, -7.5, -1.0])
    assert npo_loss(logp, logp.clone(), beta=0.1).item() == pytest.approx(20 * math.log(2), abs=1e-4)


def test_kl_to_reference_hand_computed():
    """p_ref = (1/2, 1/2), p_theta = (3/4, 1/4): KL(ref||theta) = 0.5 ln(2/3) + 0.5 ln 2 = 0.143841.
    Only the one labelled position counts; identical logits give 0."""
    policy = two_token_logits([math.log(3), 0.0], [9.0, 0.0])
    ref = two_token_logits([0.0, 0.0], [0.0, 9.0])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    assert kl_to_reference(policy, ref, labels).item() == pytest.approx(0.143841, abs=1e-6)
    assert kl_to_reference(policy, policy, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_to_reference_over_every_position():
    """TOFU's and open-unlearning's batchmean over every position: position 1 adds the KL between the
    Bernoullis of logit -9 (ref) and +9 (policy), (2 sigmoid(9) - 1) * 9 = 8.997779; the mean of the two
    positions is (0.143841 + 8.997779) / 2 = 4.570810, against 0.143841 over the answer token alone."""
    policy = two_token_logits([math.log(3), 0.0], [9.0, 0.0])
    ref = two_token_logits([0.0, 0.0], [0.0, 9.0])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    assert kl_to_reference(policy, ref, labels, positions="all").item() == pytest.approx(4.570810, abs=1e-5)
    with pytest.raises(ValueError, match="positions='every'"):
        kl_to_reference(policy, ref, labels, positions="every")

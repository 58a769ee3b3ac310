"""Pure tensor math shared by the objectives and the metrics.

Conventions: `labels` are the input ids with ignored positions (prompt, padding) set to -100, aligned
with `input_ids` (not shifted); the shift that makes position t predict token t+1 happens here, once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1: returns (logits[:, :-1], labels[:, 1:])."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled next token, and the mask of labelled positions.

    Returns (logp [B, T-1], mask [B, T-1]); logp is 0 where mask is False, so sums need no extra masking.
    """
    logits, targets = shift_for_next_token(logits, labels)
    mask = targets != IGNORE_INDEX
    # Gathering with -100 would index vocab id V-100: replace ignored targets by 0 and mask afterwards.
    safe_targets = targets.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of answer-token log-probs per sequence and the number of answer tokens: ([B], [B])."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true (0 when nothing is masked in)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over all labelled tokens of the batch (the usual LM loss)."""
    logits, targets = shift_for_next_token(logits, labels)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def kl_to_reference(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled positions of KL(p_ref || p_policy) of the next-token distributions."""
    policy_logits, targets = shift_for_next_token(policy_logits, labels)
    ref_logits, _ = shift_for_next_token(ref_logits, labels)
    mask = targets != IGNORE_INDEX
    log_p = torch.log_softmax(policy_logits.float(), dim=-1)
    log_q = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return masked_mean(kl, mask)

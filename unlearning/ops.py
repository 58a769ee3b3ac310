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


def next_token_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float logits predicting each next token [B, T-1, V], the targets [B, T-1] with ignored
    positions replaced by 0, and the mask of labelled positions [B, T-1]."""
    logits, targets = shift_for_next_token(logits, labels)
    mask = targets != IGNORE_INDEX
    # Gathering or one-hot encoding -100 would hit vocab id V-100: use 0 there and mask afterwards.
    return logits.float(), targets.masked_fill(~mask, 0), mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled next token, and the mask of labelled positions.

    Returns (logp [B, T-1], mask [B, T-1]); logp is 0 where mask is False, so sums need no extra masking.
    """
    logits, targets, mask = next_token_targets(logits, labels)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def without_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logits with each position's target token set to -inf: the distribution over all other tokens."""
    return logits.scatter(-1, targets.unsqueeze(-1), float("-inf"))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per position, CE(softmax(target_logits), softmax(logits)) = -sum_v q_v log p_v: [B, T]."""
    return -(torch.softmax(target_logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(-1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of answer-token log-probs per sequence and the number of answer tokens: ([B], [B])."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true (0 when nothing is masked in)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_mse(values: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked-in positions of the mean squared difference along the feature (last) dimension;
    `target` broadcasts (one vector for every position, or one per position)."""
    return masked_mean((values.float() - target.float()).pow(2).mean(-1), mask)


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over all labelled tokens of the batch (the usual LM loss)."""
    logits, targets = shift_for_next_token(logits, labels)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def position_kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref_logits) || softmax(logits)) at every position: [B, T, V] -> [B, T], in fp32."""
    log_q, log_p = torch.log_softmax(ref_logits.float(), dim=-1), torch.log_softmax(logits.float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def kl_to_reference(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                     positions: str = "answer") -> torch.Tensor:
    """KL(p_ref || p_policy) of the next-token distributions, averaged over `positions`: "answer", the
    labelled positions; "all", every position of the [B, T] batch, prompt and padding included
    (TOFU's and open-unlearning's `kl_div(..., reduction="batchmean")` over the flattened logits)."""
    if positions not in ("answer", "all"):
        raise ValueError(f"positions={positions!r}: expected 'answer' or 'all'")
    kl = position_kl(ref_logits, policy_logits)
    if positions == "all":
        return kl.mean()
    _, targets = shift_for_next_token(policy_logits, labels)
    return masked_mean(kl[:, :-1], targets != IGNORE_INDEX)

"""Machine Unlearning in Large Language Models (Chen, Zhang, Li, Dong, Liu, Hu, Yang; 2024, arXiv 2404.16841).

The paper's public text gives no formula (an evaluative model picks the dialogues to unlearn; a
distance loss is the negative loss; the expected outputs' cluster mean gives the positive loss; a
normal loss keeps ability). This file implements the following reading of it.

Selection (unlearning/selectors.py, `selector=...`): the evaluative model flags training pairs; the
flagged pairs are the forget batch `(x, y)`. Each comes with an expected (desirable) output `a`, the
aligned "alternate" answer (refusals by default, `data.alternates_path` for one's own).

Negative loss: push the policy's next-token distributions on the flagged answers away from the
original model's, with a BOUNDED distance D (Jensen-Shannon, <= ln 2, or total variation, <= 1),
hinged at `margin`, over the answer tokens t:

    L_neg = mean_t relu(margin - D(p_theta(.|x, y_<t), p_ref(.|x, y_<t)))

Once D reaches the margin the term is 0, so unlike gradient ascent it cannot explode. At theta = ref,
D is at its minimum where its gradient is 0: the positive terms move the model off it in the first
step, then the hinge takes over.

Positive loss: h(x, y) = the mean last-layer hidden state over the answer tokens. The cluster of
expected outputs is represented by its mean c = mean_i h_ref(x_i, a_i) over the batch's (question,
expected output) pairs under the frozen original model (a stochastic estimate of the centroid over
all questions and alternates, from the one sub-batch the pipeline provides). The policy's state on
the flagged answer is pulled toward that centroid, so that reading the forget answer the model is in
the state it has when giving an expected output:

    L_pos = mean_i (1 - cos(h_theta(x_i, y_i), c))

plus the NLL (token mean) of the expected output nearest the centroid, a* = a_j with
j = argmax_j cos(h_ref(x_j, a_j), c), given after every flagged question: L_nll = NLL_mean(a* | x_i).

    L_forget = w_neg * L_neg + w_pos * (L_pos + L_nll)

The normal loss is the shared retain regularizer (`retain=nll`), not part of this objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unlearning.errors import ConfigError
from unlearning.data import alternates  # noqa: F401  (provides the "alternate" batch set read below)
from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import IGNORE_INDEX, masked_mean, mean_token_nll, shift_for_next_token

DISTANCE_BOUNDS = {"js": math.log(2.0), "tv": 1.0}


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between the softmaxes of the last dimension."""
    log_p = torch.log_softmax(logits_p.float(), dim=-1)
    log_q = torch.log_softmax(logits_q.float(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))


def total_variation(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Total variation distance (in [0, 1]) between the softmaxes of the last dimension."""
    return 0.5 * (torch.softmax(logits_p.float(), -1) - torch.softmax(logits_q.float(), -1)).abs().sum(-1)


DISTANCES = {"js": js_divergence, "tv": total_variation}


def hinged_distance_loss(distance: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over masked-in positions of relu(margin - distance): 0 once every token is `margin` away."""
    return masked_mean(F.relu(margin - distance), mask)


def answer_representation(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean hidden state [B, H] over each sequence's answer tokens (labels != -100) of `hidden` [B, T, H]."""
    mask = (labels != IGNORE_INDEX).unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def cosine_pull_loss(representations: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """mean_i (1 - cos(representations_i, center)), in [0, 2]."""
    return (1.0 - F.cosine_similarity(representations, center.unsqueeze(0), dim=-1)).mean()


def nearest_to_center(representations: torch.Tensor, center: torch.Tensor) -> int:
    """Index of the representation with the highest cosine similarity to `center`."""
    return int(F.cosine_similarity(representations, center.unsqueeze(0), dim=-1).argmax())


def answer_after_prompts(prompts: dict, answers: dict, row: int) -> dict:
    """Right-padded batch: the prompt of every row of `prompts` followed by the answer of `answers[row]`.

    Prompt = the leading unlabelled, attended tokens; padding gets id 0, attention 0 and label -100.
    """
    answer_mask = answers["labels"][row] != IGNORE_INDEX
    answer = answers["input_ids"][row][answer_mask]
    rows = []
    for ids, labels, attention in zip(prompts["input_ids"], prompts["labels"], prompts["attention_mask"]):
        prompt = ids[(labels == IGNORE_INDEX) & (attention == 1)]
        rows.append((torch.cat([prompt, answer]), len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    shape, device = (len(rows), width), answer.device
    batch = {key: torch.zeros(shape, dtype=torch.long, device=device) for key in ("input_ids", "attention_mask")}
    batch["labels"] = torch.full(shape, IGNORE_INDEX, dtype=torch.long, device=device)
    for i, (ids, n_prompt) in enumerate(rows):
        batch["input_ids"][i, :len(ids)] = ids
        batch["attention_mask"][i, :len(ids)] = 1
        batch["labels"][i, n_prompt:len(ids)] = ids[n_prompt:]
    return batch


def forward_states(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, last-layer hidden states) of a causal LM on a padded batch."""
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


class Chen2024(Objective):
    frozen_models = ("ref",)
    batch_keys = ("forget", "alternate")

    def __init__(self, distance: str = "js", margin: float = 0.5, w_neg: float = 1.0, w_pos: float = 1.0,
                 gamma: float = 1.0) -> None:
        super().__init__(gamma)
        if distance not in DISTANCES:
            raise ConfigError(f"method.distance={distance!r} is not one of {sorted(DISTANCES)}")
        if not 0.0 < margin <= DISTANCE_BOUNDS[distance]:
            raise ConfigError(f"method.margin={margin} must be in (0, {DISTANCE_BOUNDS[distance]:.3g}], "
                              f"the range of the {distance} distance")
        self.distance = DISTANCES[distance]
        self.margin = margin
        self.w_neg = w_neg
        self.w_pos = w_pos

    def forward(self, policy, batch, ref):
        forget, alternate = batch["forget"], batch["alternate"]
        logits, hidden = forward_states(policy, forget)
        with torch.no_grad():
            ref_logits = forward_logits(ref, forget)
            expected = answer_representation(forward_states(ref, alternate)[1], alternate["labels"])
            center = expected.mean(0)
        policy_logits, targets = shift_for_next_token(logits, forget["labels"])
        distance = self.distance(policy_logits, shift_for_next_token(ref_logits, forget["labels"])[0])
        negative = hinged_distance_loss(distance, targets != IGNORE_INDEX, self.margin)
        pull = cosine_pull_loss(answer_representation(hidden, forget["labels"]), center)
        nearest = answer_after_prompts(forget, alternate, nearest_to_center(expected, center))
        nll = mean_token_nll(forward_logits(policy, nearest), nearest["labels"])
        return self.w_neg * negative + self.w_pos * (pull + nll)

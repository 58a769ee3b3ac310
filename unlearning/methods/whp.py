"""Who's Harry Potter? Approximate Unlearning in LLMs (Eldan & Russinovich 2023, arXiv 2310.02238).

Generic labels per forget block, from the baseline (the target before unlearning, "ref") on the block
translated with the anchored-terms dictionary and the reinforced model (the target further finetuned
on the forget set) on the original block, gathered at aligned positions:

    v_generic = v_baseline(translated) - alpha * ReLU(v_reinforced(original) - v_baseline(translated))

    hard (default): L = CE(p_theta(original), argmax v_generic)     soft: L = KL(softmax(v_generic) || p_theta)

averaged over labelled positions of the ORIGINAL block; anchored terms repeated after their first
occurrence in a block carry no label (unlearning.data.anchored_terms builds the batch). alpha = 5.

`WHPInference` is MUSE's inference-time simplification (arXiv 2407.06460): the same formula on logits
of both models on the same input, no anchors, no finetuning, served as a model evaluation can score.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from unlearning.data.anchored_terms import TEXT_FIELDS, anchor_records, load_dictionary, save_dictionary
from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import IGNORE_INDEX, kl_to_reference, mean_token_nll
from unlearning.stages.inputs import StageInputs, batch_set
from unlearning.whp_terms import propose_terms

PROPOSED_TERMS_FILE = "anchored_terms.yaml"


def generic_logits(baseline: torch.Tensor, reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """v_b - alpha * relu(v_r - v_b): push down exactly the tokens the reinforced model boosts."""
    return baseline - alpha * torch.relu(reinforced - baseline)


def gather_aligned(translated_logits: torch.Tensor, aligned_positions: torch.Tensor) -> torch.Tensor:
    """[B, T', V] logits of the translation, read at each original position's counterpart: [B, T, V]."""
    index = aligned_positions.unsqueeze(-1).expand(-1, -1, translated_logits.size(-1))
    return translated_logits.gather(1, index)


def hard_generic_labels(v_generic: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with input ids: token t's label is argmax v_generic[t-1] where t is labelled."""
    targets = v_generic[:, :-1].argmax(-1)
    hard = torch.full_like(labels, IGNORE_INDEX)
    hard[:, 1:] = torch.where(labels[:, 1:] != IGNORE_INDEX, targets, IGNORE_INDEX)
    return hard


def whp_loss(policy_logits: torch.Tensor, v_generic: torch.Tensor, labels: torch.Tensor, soft: bool) -> torch.Tensor:
    if soft:
        return kl_to_reference(policy_logits, v_generic, labels)
    return mean_token_nll(policy_logits, hard_generic_labels(v_generic, labels))


class WHP(Objective):
    frozen_models = ("ref", "reinforced")
    batch_keys = ("anchored",)

    def __init__(self, alpha: float = 5.0, soft: bool = False, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.alpha = alpha
        self.soft = soft

    def forward(self, policy, batch, ref, reinforced):
        block = batch["anchored"]
        with torch.no_grad():
            baseline = gather_aligned(forward_logits(ref, block["translated"]), block["aligned_positions"])
            v_generic = generic_logits(baseline, forward_logits(reinforced, block), self.alpha)
        return whp_loss(forward_logits(policy, block), v_generic, block["labels"], self.soft)


def anchored_terms(inputs: StageInputs) -> dict[str, str]:
    """The dictionary: `data.anchored_terms` (a file or shipped name), else proposed from the forget
    records by unlearn-whp-terms' ranking (reinforced over baseline log-probs), saved in the run folder."""
    cfg = inputs.experiment.cfg
    if cfg.data.get("anchored_terms"):
        return load_dictionary(cfg.data.anchored_terms)
    texts = [" ".join(r[k] for k in TEXT_FIELDS if k in r) for r in inputs.batch_set("forget")]
    terms = propose_terms(inputs.policy, inputs.frozen("reinforced"), inputs.tokenizer, texts,
                          max_length=cfg.max_length)
    save_dictionary(inputs.experiment.run_dir / PROPOSED_TERMS_FILE, terms,
                    "Proposed from the forget set (no data.anchored_terms).")
    return terms


@batch_set("anchored")
def anchored_set(inputs: StageInputs) -> list[dict]:
    """Each forget record with its translation by the anchored terms and the token alignment of the two."""
    experiment = inputs.experiment
    return anchor_records(inputs.tokenizer, experiment.spec.template, inputs.batch_set("forget"),
                          anchored_terms(inputs), experiment.cfg.max_length)


class WHPInference(nn.Module):
    """A model whose logits are generic_logits(baseline, reinforced) on the same input; greedy `generate`."""

    def __init__(self, baseline: nn.Module, reinforced: nn.Module, alpha: float = 5.0) -> None:
        super().__init__()
        self.baseline, self.reinforced, self.alpha = baseline, reinforced, alpha
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.baseline.parameters()).device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **unused) -> CausalLMOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "use_cache": False}
        return CausalLMOutput(logits=generic_logits(self.baseline(**inputs).logits,
                                                    self.reinforced(**inputs).logits, self.alpha))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 pad_token_id: int | None = None, eos_token_id: int | None = None, **unused) -> torch.Tensor:
        """Greedy decoding without a cache (small models); handles left padding like HF's generate."""
        if do_sample:
            raise ValueError("WHPInference.generate decodes greedily only (do_sample=False)")
        eos = eos_token_id if eos_token_id is not None else self.baseline.config.eos_token_id
        pad = pad_token_id if pad_token_id is not None else eos
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
            input_ids = torch.cat([input_ids, token[:, None]], dim=-1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=-1)
            done |= token == eos
            if done.all():
                break
        return input_ids

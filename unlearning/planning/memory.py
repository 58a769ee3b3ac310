"""The memory a training stage needs per rank, term by term: what `unlearn-plan` adds up.

Ψ below is the number of parameters, T of trainable ones (all; under LoRA the adapters; fewer with
`trainable_params`), N the ranks, w the bytes of a weight as training holds it, a of an activation:
- weights Ψ·w (ZeRO-3: /N); gradients T·w (under DeepSpeed with their fp32 copy, T·(w + 4); ZeRO-2/3: /N);
- optimizer states: DeepSpeed keeps an fp32 master copy and AdamW's two fp32 moments, 12·T bytes (ZeRO
  1-3: /N), whatever w is; plain PyTorch (one process, DDP) keeps the two moments in the weights' dtype,
  2·T·w, and no master copy: Lightning's mixed precision leaves the weights in their loaded dtype;
- under mixed precision with 32-bit weights and no DeepSpeed, autocast's 16-bit copies of the trainable
  weights, 2·T, held through the forward pass; under DDP, its gradient buckets, T·w more;
- DeepSpeed's gradient-reduction buckets (ZeRO-2: two of `reduce_bucket_size` elements with
  `overlap_comm`; ZeRO-3: one, allocated at setup and kept, as are its gradient partitions, T·w/N);
- under ZeRO-3, during the step, the gathered full weights DeepSpeed keeps resident: up to
  `stage3_max_live_parameters` elements (DeepSpeed's default 1e9: a whole model below 1B parameters), at
  least the layer that computes and the one prefetched (the bigger of a decoder layer and the embedding,
  twice); on CPU ranks also T·w of full-size weight-shaped tensors alive through backward, measured
  (benchmarks/zero3_accounting.py: tensors of the weights' shapes, not the parameters, held only by
  autograd) but not attributed to an owner;
- frozen models: a full copy each (the reference; under LoRA the reference is the policy with its
  adapters off and costs nothing; the reinforced model), w·Ψ (ZeRO-3: /N); their no-grad forwards keep
  nothing for backward;
- activations, counted the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", arXiv 2205.05198, Sec. 4.1) count a GPT layer, s·b·h·(34 + 5·a_heads·s/h) bytes in
  16-bit: every tensor a layer keeps for backward. For the layers counted here (no dropout), per token:
  each norm keeps its input, its normalised input and its output (3h); attention keeps q, k, v, its
  output and the output projection's input (3·q_width + 2·kv_width; a GQA model's k and v are narrower);
  the MLP keeps `mlp_kept` tensors of its width i (a Llama: gate, SiLU(gate), up, their product: 4i). So a
  Llama layer keeps s·b·(9h + 2·kv_width + 4i)·a bytes (Llama-2-7b in 16-bit: 178 KB per token). Eager
  attention also keeps the softmax of the [b, heads, s, s] scores, in fp32 and, under 16-bit, its copy
  (sdpa and flash-attention keep none). With gradient checkpointing a layer keeps only its input (h per
  token), plus one layer's full set while it computes. An objective reads several sub-batches in one step
  (NPO + a retain term: forget and retain), each of b sequences: all are held until the backward pass;
- logits: the fp32 log-probabilities each sub-batch keeps for its loss (4·V per token), plus the last
  sub-batch's logits in the activation dtype and their fp32 copy while its loss is computed.
When each exists (`Term.phase`, measured on CPU in benchmarks/plan_vs_reality.py): without DeepSpeed,
Lightning frees the gradients only after the next step's forward pass, so that forward holds weights,
gradients, optimizer states and activations together, and all add up. DeepSpeed holds gradients (and the
fp32 copy of a rank's partition it makes for the step, w + 4 bytes per sharded trainable parameter) and
fills its buckets only from the backward pass to the optimizer step, when the activations are gone: a
peak counts the larger of the two groups (`peak_bytes`). Not counted: the CUDA context (~0.5 GiB per
GPU), allocator fragmentation, and the process itself (the `baseline` of `predicted_peak_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearning.planning.shapes import ModelShape

DEEPSPEED_OPTIMIZER_BYTES = 12  # fp32 master weight + AdamW's exp_avg and exp_avg_sq, per trainable parameter


@dataclass(frozen=True)
class Hardware:
    """How a stage's tensors are spread: `ranks` processes, DeepSpeed's ZeRO stage (None: plain PyTorch,
    one process or DDP), offload, precision, and where a rank's tensors live (`accelerator`)."""

    ranks: int
    zero_stage: int | None
    offload_optimizer: bool
    offload_parameters: bool
    precision: str
    accelerator: str
    reduce_bucket_size: int  # DeepSpeed elements per gradient-reduction bucket
    overlap_comm: bool
    max_live_parameters: int  # ZeRO-3: gathered elements DeepSpeed keeps resident (stage3_max_live_parameters)
    weight_bytes: int  # w: a weight as training holds it (planning.stages.weight_bytes)

    @property
    def mixed(self) -> bool:
        return self.precision.endswith("mixed") or self.precision in ("16", "bf16")

    @property
    def activation_bytes(self) -> int:
        return 2 if self.mixed else self.weight_bytes

    def sharded(self, count: int, from_stage: int) -> float:
        """`count` split over the ranks when the ZeRO stage is `from_stage` or above."""
        return count / self.ranks if self.zero_stage is not None and self.zero_stage >= from_stage else count


@dataclass(frozen=True)
class Workload:
    """What one stage trains on: its per-rank batch of `batch_size` sequences in each of `sub_batches`,
    `sequence` tokens long; `trainable` parameters, of `parameters` held; full frozen copies by name."""

    batch_size: int
    sub_batches: int
    sequence: int
    parameters: int
    trainable: int
    frozen_copies: tuple[str, ...]
    checkpointing: bool
    eager_attention: bool


HELD, FORWARD, BACKWARD = "held", "forward", "backward"  # when a term exists: see Term


@dataclass(frozen=True)
class Term:
    """One memory term of a rank: its size, whether DeepSpeed's offload moved it to host memory, and
    when it exists: HELD through the whole step, FORWARD from the forward pass until backward frees it
    (activations), or BACKWARD from the backward pass to the optimizer step (DeepSpeed's gradients)."""

    name: str
    bytes: float
    host: bool = False
    phase: str = HELD


def peak_bytes(terms: list[Term]) -> float:
    """The most `terms` hold at once: the held terms, plus the larger of the forward and backward ones."""
    total = {phase: sum(term.bytes for term in terms if term.phase == phase) for phase in (HELD, FORWARD, BACKWARD)}
    return total[HELD] + max(total[FORWARD], total[BACKWARD])


def training_terms(shape: ModelShape, hardware: Hardware, work: Workload, device: str = "gpu") -> list[Term]:
    """The memory terms of one rank for one stage (module docstring). `device="cpu"`: as a CPU process
    holds them, where a DeepSpeed bucket only occupies the pages gradients were written to."""
    w, zero, ranks = hardware.weight_bytes, hardware.zero_stage, hardware.ranks
    offload_weights = zero == 3 and hardware.offload_parameters
    terms = [Term("weights", hardware.sharded(work.parameters, 3) * w, offload_weights)]
    if zero is None:
        terms.append(Term("gradients", work.trainable * w))
        terms.append(Term("optimizer states (AdamW moments)", 2 * work.trainable * w))
        if hardware.mixed and w == 4:
            terms.append(Term("16-bit weight copies (autocast)", 2 * work.trainable, phase=FORWARD))
        if ranks > 1:
            terms.append(Term("DDP gradient buckets", work.trainable * w))
    else:
        gradients = hardware.sharded(work.trainable, 2)
        if hardware.offload_optimizer:
            terms.append(Term("gradients (fp32, offloaded)", gradients * 4, True, BACKWARD))
        elif zero == 3:  # ZeRO-3 allocates its gradient partitions, zeroed, when it sets up
            terms.append(Term("gradient partitions", gradients * w))
            terms.append(Term("fp32 copy of the gradient partitions at the step", gradients * 4, phase=BACKWARD))
        else:
            terms.append(Term("gradients + their fp32 copy at the step", gradients * (w + 4), phase=BACKWARD))
        terms.append(Term("optimizer states (fp32 master + AdamW moments)",
                          hardware.sharded(work.trainable, 1) * DEEPSPEED_OPTIMIZER_BYTES, hardware.offload_optimizer))
    if zero is not None and zero >= 2:
        buckets = (2 if zero == 2 and hardware.overlap_comm else 1) * hardware.reduce_bucket_size * w
        # ZeRO-3 allocates its bucket when it sets up and keeps it; ZeRO-2 fills its own from backward to the step
        terms.append(Term("DeepSpeed reduce buckets", min(buckets, work.trainable * w) if device == "cpu" else buckets,
                          phase=HELD if zero == 3 else BACKWARD))
    if zero == 3:
        biggest = max(shape.layer_parameters(), shape.vocab_size * shape.hidden_size)
        gathered = max(2 * biggest, min(hardware.max_live_parameters, work.parameters))
        terms.append(Term("ZeRO-3 gathered weights (stage3_max_live_parameters, at least 2 layers)", gathered * w,
                          phase=FORWARD))
        if device == "cpu":  # measured on CPU ranks (benchmarks/zero3_accounting.py), not known on GPUs
            terms.append(Term("ZeRO-3 full-size weight-shaped tensors in backward (owner not found)",
                              work.trainable * w, phase=FORWARD))
    for name in work.frozen_copies:
        terms.append(Term(f"frozen model: {name}", hardware.sharded(shape.parameters(), 3) * w, offload_weights))
    terms.append(Term("activations" + (" (checkpointed)" if work.checkpointing else ""),
                      activation_bytes(shape, work, hardware.activation_bytes), phase=FORWARD))
    terms.append(Term("logits", logit_bytes(shape, work, hardware.activation_bytes), phase=FORWARD))
    return terms


def layer_activation_bytes(shape: ModelShape, tokens: int, sequence: int, sequences: int, eager: bool,
                           activation: int) -> float:
    """What one decoder layer keeps for backward over `tokens` tokens (`sequences` of `sequence`)."""
    query, key_value = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    arch = shape.architecture
    per_token = (3 * shape.hidden_size * len(arch.layer_norms) + 3 * query + 2 * key_value
                 + arch.mlp_kept * shape.intermediate_size)
    scores = shape.num_heads * sequence * sequence * sequences * (4 + (activation if activation < 4 else 0))
    return tokens * per_token * activation + (scores if eager else 0)


def activation_bytes(shape: ModelShape, work: Workload, activation: int) -> float:
    """The decoder layers' activations of a step: every sub-batch's, held until backward."""
    tokens = work.batch_size * work.sequence
    layer = layer_activation_bytes(shape, tokens, work.sequence, work.batch_size, work.eager_attention, activation)
    if not work.checkpointing:
        return work.sub_batches * shape.num_layers * layer
    return work.sub_batches * shape.num_layers * tokens * shape.hidden_size * activation + layer


def logit_bytes(shape: ModelShape, work: Workload, activation: int) -> float:
    tokens = work.batch_size * work.sequence
    return tokens * shape.vocab_size * (4 * work.sub_batches + activation + (4 if activation < 4 else 0))

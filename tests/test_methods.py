"""Every method config trains a tiny model as the pipeline does (prepare, then steps) with its forget term
alone, and moves it the way the method intends; each method reads the frozen model and sub-batch it should."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import PAIRS_FOR_STEP, compose_config, make_tiny_llama
from unlearning.cli import CONFIG_DIR
from unlearning.data.anchored_terms import anchor_records
from unlearning.data.collate import PromptTemplate, encode_qa, pad_batch
from unlearning.methods.base import forward_logits, policy_and_reference_logp
from unlearning.methods.npo import npo_loss
from unlearning.methods.undial import undial_loss
from unlearning.methods.whp import gather_aligned, generic_logits, whp_loss
from unlearning.models import frozen_copy
from unlearning.module import UnlearningModule
from unlearning.ops import kl_to_reference, mean_token_nll, sequence_logprob
from unlearning.stages.inputs import declared, reference_model

METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))
RETAINS = sorted(p.stem for p in (Path(CONFIG_DIR) / "retain").glob("*.yaml"))


def qa_batch(tokenizer, pairs) -> dict[str, torch.Tensor]:
    encoded = [encode_qa(tokenizer, PromptTemplate(), q, a, max_length=64) for q, a in pairs]
    return pad_batch(encoded, tokenizer.pad_token_id)


def step_batch(tokenizer) -> dict:
    """Every sub-batch a method may read: forget (the first two pairs), retain, alternate (a refusal to each
    forget question) and anchored (the forget pairs with WHP's anchored terms translated)."""
    forget_records = [{"question": q, "answer": a} for q, a in PAIRS_FOR_STEP[:2]]
    return {"forget": qa_batch(tokenizer, PAIRS_FOR_STEP[:2]), "retain": qa_batch(tokenizer, PAIRS_FOR_STEP[2:]),
            "alternate": qa_batch(tokenizer, [(q, "I don't know.") for q, _ in PAIRS_FOR_STEP[:2]]),
            "anchored": pad_batch(anchor_records(tokenizer, PromptTemplate(), forget_records,
                                                 {"Paris": "Lyon", "town": "village"}, 64), tokenizer.pad_token_id)}


def finetuned(model, sub_batches: list[dict], steps: int):
    """`model` after `steps` Adam steps of answer NLL on each of `sub_batches` (in place)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        for sub_batch in sub_batches:
            optimizer.zero_grad()
            mean_token_nll(forward_logits(model, sub_batch), sub_batch["labels"]).backward()
            optimizer.step()
    return model


def reinforced_on_forget(model, batch: dict, steps: int = 10):
    """The reinforced model as the pipeline makes it: the model further trained on the forget answers."""
    return frozen_copy(finetuned(copy.deepcopy(model), [batch["forget"]], steps))


@pytest.fixture(scope="module")
def target_weights(tokenizer) -> dict:
    """A tiny Llama that has learnt the step pairs, as the finetuned target has learnt the benchmark: a
    random model gives the answers p ~ 1e-4, where SimNPO's sigmoid and SatImp's p^5 weights saturate
    and no method has anything to forget."""
    batch = step_batch(tokenizer)
    return finetuned(make_tiny_llama(tokenizer), [batch["forget"], batch["retain"]], steps=15).state_dict()


@pytest.fixture
def target(tokenizer, target_weights):
    model = make_tiny_llama(tokenizer)
    model.load_state_dict(target_weights)
    return model


def build_module(method: str, retain: str, model, batch: dict, tmp_path) -> UnlearningModule:
    cfg = compose_config([f"method={method}", f"retain={retain}"], run_dir=tmp_path)
    objective = instantiate(cfg.method)
    regularizer = instantiate(cfg.retain) if cfg.get("retain") else None
    available = {"ref": lambda: reference_model(model), "reinforced": lambda: reinforced_on_forget(model, batch)}
    frozen = {name: available[name]() for name in declared(objective, regularizer)[1]}
    module = UnlearningModule(model, objective, instantiate(cfg.optimizer, lr=1e-2), regularizer, frozen=frozen,
                              trainable_params=cfg.trainable_params)
    module.log = lambda *args, **kwargs: None  # no Trainer here: logging is the Trainer's job
    return module


def train_steps(module: UnlearningModule, batch: dict, steps: int) -> torch.Tensor:
    """What the pipeline does: `on_fit_start` (the objective's `prepare`), then optimizer steps."""
    module.on_fit_start()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
    return loss


def one_step(method: str, retain: str, model, tokenizer, tmp_path) -> torch.Tensor:
    batch = step_batch(tokenizer)
    return train_steps(build_module(method, retain, model, batch, tmp_path), batch, steps=1)


# What each method's forget term alone must do to the model within a few steps, measured before and
# after: (measure, +1 if it must rise / -1 if it must fall, why). A method not listed must raise the
# forget answers' NLL, as any method that forgets them does.
def forget_nll(module, batch):
    return mean_token_nll(forward_logits(module.policy, batch["forget"]), batch["forget"]["labels"])


def alternate_nll(module, batch):
    return mean_token_nll(forward_logits(module.policy, batch["alternate"]), batch["alternate"]["labels"])


def preference_margin(module, batch):
    """Summed log-prob of the refusal minus that of the forget answer, per pair, averaged."""
    return (sequence_logprob(forward_logits(module.policy, batch["alternate"]), batch["alternate"]["labels"])[0]
            - sequence_logprob(forward_logits(module.policy, batch["forget"]), batch["forget"]["labels"])[0]).mean()


def own_objective(module, batch):
    return module.objective(module.policy, batch, **module._frozen_for(module.objective))


INTENDED = {
    "idk_dpo": (preference_margin, +1, "DPO prefers the refusal: its margin over the forget answer grows"),
    "chen2024": (alternate_nll, -1, "the positive term pulls toward the expected output (the refusal); its NLL falls"),
    "rmu": (own_objective, -1, "the forget answers' layer output moves to the control vector (no likelihood target)"),
    "whp": (own_objective, -1, "the policy fits the generic labels (its CE falls); they differ from the answer "
                               "only where the reinforced model boosts a token"),
}
STEPS = 3


@torch.no_grad()
def measure(fn, module, batch) -> float:
    return float(fn(module, batch))


@pytest.mark.parametrize("method", METHODS)
def test_forget_term_alone_moves_the_model_as_intended(method, target, tokenizer, tmp_path):
    """retain=none: the objective alone must change the weights (after its `prepare`, as in the pipeline)
    and move its intended measure; an objective returning 0 fails here (see INTENDED)."""
    batch = step_batch(tokenizer)
    model = target
    module = build_module(method, "none", model, batch, tmp_path)
    fn, sign, why = INTENDED.get(method, (forget_nll, +1, "forgetting raises the forget answers' NLL"))
    before_weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    before = measure(fn, module, batch)
    loss = train_steps(module, batch, STEPS)
    assert torch.isfinite(loss), f"{method}: loss {loss}"
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before_weights[name])]
    assert changed, f"{method}: no weight changed"
    after = measure(fn, module, batch)
    assert sign * (after - before) > 1e-4, f"{method}: {fn.__name__} {before:.4f} -> {after:.4f}; expected: {why}"


@pytest.mark.parametrize("retain", RETAINS)
def test_retain_regularizers_combine_with_a_method(retain, model, tokenizer, tmp_path):
    loss = one_step("grad_ascent", retain, model, tokenizer, tmp_path)
    assert torch.isfinite(loss)


def test_reference_model_only_when_declared(model):
    from unlearning.methods.grad_ascent import GradAscent
    from unlearning.methods.npo import NPO
    from unlearning.retain import KLRetain, NLLRetain

    from unlearning.errors import ConfigError

    optimizer = torch.optim.SGD
    assert declared(GradAscent(), NLLRetain()) == (("forget", "retain"), ())
    assert declared(GradAscent(), KLRetain())[1] == ("ref",)
    assert declared(NPO(), KLRetain())[1] == ("ref",)  # each frozen model once
    ref = reference_model(model)
    assert not any(p.requires_grad for p in ref.parameters()) and ref is not model
    assert not UnlearningModule(model, GradAscent(), optimizer, NLLRetain()).frozen
    assert UnlearningModule(model, NPO(), optimizer, None, frozen={"ref": ref}).frozen["ref"] is ref
    with pytest.raises(ConfigError, match=r"frozen model\(s\) \['ref'\] that this stage does not provide"):
        UnlearningModule(model, NPO(), optimizer, None)


# Wiring: which frozen model plays which role, and which sub-batch is read as which -------------------

def objective_of(method: str, tmp_path):
    return instantiate(compose_config([f"method={method}"], run_dir=tmp_path).method)


def loss_of(objective, policy, batch: dict, frozen: dict) -> float:
    with torch.no_grad():
        return float(objective(policy, batch, **{name: frozen[name] for name in objective.frozen_models}))


# Methods that act in `prepare` (an edit of the weights) and whose forward term is 0 by design.
WEIGHT_EDITS = {"task_vector"}


@pytest.mark.parametrize("method", METHODS)
def test_objective_reads_its_sub_batches_and_frozen_models(method, model, target, tokenizer, tmp_path):
    """Sub-batches the objective does not declare leave its loss alone; changing the ones it reads (swapping
    two of them, or the primary one for another) changes it; each frozen model it declares is used, in a
    role that is not the policy's (swapping the policy and that model changes the loss). The frozen models
    are as in a run: the reference knows the answers, the reinforced model knows them better (hard WHP
    labels change only where the reinforced model boosts the baseline's own top token)."""
    objective = objective_of(method, tmp_path)
    batch = step_batch(tokenizer)
    available = {"ref": lambda: frozen_copy(target), "reinforced": lambda: reinforced_on_forget(target, batch)}
    frozen = {name: available[name]() for name in objective.frozen_models}
    base = loss_of(objective, model, batch, frozen)
    if method in WEIGHT_EDITS:  # the work is `prepare`'s edit (tested by hand below); the term adds nothing
        assert base == 0.0 and loss_of(objective, model, {**batch, "forget": batch["retain"]}, frozen) == 0.0
        return
    unread = [key for key in batch if key not in objective.batch_keys]
    assert loss_of(objective, model, {**batch, **{key: batch["retain"] if key != "retain" else batch["alternate"]
                                                  for key in unread}}, frozen) == base
    read = objective.batch_keys
    if len(read) > 1:  # preferred and rejected (or forget and expected) swapped
        assert loss_of(objective, model, {**batch, read[0]: batch[read[1]], read[1]: batch[read[0]]}, frozen) != base
    elif read[0] == "forget":
        assert loss_of(objective, model, {**batch, "forget": batch["retain"]}, frozen) != base
    else:  # WHP's anchored blocks: the baseline reads the translation (here each row given the other's)
        anchored = batch["anchored"]
        translated = {k: v.flip(0) for k, v in anchored["translated"].items()}
        assert loss_of(objective, model, {**batch, "anchored": {**anchored, "translated": translated}}, frozen) != base
    for name in objective.frozen_models:
        assert loss_of(objective, model, batch, {**frozen, name: model}) != base, f"{method}: {name} unused"
        swapped = loss_of(objective, frozen[name], batch, {**frozen, name: model})
        assert swapped != base, f"{method}: policy and {name} play the same role"


def test_npo_wiring_hand_computed(model, tokenizer, tmp_path):
    """NPO = npo_loss(policy, ref) on the forget answers: a policy more likely than its reference is
    pushed (loss above (2/beta) ln 2), the reverse is not (loss below it)."""
    batch = step_batch(tokenizer)
    other = finetuned(make_tiny_llama(tokenizer, seed=1), [batch["forget"]], steps=5).requires_grad_(False)
    objective = objective_of("npo", tmp_path)
    with torch.no_grad():
        logp_model = sequence_logprob(forward_logits(model, batch["forget"]), batch["forget"]["labels"])[0]
        logp_other = sequence_logprob(forward_logits(other, batch["forget"]), batch["forget"]["labels"])[0]
    assert (logp_other > logp_model).all()
    at_reference = 2 * math.log(2) / objective.beta
    knows_more = loss_of(objective, other, batch, {"ref": model})
    assert knows_more == pytest.approx(float(npo_loss(logp_other, logp_model, objective.beta)), rel=1e-5)
    assert knows_more > at_reference > loss_of(objective, model, batch, {"ref": other})


def test_idk_dpo_prefers_the_alternate(model, tokenizer, tmp_path):
    """DPO's preferred answer is the alternate (refusal), the rejected one the forget answer: the loss is
    dpo_loss(win=alternate, lose=forget); swapping the two sub-batches negates the margin m, giving
    -(2/beta) log sigmoid(-beta m)."""
    batch = step_batch(tokenizer)
    ref = frozen_copy(make_tiny_llama(tokenizer, seed=1))
    objective = objective_of("idk_dpo", tmp_path)
    with torch.no_grad():
        win = policy_and_reference_logp(model, ref, batch["alternate"])
        lose = policy_and_reference_logp(model, ref, batch["forget"])
    margin = (win[0] - win[1]) - (lose[0] - lose[1])
    beta = objective.beta
    expected = float(-(2 / beta) * torch.nn.functional.logsigmoid(beta * margin).mean())
    swapped = float(-(2 / beta) * torch.nn.functional.logsigmoid(-beta * margin).mean())
    assert loss_of(objective, model, batch, {"ref": ref}) == pytest.approx(expected, rel=1e-5)
    assert loss_of(objective, model, {**batch, "alternate": batch["forget"], "forget": batch["alternate"]},
                   {"ref": ref}) == pytest.approx(swapped, rel=1e-5)


@pytest.mark.parametrize("method", ["undial", "fundial"])
def test_undial_teacher_is_the_reference(method, model, tokenizer, tmp_path):
    """The teacher is the frozen model's logits with the answer token lowered, not the policy's."""
    batch = step_batch(tokenizer)
    ref = frozen_copy(make_tiny_llama(tokenizer, seed=1))
    objective = objective_of(method, tmp_path)
    forget = batch["forget"]
    with torch.no_grad():
        expected = undial_loss(forward_logits(model, forget), forward_logits(ref, forget), forget["labels"],
                               objective.strength, objective.focus_fraction, objective.focus_weight)
    assert loss_of(objective, model, batch, {"ref": ref}) == pytest.approx(float(expected), rel=1e-5)


def test_whp_baseline_reads_the_translation_and_reinforced_the_original(model, tokenizer, tmp_path):
    batch = step_batch(tokenizer)
    ref, reinforced = (frozen_copy(make_tiny_llama(tokenizer, seed=s)) for s in (1, 2))
    objective = objective_of("whp", tmp_path)
    block = batch["anchored"]
    with torch.no_grad():
        baseline = gather_aligned(forward_logits(ref, block["translated"]), block["aligned_positions"])
        v_generic = generic_logits(baseline, forward_logits(reinforced, block), objective.alpha)
        expected = whp_loss(forward_logits(model, block), v_generic, block["labels"], objective.soft)
    assert loss_of(objective, model, batch, {"ref": ref, "reinforced": reinforced}) == pytest.approx(
        float(expected), rel=1e-5)
    assert loss_of(objective, model, batch, {"ref": reinforced, "reinforced": ref}) != pytest.approx(
        float(expected), rel=1e-3)


def test_task_vector_steps_away_from_the_reinforced_model(model, tokenizer, tmp_path):
    """prepare: theta <- theta - scale (theta_reinforced - theta); with scale 1, 2 theta - theta_reinforced."""
    reinforced = frozen_copy(make_tiny_llama(tokenizer, seed=1))
    objective = objective_of("task_vector", tmp_path)
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    objective.prepare(model, reinforced=reinforced)
    theta_r = dict(reinforced.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), 2 * theta[name] - theta_r[name])


def test_kl_retain_measures_the_policy_against_the_reference(model, tokenizer):
    """KL(p_ref || p_theta): the reference is the first argument of the KL, so swapping the models changes it."""
    from unlearning.retain import KLRetain

    batch = step_batch(tokenizer)
    ref = frozen_copy(make_tiny_llama(tokenizer, seed=1))
    retain = batch["retain"]
    with torch.no_grad():
        p_logits, r_logits = forward_logits(model, retain), forward_logits(ref, retain)
        loss = float(KLRetain()(model, batch, ref=ref))
    assert loss == pytest.approx(float(kl_to_reference(p_logits, r_logits, retain["labels"])), rel=1e-5)
    assert loss != pytest.approx(float(kl_to_reference(r_logits, p_logits, retain["labels"])), rel=1e-3)

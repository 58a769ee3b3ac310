"""The baseline objectives' loss math against numbers computed by hand (in each docstring)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.test_losses import two_token_logits
from unlearning.errors import ConfigError
from unlearning.methods.base import decoder_layer_output
from unlearning.methods.ce_u import ceu_loss, ceu_target_logits
from unlearning.methods.dpo import dpo_loss
from unlearning.methods.rmu import RMU, rmu_loss, steering_vector
from unlearning.methods.satimp import satimp_loss
from unlearning.methods.simnpo import simnpo_loss
from unlearning.methods.undial import UnDIAL, min_k_focus_weights, undial_loss
from unlearning.methods.unlikelihood import unlikelihood_loss
from unlearning.methods.wga import wga_loss
from unlearning.ops import IGNORE_INDEX, masked_mse

LN3 = math.log(3)


def answer_of_two():
    """Vocab 2; labels [-100, 0, 1]: token 0 predicted at position 0 with p = 3/4 (logits (ln 3, 0)),
    token 1 at position 1 with p = 1/2 (logits (0, 0)); position 2 predicts nothing."""
    logits = two_token_logits([LN3, 0.0], [0.0, 0.0], [5.0, -5.0]).requires_grad_()
    return logits, torch.tensor([[IGNORE_INDEX, 0, 1]])


# SimNPO and DPO -------------------------------------------------------------------------------------

def test_simnpo_loss_hand_computed():
    """beta = 1, delta = 0; sequence NLL sums (2, 0) over (2, 1) tokens -> mean NLL (1, 0).
    log sigmoid(1) = -0.313262, log sigmoid(0) = -0.693147; mean -0.503204; loss = -2 * mean = 1.006409."""
    loss = simnpo_loss(torch.tensor([-2.0, 0.0]), torch.tensor([2, 1]), beta=1.0, delta=0.0)
    assert loss.item() == pytest.approx(1.006409, abs=1e-5)


def test_simnpo_delta_shifts_the_mean_nll():
    """beta = 2, delta = 0.5; NLL 3 over 3 tokens -> mean 1; beta * (1 - 0.5) = 1;
    loss = -(2/2) log sigmoid(1) = 0.313262."""
    loss = simnpo_loss(torch.tensor([-3.0]), torch.tensor([3]), beta=2.0, delta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)


def test_dpo_loss_hand_computed():
    """beta = 1. Pair 1: win (policy -1, ref -2) -> +1, lose (policy -3, ref -2) -> -1, margin 2,
    log sigmoid(2) = -0.126928. Pair 2: policy = ref, margin 0, log sigmoid(0) = -0.693147.
    loss = -2 * mean(-0.126928, -0.693147) = 0.820075."""
    loss = dpo_loss(policy_win=torch.tensor([-1.0, -4.0]), ref_win=torch.tensor([-2.0, -4.0]),
                    policy_lose=torch.tensor([-3.0, -6.0]), ref_lose=torch.tensor([-2.0, -6.0]), beta=1.0)
    assert loss.item() == pytest.approx(0.820075, abs=1e-5)


def test_dpo_at_reference_is_2_ln2_over_beta():
    """policy = ref on both answers: margin 0, loss (2/beta) ln 2 = 13.862944 at beta = 0.1."""
    logp = torch.tensor([-3.0, -1.5])
    assert dpo_loss(logp, logp, logp - 1, logp - 1, beta=0.1).item() == pytest.approx(20 * math.log(2), abs=1e-4)


# WGA and SatImp -------------------------------------------------------------------------------------

def test_wga_loss_hand_computed():
    """p = (3/4, 1/2). beta = 1: w = p; (0.75 ln 0.75 + 0.5 ln 0.5) / 2 = (-0.215762 - 0.346574) / 2 = -0.281168.
    beta = 2: w = (0.5625, 0.25); (0.5625 * -0.287682 + 0.25 * -0.693147) / 2 = -0.167554."""
    logits, labels = answer_of_two()
    assert wga_loss(logits, labels, beta=1.0).item() == pytest.approx(-0.281168, abs=1e-5)
    assert wga_loss(logits, labels, beta=2.0).item() == pytest.approx(-0.167554, abs=1e-5)


def test_wga_weights_carry_no_gradient():
    """With w constant, dL/dz_t = (w_t / 2) (onehot(y_t) - p_t). Position 0: 0.375 * (1/4, -1/4) =
    (0.09375, -0.09375); position 1: 0.25 * (-1/2, 1/2) = (-0.125, 0.125); position 2: 0.
    (Differentiating through w = p would give (ln p + 1) p (onehot - p) / 2: 0.066780 at position 0.)"""
    logits, labels = answer_of_two()
    wga_loss(logits, labels, beta=1.0).backward()
    assert logits.grad.flatten().tolist() == pytest.approx([0.09375, -0.09375, -0.125, 0.125, 0.0, 0.0], abs=1e-6)


def test_satimp_loss_hand_computed():
    """p = (3/4, 1/2). beta1 = beta2 = 1: w = p (1 - p) = (0.1875, 0.25);
    (0.1875 * -0.287682 + 0.25 * -0.693147) / 2 = (-0.053940 - 0.173287) / 2 = -0.113614.
    Defaults beta1 = 5, beta2 = 1: w = (0.75^5 * 0.25, 0.5^5 * 0.5) = (0.059326, 0.015625);
    (0.059326 * -0.287682 + 0.015625 * -0.693147) / 2 = -0.013949."""
    logits, labels = answer_of_two()
    assert satimp_loss(logits, labels, beta1=1.0, beta2=1.0).item() == pytest.approx(-0.113614, abs=1e-5)
    assert satimp_loss(logits, labels, beta1=5.0, beta2=1.0).item() == pytest.approx(-0.013949, abs=1e-5)


def test_satimp_weights_carry_no_gradient():
    """beta1 = beta2 = 1, w = (0.1875, 0.25) constant: dL/dz = (w_t / 2) (onehot(y_t) - p_t) =
    (0.0234375, -0.0234375) at position 0 and (-0.0625, 0.0625) at position 1."""
    logits, labels = answer_of_two()
    satimp_loss(logits, labels, beta1=1.0, beta2=1.0).backward()
    assert logits.grad.flatten().tolist() == pytest.approx([0.0234375, -0.0234375, -0.0625, 0.0625, 0.0, 0.0],
                                                         abs=1e-6)


# CE-U and unlikelihood ------------------------------------------------------------------------------

def ceu_case():
    """Vocab 3, labels [-100, 0, 0]. Position 0: z = (0, 0, 0), p = (1/3, 1/3, 1/3); position 1:
    z = (ln 2, 0, 0), p = (1/2, 1/4, 1/4). Both targets are token 0, so q = (0, 1/2, 1/2) at both."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [7.0, 1.0, -3.0]]], requires_grad=True)
    return logits, torch.tensor([[IGNORE_INDEX, 0, 0]])


def test_ceu_loss_hand_computed():
    """CE(q, p) = -sum q log p: position 0 -> -(ln 1/3) = ln 3 = 1.098612; position 1 -> -(ln 1/4) = ln 4 =
    1.386294; mean 1.242453."""
    logits, labels = ceu_case()
    assert ceu_loss(logits, labels).item() == pytest.approx(1.242453, abs=1e-5)


def test_ceu_loss_skipping_the_first_answer_token():
    """open-unlearning's ignore_first_n_answer_tokens = 1 drops position 0: ln 4 = 1.386294 alone, against
    1.242453 over both; position 0 then gets no gradient, so CE-U no longer trains as unlikelihood does."""
    logits, labels = ceu_case()
    loss = ceu_loss(logits, labels, ignore_first_n_answer_tokens=1)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-5)
    loss.backward()
    assert logits.grad[0, 0].tolist() == [0.0, 0.0, 0.0] and logits.grad[0, 1].abs().sum() > 0
    assert ceu_loss(logits, labels, ignore_first_n_answer_tokens=2).item() == 0.0  # nothing left to average


def test_ceu_target_puts_zero_mass_on_the_answer_token():
    """q has q[y_t] = 0 and sums to 1; dL/dz = (p - q) / 2, so at position 0 the answer token's logit
    gets +(1/3)/2 = 0.166667 (descent lowers it) and the others (1/3 - 1/2)/2 = -0.083333."""
    logits, labels = ceu_case()
    q = torch.softmax(ceu_target_logits(logits[0, :2], torch.tensor([0, 0])), dim=-1)
    assert q.flatten().tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0, 0.5, 0.5])
    ceu_loss(logits, labels).backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([1 / 6, -1 / 12, -1 / 12], abs=1e-6)


def test_unlikelihood_loss_hand_computed():
    """p = (3/4, 1/2): -ln(1 - 3/4) = ln 4 = 1.386294, -ln(1 - 1/2) = ln 2 = 0.693147; mean 1.039721."""
    logits, labels = answer_of_two()
    assert unlikelihood_loss(logits, labels).item() == pytest.approx(1.039721, abs=1e-5)


def test_ceu_and_unlikelihood_share_their_gradient():
    """Unlikelihood on the CE-U case: position 0 (p_y = 1/3) -ln(2/3) = 0.405465, position 1 (p_y = 1/2)
    ln 2 = 0.693147; mean 0.549306 = CE-U's 1.242453 - H(q) with H(q) = ln 2. Gradient at position 0:
    p_y / 2 = 1/6 on y, -p_y p_j / (1 - p_y) / 2 = -1/12 on the others: CE-U's (p - q) / 2."""
    logits, labels = ceu_case()
    loss = unlikelihood_loss(logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(0.549306, abs=1e-5)
    assert logits.grad[0, 0].tolist() == pytest.approx([1 / 6, -1 / 12, -1 / 12], abs=1e-6)


def test_unlikelihood_is_stable_as_p_goes_to_1():
    """z = (200, 0), y = 0: p = 1 - e^-200 is 1.0 in float32, so log1p(-p) = -inf; exactly,
    -log(1 - p) = logsumexp(z) - z_1 = 200 + ln(1 + e^-200) = 200, gradient (p_0, p_1 - 1) = (1, -1)."""
    logits = two_token_logits([200.0, 0.0], [0.0, 0.0]).requires_grad_()
    labels = torch.tensor([[IGNORE_INDEX, 0]])
    assert torch.isinf(torch.log1p(-torch.softmax(logits[0, 0], -1)[0]))
    loss = unlikelihood_loss(logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(200.0, abs=1e-3)
    assert logits.grad[0, 0].tolist() == pytest.approx([1.0, -1.0], abs=1e-6)


# UnDIAL / FUnDIAL -----------------------------------------------------------------------------------

def vocab_128_rows(*pairs):
    """Logits [1, T, 128]: each row has the given values at ids 0 and 1 and -1e4 elsewhere (probability 0),
    so the hand computations are over two tokens while label -100 would wrap to a real id (28)."""
    logits = torch.full((1, len(pairs), 128), -1e4)
    logits[0, :, :2] = torch.tensor(pairs)
    return logits


def test_undial_loss_hand_computed_ignores_prompt_and_padding():
    """strength = ln 3. Labels [-100, -100, 0, -100]: prompt, prompt, answer token 0, padding; only the
    logits at position 1 predict a label. Teacher (ln 3, 0) - ln 3 * onehot(0) = (0, 0): p~ = (1/2, 1/2);
    policy (ln 3, 0): p = (3/4, 1/4). CE = -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.836988.
    Any logits at the prompt and padding positions leave the loss unchanged."""
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]])
    losses = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        policy, ref = vocab_128_rows(*[[LN3, 0.0]] * 4), vocab_128_rows(*[[LN3, 0.0]] * 4)
        for logits in (policy, ref):
            logits[0, [0, 2, 3]] = 10 * torch.randn(3, 128)
        losses.append(undial_loss(policy, ref, labels, strength=LN3).item())
    assert losses == pytest.approx([0.836988, 0.836988], abs=1e-5)


def test_min_k_focus_weights_hand_computed():
    """fraction 0.5, weight 3. Row 1: 4 labelled tokens -> ceil(2) = 2 focused, the lowest log-probs
    -2.0 and -0.5 -> (1, 3, 3, 1, 0). Row 2: 3 labelled -> ceil(1.5) = 2: -1.0 and -0.3 -> (3, 1, 3, 0, 0)."""
    ref_logp = torch.tensor([[-0.1, -2.0, -0.5, -0.01, -9.0], [-1.0, -0.2, -0.3, -5.0, -5.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    weights = min_k_focus_weights(ref_logp, mask, fraction=0.5, focus_weight=3.0)
    assert weights.tolist() == [[1.0, 3.0, 3.0, 1.0, 0.0], [3.0, 1.0, 3.0, 0.0, 0.0]]


def test_fundial_weights_the_least_likely_token():
    """strength = ln 3, labels [-100, 0, 1]. Position 0: teacher (ln 3, 0), y = 0, p_ref(y) = 3/4, CE = 0.836988
    as above. Position 1: teacher (0, 0), y = 1, p_ref(y) = 1/2; p~ = softmax(0, -ln 3) = (3/4, 1/4); policy
    (0, 0): CE = ln 2 = 0.693147. Uniform: (0.836988 + 0.693147) / 2 = 0.765068. Focus fraction 0.5 ->
    ceil(1) = 1 token, the less likely one (position 1), weight 3: (0.836988 + 3 * 0.693147) / 4 = 0.729107."""
    logits = two_token_logits([LN3, 0.0], [0.0, 0.0], [0.0, 0.0])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    assert undial_loss(logits, logits, labels, strength=LN3).item() == pytest.approx(0.765068, abs=1e-5)
    focused = undial_loss(logits, logits, labels, strength=LN3, focus_fraction=0.5, focus_weight=3.0)
    assert focused.item() == pytest.approx(0.729107, abs=1e-5)


def test_undial_rejects_an_unknown_focus():
    with pytest.raises(ConfigError, match="method.focus"):
        UnDIAL(focus="capitalized")


# RMU ------------------------------------------------------------------------------------------------

def test_steering_vector_has_norm_c_and_depends_only_on_the_seed():
    u = steering_vector(16, coeff=6.5, seed=0)
    assert u.norm().item() == pytest.approx(6.5, abs=1e-5) and (u >= 0).all()
    assert torch.equal(u, steering_vector(16, coeff=6.5, seed=0))
    assert not torch.equal(u, steering_vector(16, coeff=6.5, seed=1))


def test_rmu_loss_hand_computed():
    """Hidden states are not shifted (position t represents token t): labels [-100, 5, 7] keep
    positions 1 and 2. control (1, 0): h = (3, 0) -> (2^2 + 0)/2 = 2; h = (1, 1) -> (0 + 1)/2 = 0.5;
    mean 1.25. The prompt position's h = (100, 100) does not count."""
    hidden = torch.tensor([[[100.0, 100.0], [3.0, 0.0], [1.0, 1.0]]])
    assert rmu_loss(hidden, torch.tensor([1.0, 0.0]), torch.tensor([[IGNORE_INDEX, 5, 7]])).item() == 1.25


def test_masked_mse_against_per_position_targets():
    """The activation retain term: targets per position. (1, 2) vs (1, 0) -> 4/2 = 2; (0, 0) vs (2, 2) -> 4;
    the masked-out third position is ignored; mean 3."""
    values = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    target = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]]])
    assert masked_mse(values, target, torch.tensor([[True, True, False]])).item() == 3.0


def test_rmu_trains_the_down_projections_of_layers_l_minus_2_to_l():
    pattern = re.compile(RMU(layer=7).trainable_params)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (4, 5, 6, 7, 17)] + ["model.layers.7.mlp.up_proj.weight"]
    assert [bool(pattern.search(name)) for name in names] == [False, True, True, True, False, False]
    assert re.search(RMU(layer=0).trainable_params, "model.layers.0.mlp.down_proj.weight")


def test_decoder_layer_output_is_the_layer_output_not_the_final_norm(model, tokenizer):
    """Inner layer: equals output_hidden_states[layer + 1]. Last layer: transformers reports the
    final-norm output there, which this helper does not return."""
    encoded = tokenizer(["Who wrote the book?"], return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    assert torch.allclose(decoder_layer_output(model, inputs, 0), hidden_states[1])
    last = decoder_layer_output(model, inputs, 1)
    assert not torch.allclose(last, hidden_states[2])
    assert torch.allclose(model.model.norm(last), hidden_states[2], atol=1e-5)
    with pytest.raises(ConfigError, match="layer=5"):
        decoder_layer_output(model, inputs, 5)

"""Tests of the objectives package: reference values, exact W x D gradients, errors, stats, scores.

Everything runs in float64 on tiny tensors; expected gradients are derived independently here
from the formulas in docs/science.md §3, never from the package's own helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

import objectives

torch.set_num_threads(1)

DTYPE = torch.float64
WEIGHT_NAMES = ["sft", "cl", "constant", "tau_mask"]
LOGIT_DIRECTIONS = ["sft", "cl"]


# ---------------------------------------------------------------- helpers


def one_positive_batch(groups: int = 3, size: int = 5, scale: float = 2.0, seed: int = 0):
    """Random logits [B, G, 2] with the positive at a different index in each group."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(groups, size, 2, generator=generator, dtype=DTYPE)
    positives = torch.zeros(groups, size, dtype=torch.bool)
    positives[torch.arange(groups), torch.arange(groups) % size] = True
    return logits, positives


def grad_of(objective, logits, positives, **extra):
    """(loss, d loss / d logits, output) of one call."""
    leaf = logits.detach().clone().requires_grad_(True)
    out = objective(leaf, positives, **extra)
    (grad,) = torch.autograd.grad(out.loss, leaf)
    return out.loss.detach(), grad, out


def expected_weights(name: str, logits, positives, temperature: float = 1.0, tau: float = 0.1):
    """Weights written from the paper's formulas with plain exponentials (moderate logits only)."""
    yes, no = logits[..., 0], logits[..., 1]
    p_yes = torch.exp(yes) / (torch.exp(yes) + torch.exp(no))
    if name == "sft":
        return torch.where(positives, 1 - p_yes, p_yes)
    if name == "cl":
        shares = torch.exp(yes / temperature) / torch.exp(yes / temperature).sum(-1, keepdim=True)
        positive_share = (shares * positives).sum(-1, keepdim=True)
        return torch.where(positives, 1 - positive_share, shares) / temperature
    if name == "constant":
        return torch.ones_like(yes)
    if name == "tau_mask":
        learned = torch.where(positives, p_yes > 1 - tau, p_yes < tau)
        return (~learned).to(DTYPE)
    raise AssertionError(name)


def expected_logit_grad(weights, positives, direction: str):
    """d L / d (z_y, z_n) of the surrogate for a label-logit direction: sign * W / B times dphi."""
    groups = weights.shape[0]
    signed = torch.where(positives, -weights, weights) / groups
    if direction == "sft":
        return torch.stack([signed, -signed], dim=-1)
    return torch.stack([signed, torch.zeros_like(signed)], dim=-1)


# The hand example: one group, positive first. u = z_y - z_n = (2, -1, 0), z_y = (2, 0, 1).
HAND_LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=DTYPE)
HAND_POSITIVES = torch.tensor([[True, False, False]])
# SFT: -log s(2) - log s(1) - log s(0) = softplus(-2) + softplus(-1) + log 2.
HAND_SFT = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)
# CL at T=1: log(e^2 + e^0 + e^1) - 2; at T=2: log(e^1 + e^0 + e^0.5) - 1.
HAND_CL = {1.0: math.log(math.e**2 + 1 + math.e) - 2, 2.0: math.log(math.e + 1 + math.exp(0.5)) - 1}


# ---------------------------------------------------------------- reference values


def test_reference_loss_values_match_hand_computation():
    # the closed forms above, evaluated once by hand
    assert abs(HAND_SFT - 1.1333369) < 1e-6
    assert abs(HAND_CL[1.0] - 0.4076059) < 1e-6
    sft = objectives.build("sft")(HAND_LOGITS, HAND_POSITIVES).loss
    assert sft.item() == pytest.approx(HAND_SFT, abs=1e-12)
    for temperature, value in HAND_CL.items():
        cl = objectives.build("cl", temperature=temperature)(HAND_LOGITS, HAND_POSITIVES).loss
        assert cl.item() == pytest.approx(value, abs=1e-12)
    # listwise on u = (2, -1, 0): log(e^2 + e^-1 + 1) - 2.
    listwise = objectives.build("listwise")(HAND_LOGITS, HAND_POSITIVES).loss
    assert listwise.item() == pytest.approx(math.log(math.e**2 + math.exp(-1) + 1) - 2, abs=1e-12)


def test_reduction_is_sum_over_documents_mean_over_groups():
    logits, positives = one_positive_batch(groups=4)
    sft = objectives.build("sft")
    per_group = [sft(logits[i : i + 1], positives[i : i + 1]).loss for i in range(4)]
    assert sft(logits, positives).loss.item() == pytest.approx(sum(per_group).item() / 4, abs=1e-12)


# ---------------------------------------------------------------- URL with matched parts = references


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_url_sft_sft_has_exactly_the_sft_gradient(scale):
    logits, positives = one_positive_batch(scale=scale)
    _, reference, _ = grad_of(objectives.build("sft"), logits, positives)
    _, surrogate, _ = grad_of(objectives.build("url", weight="sft", direction="sft"), logits, positives)
    assert torch.isfinite(reference).all() and torch.isfinite(surrogate).all()
    assert (reference - surrogate).abs().max() < 1e-9


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("temperature", [1.0, 0.05, 0.5, 3.0])
def test_url_cl_cl_has_exactly_the_cl_gradient(scale, temperature):
    logits, positives = one_positive_batch(scale=scale)
    _, reference, _ = grad_of(objectives.build("cl", temperature=temperature), logits, positives)
    url = objectives.build("url", weight="cl", direction="cl", temperature=temperature)
    _, surrogate, _ = grad_of(url, logits, positives)
    assert torch.isfinite(reference).all() and torch.isfinite(surrogate).all()
    assert (reference - surrogate).abs().max() < 1e-9


def test_listwise_is_cl_weights_on_log_odds_times_sft_direction():
    logits, positives = one_positive_batch()
    temperature = 0.7
    _, grad, out = grad_of(objectives.build("listwise", temperature=temperature), logits, positives)
    u = logits[..., 0] - logits[..., 1]
    shares = torch.exp(u / temperature) / torch.exp(u / temperature).sum(-1, keepdim=True)
    positive_share = (shares * positives).sum(-1, keepdim=True)
    weights = torch.where(positives, 1 - positive_share, shares) / temperature
    assert torch.allclose(out.weights, weights, atol=1e-12)
    assert torch.allclose(grad, expected_logit_grad(weights, positives, "sft"), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_objective_is_finite_at_logits_of_magnitude_1e4(dtype):
    logits, positives = one_positive_batch(scale=1e4)
    token_logits = torch.cat([logits, logits.flip(-1)], dim=-1)
    candidates = [objectives.build(name) for name in ("sft", "cl", "listwise")]
    candidates += [
        objectives.build("url", weight=weight, direction=direction, temperature=0.05)
        for weight in WEIGHT_NAMES
        for direction in LOGIT_DIRECTIONS
    ]
    candidates.append(objectives.build("url", direction="multi_token", label_token_count=4))
    candidates.append(objectives.build("mix", terms={"sft": 1.0, "cl": 0.5}))
    for objective in candidates:
        leaf = logits.to(dtype).clone().requires_grad_(True)
        tokens = token_logits.to(dtype).clone().requires_grad_(True)
        out = objective(leaf, positives, token_logits=tokens)
        # multi_token's loss reads only the token logits, the others only the yes/no logits
        grads = torch.autograd.grad(out.loss, [leaf, tokens], allow_unused=True)
        assert torch.isfinite(out.loss), objective
        assert any(grad is not None for grad in grads), objective
        assert all(torch.isfinite(grad).all() for grad in grads if grad is not None), objective
        assert all(torch.isfinite(value) for value in out.stats.values()), objective


# ---------------------------------------------------------------- every weight x direction = W * D


@pytest.mark.parametrize("direction", LOGIT_DIRECTIONS)
@pytest.mark.parametrize("weight", WEIGHT_NAMES)
def test_url_gradient_is_weight_times_direction(weight, direction):
    logits, positives = one_positive_batch(groups=4, size=6, scale=3.0, seed=1)
    temperature, tau = 0.5, 0.2
    url = objectives.build("url", weight=weight, direction=direction, temperature=temperature, tau=tau)
    _, grad, out = grad_of(url, logits, positives)
    weights = expected_weights(weight, logits, positives, temperature=temperature, tau=tau)
    assert torch.allclose(out.weights, weights, atol=1e-12)
    assert not out.weights.requires_grad
    assert (grad - expected_logit_grad(weights, positives, direction)).abs().max() < 1e-12


def test_weights_are_computed_from_their_own_score_not_the_direction():
    logits, positives = one_positive_batch()
    sft_weights = objectives.build("url", weight="sft", direction="cl")(logits, positives).weights
    cl_weights = objectives.build("url", weight="cl", direction="sft")(logits, positives).weights
    assert torch.allclose(sft_weights, expected_weights("sft", logits, positives), atol=1e-12)
    assert torch.allclose(cl_weights, expected_weights("cl", logits, positives), atol=1e-12)


def test_tau_mask_zeroes_exactly_the_learned_documents():
    tau = 0.1
    threshold = math.log((1 - tau) / tau)  # p_yes = 1 - tau at u = +threshold, tau at -threshold
    # Two positives and three negatives, one on each side of its threshold (several positives are fine).
    log_odds = torch.tensor(
        [[threshold - 0.1, threshold + 0.1, -threshold - 0.1, -threshold + 0.1, 5.0]], dtype=DTYPE
    )
    logits = torch.stack([log_odds, torch.zeros_like(log_odds)], dim=-1)
    positives = torch.tensor([[True, True, False, False, False]])
    out = objectives.build("url", weight="tau_mask", tau=tau)(logits, positives)
    assert out.weights.tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0]]
    # tau = 0 never masks: the constant weight.
    never = objectives.build("url", weight="tau_mask", tau=0.0)(logits, positives)
    assert never.weights.tolist() == [[1.0] * 5]


# ---------------------------------------------------------------- multi_token


def test_multi_token_with_one_token_per_side_equals_sft():
    logits, positives = one_positive_batch()
    multi = objectives.build("url", weight="sft", direction="multi_token")
    assert multi.label_tokens == (["yes"], ["no"]) and multi.needs == {"token_logits"}
    reference_loss, reference_grad, _ = grad_of(objectives.build("sft"), logits, positives)
    plain_loss, _, _ = grad_of(objectives.build("url", weight="sft", direction="sft"), logits, positives)
    tokens = logits.detach().clone().requires_grad_(True)
    out = multi(logits, positives, token_logits=tokens)
    (token_grad,) = torch.autograd.grad(out.loss, tokens)
    assert out.loss.item() == pytest.approx(plain_loss.item(), abs=1e-12)
    assert (token_grad - reference_grad).abs().max() < 1e-12


def test_multi_token_gradient_is_the_logsumexp_derivative():
    logits, positives = one_positive_batch(groups=2, size=4)
    multi = objectives.build("url", weight="sft", direction="multi_token", label_token_count=8)
    positive_words, negative_words = multi.label_tokens
    assert positive_words == ["yes", "true", "Yes", "True"] and negative_words == [
        "no",
        "false",
        "No",
        "False",
    ]
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 4, 8, generator=generator, dtype=DTYPE).requires_grad_(True)
    out = multi(logits, positives, token_logits=tokens)
    (grad,) = torch.autograd.grad(out.loss, tokens)
    weights = expected_weights("sft", logits, positives)  # the weight still reads the yes/no logits
    signed = (torch.where(positives, -weights, weights) / 2).unsqueeze(-1)
    exp = tokens.detach().exp()
    positive_share = exp[..., :4] / exp[..., :4].sum(-1, keepdim=True)
    negative_share = exp[..., 4:] / exp[..., 4:].sum(-1, keepdim=True)
    expected = torch.cat([signed * positive_share, -signed * negative_share], dim=-1)
    assert (grad - expected).abs().max() < 1e-12


def test_label_token_presets_are_nested_and_cover_the_probe_words():
    sizes = []
    for count in objectives.LABEL_TOKEN_COUNTS:
        positive, negative = objectives.label_token_preset(count)
        assert len(positive) == len(negative) == count // 2
        sizes.append((positive, negative))
    for (small_pos, small_neg), (big_pos, big_neg) in zip(sizes, sizes[1:], strict=False):
        assert big_pos[: len(small_pos)] == small_pos and big_neg[: len(small_neg)] == small_neg
    positive, negative = objectives.label_token_preset(16)
    words = "yes no Yes No true false True False YES NO correct wrong right incorrect relevant irrelevant"
    assert sorted(positive + negative) == sorted(words.split())
    assert {"yes", "true", "correct", "right", "relevant"} <= set(positive)
    with pytest.raises(ValueError, match="known counts"):
        objectives.label_token_preset(6)


# ---------------------------------------------------------------- projection


@pytest.mark.parametrize("weight", ["sft", "cl"])
def test_projection_direction_trains_on_a_toy_problem(weight):
    torch.manual_seed(0)
    groups, size, hidden_size = 16, 4, 8
    signal = torch.nn.functional.normalize(torch.randn(hidden_size, dtype=DTYPE), dim=0)
    hidden = torch.randn(groups, size, hidden_size, dtype=DTYPE)
    positives = torch.zeros(groups, size, dtype=torch.bool)
    positives[:, 0] = True
    hidden[:, 0] += 4.0 * signal  # positives stand out along one direction
    logits = torch.zeros(groups, size, 2, dtype=DTYPE)  # the yes/no logits play no part here
    objective = objectives.build("url", weight=weight, direction="projection", hidden_size=hidden_size).to(
        DTYPE
    )
    assert objective.needs == {"hidden"}
    with torch.no_grad():  # start from the worst direction so that improvement is certain
        objective.direction.linear.weight.copy_(-signal)
        objective.direction.linear.bias.zero_()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.5)

    def implied_loss(out_scores):
        # the loss whose gradient the surrogate reproduces, with the projection score s as its score
        if weight == "sft":
            return objectives.build("sft")(torch.stack([out_scores, 0 * out_scores], -1), positives).loss
        return objectives.build("cl")(torch.stack([out_scores, 0 * out_scores], -1), positives).loss

    first = objective(logits, positives, hidden=hidden)
    start_loss = implied_loss(objective.score(logits, hidden=hidden)).item()
    for _ in range(30):
        optimizer.zero_grad()
        out = objective(logits, positives, hidden=hidden)
        out.loss.backward()
        assert objective.direction.linear.weight.grad.abs().sum() > 0
        optimizer.step()
    last = objective(logits, positives, hidden=hidden)
    assert implied_loss(objective.score(logits, hidden=hidden)).item() < start_loss
    assert first.stats["group_accuracy"] < 0.5 < 0.9 <= last.stats["group_accuracy"]


def test_projection_weights_read_the_projection_score():
    hidden_size = 3
    objective = objectives.build("url", weight="sft", direction="projection", hidden_size=hidden_size).to(
        DTYPE
    )
    logits, positives = one_positive_batch(groups=2, size=3)
    hidden = torch.randn(2, 3, hidden_size, dtype=DTYPE)
    out = objective(logits, positives, hidden=hidden)
    scores = objective.score(logits, hidden=hidden).detach()
    assert torch.allclose(out.weights, torch.where(positives, torch.sigmoid(-scores), torch.sigmoid(scores)))


# ---------------------------------------------------------------- mix


def test_mix_is_the_coefficient_weighted_sum_of_its_terms():
    logits, positives = one_positive_batch()
    spec = {"coef": 0.25, "name": "url", "weight": "cl", "direction": "sft", "temperature": 0.5}
    mix = objectives.build("mix", terms={"sft": 1.0, "cl": 0.5, "cl_w_sft_d": spec})
    parts = [
        (1.0, objectives.build("sft")),
        (0.5, objectives.build("cl")),
        (0.25, objectives.build("url", weight="cl", direction="sft", temperature=0.5)),
    ]
    loss, grad, out = grad_of(mix, logits, positives)
    expected_loss = expected_grad = expected_weights_sum = 0
    for coefficient, term in parts:
        term_loss, term_grad, term_out = grad_of(term, logits, positives)
        expected_loss = expected_loss + coefficient * term_loss
        expected_grad = expected_grad + coefficient * term_grad
        expected_weights_sum = expected_weights_sum + coefficient * term_out.weights
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
    assert (grad - expected_grad).abs().max() < 1e-12
    assert torch.allclose(out.weights, expected_weights_sum, atol=1e-12)
    assert out.stats["mix/cl/loss"].item() == pytest.approx(grad_of(parts[1][1], logits, positives)[0].item())
    assert torch.equal(mix.score(logits), logits[..., 0] - logits[..., 1])  # largest coefficient: sft


def test_mix_hands_each_term_its_own_token_logit_columns():
    logits, positives = one_positive_batch(groups=2, size=3)
    four = {"name": "url", "direction": "multi_token", "label_token_count": 4}
    custom = {"coef": 2.0, "name": "url", "direction": "multi_token", "positive_tokens": ["relevant", "yes"]}
    mix = objectives.build("mix", terms={"four": four, "custom": custom, "sft": 0.5})
    assert mix.label_tokens == (["yes", "true", "relevant"], ["no", "false"])
    assert mix.needs == {"token_logits"}
    tokens = torch.randn(2, 3, 5, dtype=DTYPE)
    out = mix(logits, positives, token_logits=tokens)
    expected = (
        objectives.build("url", direction="multi_token", label_token_count=4)(
            logits, positives, token_logits=tokens[..., [0, 1, 3, 4]]
        ).loss
        + 2.0
        * objectives.build("url", direction="multi_token", positive_tokens=["relevant", "yes"])(
            logits, positives, token_logits=tokens[..., [2, 0, 3]]
        ).loss
        + 0.5 * objectives.build("sft")(logits, positives).loss
    )
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "known"),
    [
        ({"name": "bce"}, "cl, listwise, mix, sft, url"),
        ({"name": "url", "weight": "focal"}, "cl, constant, sft, tau_mask"),
        ({"name": "url", "direction": "random"}, "cl, multi_token, projection, sft"),
    ],
)
def test_unknown_names_raise_listing_the_known_ones(kwargs, known):
    with pytest.raises(ValueError, match=known):
        objectives.build(**kwargs)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown argument.*temperature"):
        objectives.build("sft", temperature=1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        objectives.build("url", direction="projection")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        objectives.build("cl", temperature=0.0)
    with pytest.raises(ValueError, match="term 'x'.*unknown objective"):
        objectives.build("mix", terms={"x": 1.0})
    with pytest.raises(ValueError, match="needs hidden="):
        objectives.build("url", direction="projection", hidden_size=4)(*one_positive_batch())
    with pytest.raises(ValueError, match=r"token_logits= \[B, G, 4\]"):
        objectives.build("url", direction="multi_token", label_token_count=4)(*one_positive_batch())
    # build passes hidden_size only to objectives that take it
    assert isinstance(objectives.build("sft", hidden_size=16), objectives.SFTObjective)


@pytest.mark.parametrize("count", [0, 2])
@pytest.mark.parametrize(
    "build_kwargs",
    [{"name": "cl"}, {"name": "listwise"}, {"name": "url", "weight": "cl", "direction": "sft"}],
)
def test_cl_type_weights_need_exactly_one_positive(build_kwargs, count):
    logits, positives = one_positive_batch(groups=3)
    positives[2] = False
    positives[2, :count] = True
    with pytest.raises(ValueError, match="exactly one positive.*group 2"):
        objectives.build(**build_kwargs)(logits, positives)


def test_sft_type_weights_accept_several_positives():
    logits, positives = one_positive_batch(groups=2)
    positives[1, :3] = True
    for weight in ("sft", "constant", "tau_mask"):
        _, grad, _ = grad_of(objectives.build("url", weight=weight), logits, positives)
        expected = expected_logit_grad(expected_weights(weight, logits, positives), positives, "sft")
        assert (grad - expected).abs().max() < 1e-12


# ---------------------------------------------------------------- stats


# Two groups: the hand group, and one where z_y ranks a negative first but u = z_y - z_n does not.
STATS_LOGITS = torch.cat([HAND_LOGITS, torch.tensor([[[1.0, -1.0], [3.0, 2.0], [-1.0, 0.0]]], dtype=DTYPE)])
STATS_POSITIVES = torch.tensor([[True, False, False], [True, False, False]])


def test_stats_keys_are_the_same_for_every_objective():
    for objective in (
        objectives.build("sft"),
        objectives.build("cl"),
        objectives.build("listwise"),
        objectives.build("url", weight="tau_mask", direction="cl"),
    ):
        stats = objective(STATS_LOGITS.clone().requires_grad_(True), STATS_POSITIVES).stats
        assert tuple(stats) == objectives.STAT_KEYS
        assert all(value.dim() == 0 and not value.requires_grad for value in stats.values())


def test_stats_values_on_a_hand_example():
    sigmoid = torch.sigmoid
    u = STATS_LOGITS[..., 0] - STATS_LOGITS[..., 1]  # (2, -1, 0) and (2, 1, -1)
    # second group: SFT = softplus(-2) + softplus(1) + softplus(-1); CL = log(e^1 + e^3 + e^-1) - 1
    second_sft = math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log1p(math.exp(-1))
    second_cl = math.log(math.e + math.e**3 + math.exp(-1)) - 1
    sft = objectives.build("sft")(STATS_LOGITS, STATS_POSITIVES).stats
    cl = objectives.build("cl", temperature=2.0)(STATS_LOGITS, STATS_POSITIVES).stats
    for stats in (sft, cl):  # the reference losses do not depend on the objective
        assert stats["sft_loss"].item() == pytest.approx((HAND_SFT + second_sft) / 2, abs=1e-12)
        assert stats["cl_loss"].item() == pytest.approx((HAND_CL[1.0] + second_cl) / 2, abs=1e-12)  # T = 1
        assert stats["p_yes_pos_mean"].item() == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-12)
        assert stats["p_yes_neg_mean"].item() == pytest.approx(sigmoid(u[:, 1:]).mean().item(), abs=1e-12)
    assert sft["weight_pos_mean"].item() == pytest.approx(1 / (1 + math.exp(2)), abs=1e-12)
    assert sft["weight_neg_sum"].item() == pytest.approx(sigmoid(u[:, 1:]).sum().item() / 2, abs=1e-12)
    assert sft["weight_neg_max"].item() == pytest.approx((0.5 + 1 / (1 + math.exp(-1))) / 2, abs=1e-12)
    assert sft["group_accuracy"].item() == 1.0  # u puts the positive first in both groups
    # CL at T = 2: shares of z_y / 2, divided by 2.
    shares = torch.softmax(STATS_LOGITS[..., 0] / 2, dim=-1)
    assert cl["weight_pos_mean"].item() == pytest.approx((1 - shares[:, 0]).mean().item() / 2, abs=1e-12)
    assert cl["weight_neg_sum"].item() == pytest.approx(cl["weight_pos_mean"].item(), abs=1e-12)
    assert cl["weight_neg_max"].item() == pytest.approx(shares[:, 1:].amax(-1).mean().item() / 2, abs=1e-12)
    assert cl["group_accuracy"].item() == 0.5  # z_y ranks the second group's negative (3.0) first


def test_group_accuracy_with_several_positives_and_ties():
    logits = torch.tensor([[[3.0, 0], [1.0, 0], [2.0, 0]], [[1.0, 0], [1.0, 0], [1.0, 0]]], dtype=DTYPE)
    positives = torch.tensor([[True, False, True], [True, True, False]])
    stats = objectives.build("sft")(logits, positives).stats
    assert stats["group_accuracy"].item() == 0.5  # group 0 perfect; group 1 all tied counts as wrong


# ---------------------------------------------------------------- scores


def test_scores_give_the_expected_ordering():
    # z_y orders documents 2 > 0 > 1; u = z_y - z_n orders them 0 > 1 > 2.
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.5], [3.0, 4.0]]], dtype=DTYPE)
    by_log_odds, by_yes = [0, 1, 2], [2, 0, 1]

    def order(objective):
        return objective.score(logits)[0].argsort(descending=True).tolist()

    assert order(objectives.build("sft")) == by_log_odds
    assert order(objectives.build("listwise")) == by_log_odds
    assert order(objectives.build("cl")) == by_yes
    assert order(objectives.build("url", weight="cl", direction="sft")) == by_log_odds
    assert order(objectives.build("url", weight="sft", direction="cl")) == by_yes
    assert order(objectives.build("mix", terms={"sft": 0.5, "cl": 1.0})) == by_yes
    assert order(objectives.build("mix", terms={"sft": 0.5, "cl": 1.0}, score_term="sft")) == by_log_odds


def test_scores_are_float32_for_half_precision_logits():
    logits = torch.randn(2, 3, 2).to(torch.bfloat16)
    scores = objectives.build("sft").score(logits)
    assert scores.dtype == torch.float32 and scores.shape == (2, 3)

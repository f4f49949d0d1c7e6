"""URL directions: the differentiable per-document score phi whose gradient is the direction D.

In the URL surrogate ``-sg(W+) phi(d0) + sum_i sg(W-_i) phi(di)`` the gradient with respect to
the hidden state h is ``-W+ dphi/dh`` on the positive and ``+W- dphi/dh`` on negatives, so phi
fixes the direction (docs/science.md §3): ``phi = z_y`` gives D_CL = M_y, ``phi = z_y - z_n`` gives
D_SFT = M_y - M_n. phi is also the ranking score a URL objective implies.

A direction also chooses which scores its paired weight reads (:meth:`Direction.weight_inputs`):
the label-logit directions hand over (u = z_y - z_n, z_y) from the yes/no logits; ``projection``
hands over its own score, since the yes/no logits are not what it trains.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from objectives.base import DEFAULT_LABEL_TOKENS, GroupBatch, ReadsScores
from objectives.weights import WeightInputs

# Label words of the paper's label-token-count probe, most natural first; the presets for 2/4/8/16
# tokens in total take the first count/2 of each list, so each preset extends the smaller one.
POSITIVE_LABEL_WORDS: tuple[str, ...] = ("yes", "true", "Yes", "True", "YES", "correct", "right", "relevant")
NEGATIVE_LABEL_WORDS: tuple[str, ...] = (
    "no",
    "false",
    "No",
    "False",
    "NO",
    "wrong",
    "incorrect",
    "irrelevant",
)
LABEL_TOKEN_COUNTS: tuple[int, ...] = (2, 4, 8, 16)


def label_token_preset(count: int) -> tuple[list[str], list[str]]:
    """Positive and negative label words for the label-token-count probe.

    Args:
        count: total number of label tokens, one of 2, 4, 8, 16 (half positive, half negative).
            2 -> yes / no; 4 -> yes, true / no, false; 8 -> + Yes, True / No, False;
            16 -> + YES, correct, right, relevant / NO, wrong, incorrect, irrelevant.

    Returns:
        (positive words, negative words).

    Raises:
        ValueError: a count without a preset.
    """
    if count not in LABEL_TOKEN_COUNTS:
        raise ValueError(f"no label-token preset for count {count}; known counts: {LABEL_TOKEN_COUNTS}")
    half = count // 2
    return list(POSITIVE_LABEL_WORDS[:half]), list(NEGATIVE_LABEL_WORDS[:half])


class Direction(ReadsScores):
    """Base class: ``direction(batch) -> [B, G]`` phi with grad; default weight inputs from the logits."""

    def forward(self, batch: GroupBatch) -> Tensor:
        """``[B, G]`` phi of each document, differentiable."""
        raise NotImplementedError

    def weight_inputs(self, batch: GroupBatch, phi: Tensor) -> WeightInputs:
        """Scores the paired weight is computed from: u = z_y - z_n and z_y of the yes/no logits."""
        logits = batch.logits.detach()
        return WeightInputs(log_odds=logits[..., 0] - logits[..., 1], group_logits=logits[..., 0])


class SFTDirection(Direction):
    """D_SFT: ``phi = z_y - z_n``, gradient direction M_y - M_n.

    References: Dai, Zhang et al., arXiv 2510.14824 (docs/science.md §3; §4 Table 1 columns D_SFT).

    Relations: the direction of the ``sft`` reference; mirrors :class:`CLDirection`;
    :class:`MultiTokenDirection` with one token per side equals it.
    """

    def forward(self, batch: GroupBatch) -> Tensor:
        return batch.log_odds


class CLDirection(Direction):
    """D_CL: ``phi = z_y``, gradient direction M_y.

    No 1/T here: the temperature lives in the ``cl`` weight (see ``CLWeight``), so the direction is
    the same for every temperature.

    References: Dai, Zhang et al., arXiv 2510.14824 (docs/science.md §3; §4 Table 1 columns D_CL).

    Relations: the direction of the ``cl`` reference; mirrors :class:`SFTDirection`.
    """

    def forward(self, batch: GroupBatch) -> Tensor:
        return batch.yes_logits


class MultiTokenDirection(Direction):
    """Several label tokens per side: ``phi = logsumexp(z_pos tokens) - logsumexp(z_neg tokens)``.

    phi is the log-odds of the positive label set against the negative one, so with one token per
    side it is exactly ``z_y - z_n``. Its gradient spreads over the token rows by their softmax share
    within their side: ``dphi/dz_k = softmax_k`` over positives, ``-softmax_k`` over negatives.
    The paired weight still reads the yes/no ``logits``.

    Args:
        positive_tokens: positive label words, default ``["yes"]``.
        negative_tokens: negative label words, default ``["no"]``.
        label_token_count: instead of the lists, a preset total count 2/4/8/16 (see
            :func:`label_token_preset`), convenient to sweep.

    Each word must be a single token of the backbone's tokenizer; the model side reads
    :attr:`label_tokens` and passes their logits as ``token_logits`` in that order.

    References: Dai, Zhang et al., arXiv 2510.14824, direction probe "more label tokens"
    (2 -> 16 stays flat, ~57.9 MRB; docs/science.md §4).

    Relations: generalises :class:`SFTDirection` (one token each side).
    """

    def __init__(
        self,
        positive_tokens: list[str] | None = None,
        negative_tokens: list[str] | None = None,
        label_token_count: int | None = None,
    ) -> None:
        super().__init__()
        if label_token_count is not None:
            if positive_tokens is not None or negative_tokens is not None:
                raise ValueError(
                    "direction 'multi_token': give either label_token_count or positive_tokens/negative_tokens"
                )
            positive_tokens, negative_tokens = label_token_preset(label_token_count)
        if positive_tokens is None:
            positive_tokens = DEFAULT_LABEL_TOKENS[0]
        if negative_tokens is None:
            negative_tokens = DEFAULT_LABEL_TOKENS[1]
        self.positive_tokens = _check_words(positive_tokens, "positive_tokens")
        self.negative_tokens = _check_words(negative_tokens, "negative_tokens")

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"token_logits"})

    @property
    def label_tokens(self) -> tuple[list[str], list[str]]:
        return list(self.positive_tokens), list(self.negative_tokens)

    def forward(self, batch: GroupBatch) -> Tensor:
        token_logits = batch.token_logits
        n_positive, n_negative = len(self.positive_tokens), len(self.negative_tokens)
        if token_logits is None or token_logits.shape[-1] != n_positive + n_negative:
            got = None if token_logits is None else tuple(token_logits.shape)
            raise ValueError(
                f"direction 'multi_token' needs token_logits [B, G, {n_positive + n_negative}] for "
                f"{self.positive_tokens + self.negative_tokens}; got {got}"
            )
        positive_lse = token_logits[..., :n_positive].logsumexp(dim=-1)
        negative_lse = token_logits[..., n_positive:].logsumexp(dim=-1)
        return positive_lse - negative_lse

    def extra_repr(self) -> str:
        return f"positive_tokens={self.positive_tokens}, negative_tokens={self.negative_tokens}"


class ProjectionDirection(Direction):
    """D_rand: a randomly initialised learnable linear score on the last hidden state.

    Formula: ``phi = s = w . h + b`` with ``nn.Linear(hidden_size, 1)`` (PyTorch's default init),
    learned jointly with the backbone. The weight reads s in place of both label scores: W_SFT and
    tau_mask from p = sigmoid(s), W_CL from the softmax of s over the group; so s is trained as the
    log-odds (SFT weight) or the group logit (CL weight). The yes/no logits are not trained.

    The projection runs in the compute dtype of the call (float32, or float64 for float64 inputs)
    whatever dtype its parameters are stored in.

    Args:
        hidden_size: size of the hidden state (the LightningModule passes the backbone's).

    Raises:
        ValueError: hidden_size missing.

    References: Dai, Zhang et al., arXiv 2510.14824, direction probe D_rand (CL +1.32, SFT -1.34;
    docs/science.md §4).

    Relations: replaces the token-row difference M_y - M_n of :class:`SFTDirection` (or M_y of
    :class:`CLDirection`) by a free vector.
    """

    def __init__(self, hidden_size: int | None = None) -> None:
        super().__init__()
        if hidden_size is None or hidden_size < 1:
            raise ValueError(
                "direction 'projection' needs hidden_size (the backbone's hidden size): "
                f"objectives.build(..., hidden_size=H); got {hidden_size}"
            )
        self.linear = nn.Linear(hidden_size, 1)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"hidden"})

    def forward(self, batch: GroupBatch) -> Tensor:
        hidden = batch.hidden
        if hidden is None or hidden.shape[-1] != self.linear.in_features:
            got = None if hidden is None else tuple(hidden.shape)
            raise ValueError(
                f"direction 'projection' needs hidden [B, G, {self.linear.in_features}]; got {got}"
            )
        weight = self.linear.weight.to(hidden.dtype)
        bias = self.linear.bias.to(hidden.dtype)
        return F.linear(hidden, weight, bias).squeeze(-1)

    def weight_inputs(self, batch: GroupBatch, phi: Tensor) -> WeightInputs:
        score = phi.detach()
        return WeightInputs(log_odds=score, group_logits=score)


def _check_words(words: list[str], what: str) -> list[str]:
    words = list(words)
    if not words or not all(isinstance(word, str) and word for word in words):
        raise ValueError(f"direction 'multi_token': {what} must be a non-empty list of words; got {words}")
    if len(set(words)) != len(words):
        raise ValueError(f"direction 'multi_token': {what} has duplicates: {words}")
    return words


DIRECTIONS: dict[str, type[Direction]] = {
    "sft": SFTDirection,
    "cl": CLDirection,
    "multi_token": MultiTokenDirection,
    "projection": ProjectionDirection,
}

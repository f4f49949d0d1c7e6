"""URL weights: the scalar W that multiplies each document's direction in the gradient.

A weight is computed under ``no_grad`` from its own score definition, never from the direction
it is paired with (docs/science.md §3): W_SFT from the log-odds u = z_y - z_n, W_CL from the softmax of
z_y over the group. The direction supplies both scores as :class:`WeightInputs`; the logit
directions give (z_y - z_n, z_y), the ``projection`` direction gives its own score s for both.

All weights are >= 0. The URL surrogate multiplies W+ by -1 on positives and W- by +1 on negatives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from objectives import functional as fn
from objectives.base import check_temperature


class WeightInputs(NamedTuple):
    """Detached ``[B, G]`` scores the weights are computed from.

    Attributes:
        log_odds: u with p_yes = sigmoid(u) (read by ``sft`` and ``tau_mask``).
        group_logits: the score whose softmax over the group gives ``cl`` weights.
    """

    log_odds: Tensor
    group_logits: Tensor


class Weight(nn.Module):
    """Base class: ``weight(inputs, positives) -> [B, G]`` non-negative weights, no grad."""

    def forward(self, inputs: WeightInputs, positives: Tensor) -> Tensor:
        """Weights of each document.

        Args:
            inputs: detached scores (see :class:`WeightInputs`).
            positives: ``[B, G]`` bool.

        Returns:
            ``[B, G]`` W+ on positives, W- on negatives.
        """
        raise NotImplementedError


class SFTWeight(Weight):
    """W_SFT: how wrong this document alone is.

    Formula: ``W+ = 1 - p_yes(d) = sigmoid(-u)`` for positives, ``W- = p_yes(d) = sigmoid(u)`` for
    negatives, u = z_y - z_n. Each document can carry weight up to 1 (a group up to N + 1).

    References: Dai, Zhang et al., arXiv 2510.14824, the weight/direction decomposition of the SFT
    gradient (docs/science.md §3 table; §4 Table 1 rows W_SFT).

    Relations: the exact gradient factor of the ``sft`` reference; paired with the ``sft``
    direction, ``url`` reproduces ``sft``. Mirrors :class:`CLWeight`, which couples the group.
    """

    def forward(self, inputs: WeightInputs, positives: Tensor) -> Tensor:
        return fn.sft_weights(inputs.log_odds, positives)


class CLWeight(Weight):
    """W_CL: this document's share of the group softmax.

    Formula: with p = softmax(s / T) over the group (s = z_y),
    ``W+ = (1 - p_0) / T = sum_i p_i / T`` and ``W-_i = p_i / T``. The negatives' weights sum to W+.

    Temperature convention: the 1/T factor belongs to the weight, because it is part of the exact
    derivative of the CL loss with respect to z_y, while the ``cl`` direction stays the pure z_y.
    So ``url(weight="cl", direction="cl", temperature=T)`` has exactly the gradient of
    ``cl(temperature=T)``, and at T = 1 the weight is the paper's W_CL (at most 1 per document, at
    most 2 per group). Weight statistics of a CL-weighted run therefore scale with 1/T.

    Args:
        temperature: T > 0 (the paper did not report one; 1 reproduces its setting).

    Raises:
        ValueError: a group without exactly one positive.

    References: Dai, Zhang et al., arXiv 2510.14824, the weight/direction decomposition of the CL
    gradient (docs/science.md §3 table; §4 Table 1 rows W_CL).

    Relations: the exact gradient factor of the ``cl`` reference (and, computed on u = z_y - z_n,
    of ``listwise``). Mirrors :class:`SFTWeight`.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, inputs: WeightInputs, positives: Tensor) -> Tensor:
        fn.require_single_positive(positives, "weight 'cl'")
        return fn.infonce_weights(inputs.group_logits, positives, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class ConstantWeight(Weight):
    """W_base: every document weighs 1, learned or not.

    Formula: ``W = 1``. The surrogate is then the plain margin ``-sum_pos phi + sum_neg phi``.

    References: Dai, Zhang et al., arXiv 2510.14824, Table 2 (W_base; MRB 49.47 vs 58.19 for W_SFT).

    Relations: :class:`TauMaskWeight` is this weight with learned documents switched off.
    """

    def forward(self, inputs: WeightInputs, positives: Tensor) -> Tensor:
        return torch.ones_like(inputs.log_odds)


class TauMaskWeight(Weight):
    """W_base + tau-mask: weight 1 until a document is learned, then 0.

    Formula: with p_yes = sigmoid(u), ``W+ = 0 if p_yes > 1 - tau else 1`` and
    ``W- = 0 if p_yes < tau else 1``. The test is done on u against ``log((1 - tau) / tau)`` so it
    stays exact where sigmoid rounds to 0 or 1.

    Args:
        tau: masking threshold in [0, 0.5]; 0 never masks (= ``constant``). The paper did not publish
            its value; 0.1 is our default (a document counts as learned at 90% confidence).

    References: Dai, Zhang et al., arXiv 2510.14824, Table 2 (W_base + tau-mask, MRB 56.57).

    Relations: a hard, 0/1 version of :class:`SFTWeight` (both read only the document's own p_yes);
    :class:`ConstantWeight` with a stopping rule.
    """

    def __init__(self, tau: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= tau <= 0.5:
            raise ValueError(f"weight 'tau_mask': tau must be in [0, 0.5]; got {tau}")
        self.tau = float(tau)
        self.log_odds_threshold = math.inf if tau == 0 else math.log((1.0 - tau) / tau)

    def forward(self, inputs: WeightInputs, positives: Tensor) -> Tensor:
        u = inputs.log_odds
        learned = torch.where(positives, u > self.log_odds_threshold, u < -self.log_odds_threshold)
        return (~learned).to(u.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


WEIGHTS: dict[str, type[Weight]] = {
    "sft": SFTWeight,
    "cl": CLWeight,
    "constant": ConstantWeight,
    "tau_mask": TauMaskWeight,
}

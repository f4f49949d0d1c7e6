"""``sft``: the reference SFT objective (pointwise yes/no cross-entropy)."""

from __future__ import annotations

from torch import Tensor

from objectives import functional as fn
from objectives.base import GroupBatch, LossParts, Objective


class SFTObjective(Objective):
    """Pointwise 2-way cross-entropy over (z_y, z_n): label "yes" on positives, "no" on negatives.

    Formula: with u = z_y - z_n and p_yes = sigmoid(u),
    ``L = mean_groups[ -sum_pos log p_yes(d) - sum_neg log(1 - p_yes(d)) ]``
    (for the paper's 1 positive + N negatives: ``-log p_yes(d0) - sum_i log p_no(di)``).
    Any number of positives per group is allowed. Score: u (monotone in p_yes = sigmoid(u); u is
    used because sigmoid saturates to exact ties at large logits). Weights reported: W_SFT.

    References: Dai, Zhang et al., arXiv 2510.14824, the SFT objective (docs/science.md §2) and its
    weight/direction decomposition (docs/science.md §3-4, Table 1 row W_SFT x D_SFT, MRB 58.09).

    Relations: ``url(weight="sft", direction="sft")`` has exactly its gradient; the pointwise
    sibling of ``cl``.
    """

    def compute(self, batch: GroupBatch) -> LossParts:
        log_odds = batch.log_odds
        loss = fn.sft_loss_per_group(log_odds, batch.labels).mean()
        weights = fn.sft_weights(log_odds.detach(), batch.labels)
        return LossParts(loss=loss, weights=weights, scores=log_odds.detach())

    def compute_score(self, batch: GroupBatch) -> Tensor:
        return batch.log_odds

"""Stateless math shared by the objectives: reference losses, weights and masked reductions.

Every function works on one batch of query groups: scores are ``[B, G]`` (B groups of G documents)
and ``positives`` is a ``[B, G]`` bool mask. Everything is written with ``logsigmoid``,
``log_softmax`` and ``logsumexp`` so that logits of magnitude 1e4 give finite losses and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """Dtype the objectives compute in: float64 stays float64, everything else becomes float32.

    bf16/fp16 label logits are upcast because near-ties in half precision flip rankings and
    saturate sigmoids (docs/architecture.md §6, pitfall 5).
    """
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is true; 0 (not NaN) when the mask is empty."""
    # where() rather than a product: an inf outside the mask must not turn into NaN.
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def require_single_positive(positives: Tensor, who: str) -> None:
    """Raise ValueError unless every group has exactly one positive.

    Args:
        positives: ``[B, G]`` bool mask of positive documents.
        who: what needs it, for the message (e.g. "weight 'cl'").

    Raises:
        ValueError: naming the first offending group index and its positive count.
    """
    counts = positives.sum(dim=-1)
    bad = (counts != 1).nonzero()
    if bad.numel():
        group = int(bad[0, 0])
        raise ValueError(
            f"{who} requires exactly one positive per group (it normalises over the group with the "
            f"positive as the target); group {group} of the batch has {int(counts[group])} positives. "
            "Use the 'sft', 'constant' or 'tau_mask' weight for groups with several positives."
        )


def sft_loss_per_group(log_odds: Tensor, positives: Tensor) -> Tensor:
    """SFT loss of each group: ``-sum_pos log p_yes - sum_neg log p_no`` with ``p_yes = sigmoid(u)``.

    Args:
        log_odds: ``[B, G]`` u = z_y - z_n.
        positives: ``[B, G]`` bool.

    Returns:
        ``[B]`` loss of each group (summed over its documents).
    """
    # log p_no = logsigmoid(-u): the two-way softmax over {z_y, z_n} written without exp overflow.
    signed = torch.where(positives, log_odds, -log_odds)
    return -F.logsigmoid(signed).sum(dim=-1)


def sft_weights(log_odds: Tensor, positives: Tensor) -> Tensor:
    """SFT weights: ``W+ = 1 - p_yes = sigmoid(-u)`` on positives, ``W- = p_yes = sigmoid(u)`` on negatives."""
    return torch.sigmoid(torch.where(positives, -log_odds, log_odds))


def infonce_loss_per_group(scores: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """InfoNCE of each group: ``-log softmax(scores / T)`` at the (single) positive.

    Args:
        scores: ``[B, G]`` the scores the softmax runs over (z_y for CL, z_y - z_n for listwise).
        positives: ``[B, G]`` bool with exactly one positive per group (checked by the caller).
        temperature: T > 0.

    Returns:
        ``[B]`` loss of each group.
    """
    log_probs = torch.log_softmax(scores / temperature, dim=-1)
    return -torch.where(positives, log_probs, torch.zeros_like(log_probs)).sum(dim=-1)


def infonce_weights(scores: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """Gradient magnitudes of InfoNCE with respect to ``scores``, including the 1/T factor.

    ``W-_i = softmax_i(s / T) / T`` and ``W+ = (1 - softmax_0(s / T)) / T``. W+ is computed as the
    sum of the negatives' shares rather than ``1 - p0`` so it stays exact when p0 rounds to 1.

    Args:
        scores: ``[B, G]``.
        positives: ``[B, G]`` bool with exactly one positive per group (checked by the caller).
        temperature: T > 0.

    Returns:
        ``[B, G]`` weights.
    """
    probs = torch.softmax(scores / temperature, dim=-1)
    negative_share = torch.where(positives, torch.zeros_like(probs), probs).sum(dim=-1, keepdim=True)
    return torch.where(positives, negative_share, probs) / temperature


def infonce_loss_any_positives(scores: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """InfoNCE for monitoring when groups may hold several (or no) positives.

    Each positive p is scored against all negatives of its group,
    ``-log(e^{s_p/T} / (e^{s_p/T} + sum_neg e^{s_n/T}))``, averaged over the group's positives, then
    over the groups that have a positive. With exactly one positive per group this is exactly
    :func:`infonce_loss_per_group` averaged over groups.

    Returns:
        Scalar (0 when no group has a positive).
    """
    scaled = scores / temperature
    negative_lse = scaled.masked_fill(positives, float("-inf")).logsumexp(dim=-1, keepdim=True)
    # logaddexp(s, -inf) = s, so a group without negatives costs 0 instead of NaN.
    per_document = torch.logaddexp(scaled, negative_lse) - scaled
    has_positive = positives.any(dim=-1)
    per_group = (per_document * positives).sum(dim=-1) / positives.sum(dim=-1).clamp_min(1)
    return masked_mean(per_group, has_positive)


def group_accuracy(scores: Tensor, positives: Tensor) -> Tensor:
    """Fraction of groups ranked perfectly: every positive strictly above every negative.

    Ties count as wrong so that collapsed, all-equal scores read 0 (docs/architecture.md §6, pitfall 9). Groups
    without a positive or without a negative have no ranking to get right and are skipped.

    Returns:
        Scalar in [0, 1] (0 when no group qualifies).
    """
    lowest_positive = scores.masked_fill(~positives, float("inf")).amin(dim=-1)
    highest_negative = scores.masked_fill(positives, float("-inf")).amax(dim=-1)
    rankable = positives.any(dim=-1) & (~positives).any(dim=-1)
    return masked_mean((lowest_positive > highest_negative).to(scores.dtype), rankable)

"""What every objective shares: the call signature, input checks, the logged statistics, lookups.

An objective is an ``nn.Module`` called as ``obj(logits, positives, hidden=None, token_logits=None)``
that returns an :class:`ObjectiveOutput`. Subclasses implement two methods on an already checked
:class:`GroupBatch`: :meth:`Objective.compute` (loss, weights, scores) and
:meth:`Objective.compute_score` (scores only, for ranking).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from objectives import functional as fn

DEFAULT_LABEL_TOKENS: tuple[list[str], list[str]] = (["yes"], ["no"])

#: Keys of ``ObjectiveOutput.stats``, identical for every objective (``mix`` adds ``mix/<term>/loss``).
STAT_KEYS: tuple[str, ...] = (
    "sft_loss",
    "cl_loss",
    "weight_pos_mean",
    "weight_neg_sum",
    "weight_neg_max",
    "p_yes_pos_mean",
    "p_yes_neg_mean",
    "group_accuracy",
)

EXTRA_INPUTS = frozenset({"hidden", "token_logits"})


@dataclass(frozen=True)
class ObjectiveOutput:
    """Result of one objective call.

    Attributes:
        loss: scalar with grad.
        weights: ``[B, G]`` detached weights W (W+ on positives, W- on negatives).
        stats: detached scalars to log; keys are :data:`STAT_KEYS`.
    """

    loss: Tensor
    weights: Tensor
    stats: dict[str, Tensor]


@dataclass(frozen=True)
class GroupBatch:
    """Checked inputs of one call, cast to the compute dtype (float32, or float64 if given float64).

    Attributes:
        logits: ``[B, G, 2]`` (z_yes, z_no) of each document.
        positives: ``[B, G]`` bool, or None when only scoring.
        hidden: ``[B, G, H]`` last hidden state at the answer position, if given.
        token_logits: ``[B, G, P + N]`` logits of the positive then negative label tokens, if given.
    """

    logits: Tensor
    positives: Tensor | None
    hidden: Tensor | None = None
    token_logits: Tensor | None = None

    @property
    def labels(self) -> Tensor:
        """``positives``, which a loss needs (it is None only when scoring)."""
        if self.positives is None:
            raise ValueError("a loss needs positives [B, G]; got None (only scoring takes none)")
        return self.positives

    @property
    def yes_logits(self) -> Tensor:
        """``[B, G]`` z_y."""
        return self.logits[..., 0]

    @property
    def log_odds(self) -> Tensor:
        """``[B, G]`` u = z_y - z_n, the log-odds of "yes" against "no" (p_yes = sigmoid(u))."""
        return self.logits[..., 0] - self.logits[..., 1]

    def with_token_logits(self, token_logits: Tensor | None) -> GroupBatch:
        """A copy carrying other token logits (used by ``mix`` to hand each term its own columns)."""
        return replace(self, token_logits=token_logits)


class LossParts(NamedTuple):
    """What :meth:`Objective.compute` returns.

    Attributes:
        loss: scalar with grad.
        weights: ``[B, G]`` weights W, no grad.
        scores: ``[B, G]`` the objective's ranking scores, no grad.
        extra_stats: statistics beyond :data:`STAT_KEYS` (only ``mix`` has some).
    """

    loss: Tensor
    weights: Tensor
    scores: Tensor
    extra_stats: Mapping[str, Tensor] | None = None


class ReadsScores(nn.Module):
    """What objectives and directions declare about their inputs (defaults: the yes/no logits only)."""

    @property
    def needs(self) -> frozenset[str]:
        """Extra inputs read: a subset of ``{"hidden", "token_logits"}``."""
        return frozenset()

    @property
    def label_tokens(self) -> tuple[list[str], list[str]]:
        """Positive and negative label words, in the column order expected in ``token_logits``."""
        return DEFAULT_LABEL_TOKENS


class Objective(ReadsScores):
    """Base class of the reranking objectives (see the module docstring for the contract)."""

    def forward(
        self,
        logits: Tensor,
        positives: Tensor,
        hidden: Tensor | None = None,
        token_logits: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Loss, weights and statistics of a batch of query groups.

        Args:
            logits: ``[B, G, 2]`` (z_yes, z_no) of each document.
            positives: ``[B, G]`` bool, true for relevant documents.
            hidden: ``[B, G, H]`` last hidden state (needed when ``"hidden" in self.needs``).
            token_logits: ``[B, G, P + N]`` label-token logits in :attr:`label_tokens` order
                (needed when ``"token_logits" in self.needs``).

        Returns:
            The loss (mean over groups of a sum over each group's documents), detached weights
            and detached statistics.
        """
        batch = self.prepare(logits, positives, hidden, token_logits)
        parts = self.compute(batch)
        with torch.no_grad():
            stats = self.stats(batch, parts)
            stats.update({key: value.detach() for key, value in (parts.extra_stats or {}).items()})
        return ObjectiveOutput(loss=parts.loss, weights=parts.weights.detach(), stats=stats)

    def score(
        self, logits: Tensor, hidden: Tensor | None = None, token_logits: Tensor | None = None
    ) -> Tensor:
        """``[B, G]`` ranking score this objective implies (higher = more relevant), in float32/64."""
        return self.compute_score(self.prepare(logits, None, hidden, token_logits))

    def compute(self, batch: GroupBatch) -> LossParts:
        """Loss (with grad), weights and scores of a checked batch."""
        raise NotImplementedError

    def compute_score(self, batch: GroupBatch) -> Tensor:
        """Scores of a checked batch (``positives`` may be None)."""
        raise NotImplementedError

    def stats(self, batch: GroupBatch, parts: LossParts) -> dict[str, Tensor]:
        """The :data:`STAT_KEYS` statistics, all detached 0-dim tensors.

        - ``sft_loss``: reference SFT loss of the logits (sum over documents, mean over groups).
        - ``cl_loss``: reference CL loss of z_y at temperature 1 whatever the objective's own
          temperature, so all runs are compared on one scale; groups with several positives score
          each positive against the negatives and average (see ``infonce_loss_any_positives``).
        - ``weight_pos_mean``: mean W over all positive documents of the batch.
        - ``weight_neg_sum``: sum of W over a group's negatives, mean over groups.
        - ``weight_neg_max``: largest W among a group's negatives, mean over groups (0 for a group
          without negatives).
        - ``p_yes_pos_mean`` / ``p_yes_neg_mean``: mean sigmoid(z_y - z_n) over positives / negatives.
        - ``group_accuracy``: fraction of groups whose positives all score strictly above all their
          negatives under this objective's own score.

        Means over an empty set are 0.
        """
        positives = batch.labels
        negatives = ~positives
        logits = batch.logits.detach()
        log_odds = logits[..., 0] - logits[..., 1]
        weights = parts.weights.detach()
        p_yes = torch.sigmoid(log_odds)
        zero = torch.zeros_like(weights)
        negative_max = torch.where(negatives, weights, torch.full_like(weights, float("-inf"))).amax(dim=-1)
        return {
            "sft_loss": fn.sft_loss_per_group(log_odds, positives).mean(),
            "cl_loss": fn.infonce_loss_any_positives(logits[..., 0], positives, temperature=1.0),
            "weight_pos_mean": fn.masked_mean(weights, positives),
            "weight_neg_sum": torch.where(negatives, weights, zero).sum(dim=-1).mean(),
            "weight_neg_max": torch.where(negatives.any(dim=-1), negative_max, zero[:, 0]).mean(),
            "p_yes_pos_mean": fn.masked_mean(p_yes, positives),
            "p_yes_neg_mean": fn.masked_mean(p_yes, negatives),
            "group_accuracy": fn.group_accuracy(parts.scores.detach(), positives),
        }

    def prepare(
        self,
        logits: Tensor,
        positives: Tensor | None,
        hidden: Tensor | None = None,
        token_logits: Tensor | None = None,
    ) -> GroupBatch:
        """Check shapes and presence of the inputs this objective needs and cast to the compute dtype.

        Raises:
            ValueError: wrong shape or dtype, or an input in :attr:`needs` is missing.
        """
        name = type(self).__name__
        if not torch.is_floating_point(logits) or logits.dim() != 3 or logits.shape[-1] != 2:
            raise ValueError(
                f"{name}: logits must be a float tensor [B, G, 2] of (z_yes, z_no); "
                f"got {tuple(logits.shape)} {logits.dtype}"
            )
        group_shape = logits.shape[:2]
        dtype = fn.compute_dtype(logits)
        if positives is not None:
            if positives.shape != group_shape:
                raise ValueError(
                    f"{name}: positives must be [B, G] = {tuple(group_shape)} like logits[..., 0]; "
                    f"got {tuple(positives.shape)}"
                )
            if positives.dtype != torch.bool:
                if torch.is_floating_point(positives):
                    raise ValueError(
                        f"{name}: positives must be a bool (or integer 0/1) mask; got {positives.dtype}"
                    )
                positives = positives != 0
        if "hidden" in self.needs:
            if hidden is None:
                raise ValueError(
                    f"{name} needs hidden= (the last hidden state [B, G, H] at the answer position)"
                )
            if hidden.dim() != 3 or hidden.shape[:2] != group_shape:
                raise ValueError(f"{name}: hidden must be [B, G, H] with [B, G] = {tuple(group_shape)}")
        if "token_logits" in self.needs:
            if token_logits is None:
                positive, negative = self.label_tokens
                raise ValueError(
                    f"{name} needs token_logits= [B, G, {len(positive) + len(negative)}], the logits of "
                    f"{positive + negative} in that order (see obj.label_tokens)"
                )
            if token_logits.dim() != 3 or token_logits.shape[:2] != group_shape:
                raise ValueError(
                    f"{name}: token_logits must be [B, G, P + N] with [B, G] = {tuple(group_shape)}"
                )
        return GroupBatch(
            logits=logits.to(dtype),
            positives=positives,
            hidden=None if hidden is None else hidden.to(dtype),
            token_logits=None if token_logits is None else token_logits.to(dtype),
        )


def lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
    """``table[name]``, or a ValueError naming the known choices of this ``kind``."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}") from None


def construct(
    cls: type, what: str, kwargs: Mapping[str, Any], optional: Mapping[str, Any] | None = None
) -> Any:
    """Instantiate ``cls(**kwargs)`` with readable errors.

    Args:
        cls: the component class.
        what: how to name it in errors, e.g. "objective 'sft'".
        kwargs: arguments the user gave; any the class does not accept is an error.
        optional: arguments passed only if the class accepts them (e.g. ``hidden_size``, which the
            LightningModule always supplies but only some components use).

    Raises:
        ValueError: an argument the class does not accept, listing the ones it does.
    """
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{what} got unknown argument(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    extra = {key: value for key, value in (optional or {}).items() if key in accepted}
    return cls(**kwargs, **extra)


def check_temperature(temperature: float) -> float:
    """Validate a softmax temperature (T > 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    return float(temperature)

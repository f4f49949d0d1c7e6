"""``url``: the Unified Reranking Loss, any weight paired with any direction."""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.base import GroupBatch, LossParts, Objective, construct, lookup
from objectives.directions import DIRECTIONS
from objectives.weights import WEIGHTS


class UnifiedRerankingLoss(Objective):
    """Surrogate loss whose gradient is exactly W x D for an independent weight W and direction D.

    Formula: ``L = mean_groups[ -sum_pos sg(W+) phi(d) + sum_neg sg(W-) phi(d) ]`` where sg is
    stop-gradient, W comes from ``weight`` (computed under no_grad from its own score, see
    ``objectives.weights``) and phi from ``direction`` (see ``objectives.directions``). So
    ``dL/dphi(d) = -W+/B`` on positives and ``+W-/B`` on negatives (B = number of groups).
    The loss VALUE is only a surrogate (it is not the SFT or CL loss); compare runs through the
    ``sft_loss`` / ``cl_loss`` statistics. Score: phi.

    Args:
        weight: one of ``sft``, ``cl``, ``constant``, ``tau_mask``.
        direction: one of ``sft``, ``cl``, ``multi_token``, ``projection``.
        hidden_size: backbone hidden size (required by ``projection``, ignored otherwise).
        temperature: T of the ``cl`` weight; it includes the 1/T of the CL gradient, so
            ``url("cl", "cl", temperature=T)`` has exactly the gradient of ``cl(temperature=T)``.
        tau: threshold of the ``tau_mask`` weight.
        positive_tokens: positive label words of ``multi_token`` (default ``["yes"]``).
        negative_tokens: negative label words of ``multi_token`` (default ``["no"]``).
        label_token_count: preset 2/4/8/16 for ``multi_token`` instead of the two lists.

    A parameter that the chosen weight or direction does not use is accepted and ignored, so one
    sweep can cross all weights with all directions at a fixed temperature or tau.

    Raises:
        ValueError: unknown weight or direction (listing the known ones); at call time, a ``cl``
            weight with a group that does not have exactly one positive.

    References: Dai, Zhang et al., arXiv 2510.14824, the Unified Reranking Loss and its probes
    (docs/science.md §3-4: Table 1 weight x direction swap, Table 2 weights, direction probes).

    Relations: with matched parts it equals the references in gradient: ``url("sft", "sft")`` ~
    ``sft``, ``url("cl", "cl")`` ~ ``cl``.
    """

    def __init__(
        self,
        weight: str = "sft",
        direction: str = "sft",
        hidden_size: int | None = None,
        temperature: float = 1.0,
        tau: float = 0.1,
        positive_tokens: list[str] | None = None,
        negative_tokens: list[str] | None = None,
        label_token_count: int | None = None,
    ) -> None:
        super().__init__()
        weight_cls = lookup(WEIGHTS, weight, "weight")
        direction_cls = lookup(DIRECTIONS, direction, "direction")
        self.weight_name, self.direction_name = weight, direction
        self.weighting = construct(
            weight_cls, f"weight {weight!r}", {}, optional={"temperature": temperature, "tau": tau}
        )
        self.direction = construct(
            direction_cls,
            f"direction {direction!r}",
            {},
            optional={
                "hidden_size": hidden_size,
                "positive_tokens": positive_tokens,
                "negative_tokens": negative_tokens,
                "label_token_count": label_token_count,
            },
        )

    @property
    def needs(self) -> frozenset[str]:
        return self.direction.needs

    @property
    def label_tokens(self) -> tuple[list[str], list[str]]:
        return self.direction.label_tokens

    def compute(self, batch: GroupBatch) -> LossParts:
        phi = self.direction(batch)
        with torch.no_grad():
            weights = self.weighting(self.direction.weight_inputs(batch, phi.detach()), batch.labels)
        # -1 pulls positives up, +1 pushes negatives down: the gradient is W x D with the paper's signs.
        sign = torch.where(batch.labels, -1.0, 1.0).to(phi.dtype)
        loss = (sign * weights * phi).sum(dim=-1).mean()
        return LossParts(loss=loss, weights=weights, scores=phi.detach())

    def compute_score(self, batch: GroupBatch) -> Tensor:
        return self.direction(batch)

    def extra_repr(self) -> str:
        return f"weight={self.weight_name!r}, direction={self.direction_name!r}"

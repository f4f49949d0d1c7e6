"""The objective registry and :func:`build`, the one way configs create objectives."""

from __future__ import annotations

from typing import Any

from objectives.base import Objective, construct, lookup
from objectives.cl import CLObjective
from objectives.listwise import ListwiseObjective
from objectives.mix import MixObjective
from objectives.sft import SFTObjective
from objectives.url import UnifiedRerankingLoss

OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SFTObjective,
    "cl": CLObjective,
    "url": UnifiedRerankingLoss,
    "mix": MixObjective,
    "listwise": ListwiseObjective,
}


def build(name: str, hidden_size: int | None = None, **kwargs: Any) -> Objective:
    """Create an objective by name.

    Args:
        name: one of :data:`OBJECTIVES` (``sft``, ``cl``, ``url``, ``mix``, ``listwise``).
        hidden_size: the backbone's hidden size. The LightningModule always passes it; it reaches
            only the objectives that take it (``url`` and ``mix``, for the ``projection`` direction).
        **kwargs: the objective's own arguments (see each class).

    Returns:
        The objective, an ``nn.Module`` to register as a submodule (``projection`` has parameters).

    Raises:
        ValueError: unknown name, or an argument the objective does not take (listing the known ones).
    """
    cls = lookup(OBJECTIVES, name, "objective")
    return construct(cls, f"objective {name!r}", kwargs, optional={"hidden_size": hidden_size})

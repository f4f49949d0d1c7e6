"""The objective registry and :func:`build`, the one way configs create objectives."""

from __future__ import annotations

from typing import Any

from objectives.base import Objective
from objectives.catalog import PLAIN_OBJECTIVES, build_from
from objectives.mix import MixObjective

OBJECTIVES: dict[str, type[Objective]] = {**PLAIN_OBJECTIVES, "mix": MixObjective}


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
    return build_from(OBJECTIVES, name, hidden_size, **kwargs)

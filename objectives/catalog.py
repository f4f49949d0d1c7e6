"""The plain objectives by name, and :func:`build_plain`: what a ``mix`` term can be.

Kept apart from :mod:`objectives.registry` so that dependencies inside the package point one way:
``catalog`` ← ``mix`` ← ``registry`` (the registry adds ``mix`` on top of these).
"""

from __future__ import annotations

from typing import Any

from objectives.base import Objective, construct, lookup
from objectives.cl import CLObjective
from objectives.listwise import ListwiseObjective
from objectives.sft import SFTObjective
from objectives.url import UnifiedRerankingLoss

PLAIN_OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SFTObjective,
    "cl": CLObjective,
    "url": UnifiedRerankingLoss,
    "listwise": ListwiseObjective,
}


def build_from(
    table: dict[str, type[Objective]], name: str, hidden_size: int | None = None, **kwargs: Any
) -> Objective:
    """Create the objective ``table[name]`` with readable errors (unknown name, unknown argument)."""
    cls = lookup(table, name, "objective")
    return construct(cls, f"objective {name!r}", kwargs, optional={"hidden_size": hidden_size})


def build_plain(name: str, hidden_size: int | None = None, **kwargs: Any) -> Objective:
    """Create one of :data:`PLAIN_OBJECTIVES` (a mix term; a mix cannot nest another mix)."""
    return build_from(PLAIN_OBJECTIVES, name, hidden_size, **kwargs)

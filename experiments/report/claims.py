"""The paper's probe comparisons (docs/science.md §4) and the claims they test.

A cell is a (weight, direction) pair of the Unified Reranking Loss; plain ``sft`` / ``cl`` runs count as
W_SFT × D_SFT / W_CL × D_CL when no URL run of that cell exists. Every comparison is a function of
the cells' MRB averages, so the same definition serves the per-seed values (the runs sharing a seed)
and the two-level bootstrap (resampled averages); ``analysis`` tests them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .runs import Row

Cell = tuple[str, str]  # (weight, direction)
WEIGHT_NAMES = {"sft": "W_SFT", "cl": "W_CL", "constant": "W_base", "tau_mask": "W_base+τ-mask"}
DIRECTION_NAMES = {"sft": "D_SFT", "cl": "D_CL", "projection": "D_rand", "multi_token": "D_multi"}
SS, SC, CS, CC = ("sft", "sft"), ("sft", "cl"), ("cl", "sft"), ("cl", "cl")


def cell_name(cell: Cell) -> str:
    weight, direction = cell
    return f"{WEIGHT_NAMES.get(weight, weight)} × {DIRECTION_NAMES.get(direction, direction)}"


def _main_effects(v: Mapping[Cell, Any]) -> Any:
    weight = (v[SS] - v[CS] + v[SC] - v[CC]) / 2  # W_SFT - W_CL, averaged over the two directions
    direction = (v[SS] - v[SC] + v[CS] - v[CC]) / 2  # D_SFT - D_CL, averaged over the two weights
    return abs(weight) - abs(direction)


@dataclass(frozen=True)
class Comparison:
    """One statistic of the cells' averages, with the paper's value (points) and claim, if any."""

    key: str
    title: str
    cells: tuple[Cell, ...]
    fn: Callable[[Mapping[Cell, Any]], Any]
    paper: float  # the paper's value, in points (x100)
    claim: str | None  # the claim it tests (None: reported, not a claim of the paper)
    sign: int = 1  # the paper's direction: +1 (statistic > 0) or -1


def difference(key: str, title: str, a: Cell, b: Cell, paper: float, claim: str | None, sign: int = 1):
    return Comparison(key, title, (a, b), lambda v: v[a] - v[b], paper, claim, sign)


# Paper values: Table 1 (58.09 / 57.88 / 56.99 / 56.40), Table 2 (49.47 / 56.57 / 58.19), D_rand (CL +1.32,
# SFT -1.34); docs/science.md §4.
COMPARISONS = (
    # The paper's headline (SFT is the stronger objective), reported beside the claims: the claim family
    # below was declared before the v2 runs, so adding it to the Holm family afterwards would be post hoc.
    difference("sft_over_cl", "SFT − CL (W_SFT × D_SFT − W_CL × D_CL)", SS, CC, 58.09 - 56.40, None),
    difference("weight_at_dsft", "W_SFT − W_CL under D_SFT", SS, CS, 58.09 - 56.99, "weight"),
    difference("weight_at_dcl", "W_SFT − W_CL under D_CL", SC, CC, 57.88 - 56.40, "weight"),
    difference("direction_at_wsft", "D_SFT − D_CL under W_SFT", SS, SC, 58.09 - 57.88, None),
    difference("direction_at_wcl", "D_SFT − D_CL under W_CL", CS, CC, 56.99 - 56.40, None),
    Comparison(
        "weight_over_direction",
        "|weight effect| − |direction effect| (main effects of the 2×2)",
        (SS, SC, CS, CC),
        _main_effects,
        abs((58.09 - 56.99 + 57.88 - 56.40) / 2) - abs((58.09 - 57.88 + 56.99 - 56.40) / 2),
        "weight_over_direction",
    ),
    difference(
        "tau_over_base",
        "W_base+τ-mask − W_base under D_SFT",
        ("tau_mask", "sft"),
        ("constant", "sft"),
        56.57 - 49.47,
        "table2",
    ),
    difference(
        "sft_over_tau", "W_SFT − W_base+τ-mask under D_SFT", SS, ("tau_mask", "sft"), 58.19 - 56.57, "table2"
    ),
    difference("drand_cl", "D_rand − D_CL under W_CL", ("cl", "projection"), CC, 1.32, "drand"),
    difference("drand_sft", "D_rand − D_SFT under W_SFT", ("sft", "projection"), SS, -1.34, "drand", -1),
)
CLAIMS = {
    "weight": "W_SFT beats W_CL under both directions",
    "weight_over_direction": "the weight matters more than the direction",
    "table2": "W_base+τ-mask beats W_base and W_SFT beats W_base+τ-mask (Table 2, with D_SFT)",
    "drand": "D_rand helps W_CL and hurts W_SFT",
}


def find_cells(rows: list[Row]) -> tuple[dict[Cell, Row], list[str]]:
    """The row of every cell, and notes on cells that are ambiguous (several rows differ by other
    config keys) or given by both a URL and a plain run (the URL row is used)."""
    cells: dict[Cell, list[Row]] = {}
    for row in rows:
        cells.setdefault((row.weight, row.direction), []).append(row)
    chosen, notes = {}, []
    for cell, candidates in cells.items():
        url = [r for r in candidates if r.objective == "url"]
        pick = url if url else candidates
        if len(pick) > 1:
            notes.append(
                f"{cell_name(cell)}: {len(pick)} rows differ by other config keys "
                f"({'; '.join(r.label for r in pick)}); no comparison uses this cell"
            )
            continue
        if url and len(candidates) > len(url):
            notes.append(
                f"{cell_name(cell)}: the URL runs are compared; the plain-objective row is listed only"
            )
        chosen[cell] = pick[0]
    return chosen, notes


def available(comparisons, cells: Mapping[Cell, Row]) -> list[Comparison]:
    return [c for c in comparisons if all(cell in cells for cell in c.cells)]


def points(value: float) -> str:
    return f"{100 * value:+.2f}"

"""rerank-lab objectives: SFT, CL, the Unified Reranking Loss (weight x direction), mix, listwise.

Usage::

    import objectives
    obj = objectives.build("url", weight="sft", direction="cl", hidden_size=backbone_hidden_size)
    out = obj(logits, positives)  # logits [B, G, 2] (z_yes, z_no), positives [B, G] bool
    out.loss.backward()
    scores = obj.score(logits)    # [B, G] ranking scores

See ``docs/science.md`` for the science and each module's docstring for its formula.
"""

from objectives.base import STAT_KEYS, GroupBatch, LossParts, Objective, ObjectiveOutput
from objectives.cl import CLObjective
from objectives.directions import DIRECTIONS, LABEL_TOKEN_COUNTS, Direction, label_token_preset
from objectives.listwise import ListwiseObjective
from objectives.mix import MixObjective
from objectives.registry import OBJECTIVES, build
from objectives.sft import SFTObjective
from objectives.url import UnifiedRerankingLoss
from objectives.weights import WEIGHTS, Weight, WeightInputs

__all__ = [
    "DIRECTIONS",
    "LABEL_TOKEN_COUNTS",
    "OBJECTIVES",
    "STAT_KEYS",
    "WEIGHTS",
    "CLObjective",
    "Direction",
    "GroupBatch",
    "ListwiseObjective",
    "LossParts",
    "MixObjective",
    "Objective",
    "ObjectiveOutput",
    "SFTObjective",
    "UnifiedRerankingLoss",
    "Weight",
    "WeightInputs",
    "build",
    "label_token_preset",
]

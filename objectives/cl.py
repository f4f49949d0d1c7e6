"""``cl``: the reference contrastive objective (InfoNCE over the group on the yes logit)."""

from __future__ import annotations

from torch import Tensor

from objectives import functional as fn
from objectives.base import GroupBatch, LossParts, Objective, check_temperature


class CLObjective(Objective):
    """InfoNCE over each group's documents on the raw yes logit z_y.

    Formula: ``L = mean_groups[ -log softmax_0(z_y / T) ]`` where index 0 is the group's positive
    and the softmax runs over the 1 + N documents of that group only (no in-batch negatives).
    Score: z_y. Weights reported: W_CL including its 1/T factor (see ``CLWeight``).

    Args:
        temperature: T > 0; the paper reported none (1 reproduces it).

    Raises:
        ValueError: a group without exactly one positive.

    References: Dai, Zhang et al., arXiv 2510.14824, the CL objective (docs/science.md §2) and its
    weight/direction decomposition (docs/science.md §3-4, Table 1 row W_CL x D_CL, MRB 56.40).

    Relations: ``url(weight="cl", direction="cl", temperature=T)`` has exactly its gradient; the
    group-coupled sibling of ``sft``; ``listwise`` is the same softmax on z_y - z_n.
    """

    objective_name = "cl"  # in error messages; ``listwise`` reuses this class on another score

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def compute(self, batch: GroupBatch) -> LossParts:
        fn.require_single_positive(batch.labels, f"objective '{self.objective_name}'")
        scores = self.compute_score(batch)
        loss = fn.infonce_loss_per_group(scores, batch.labels, self.temperature).mean()
        weights = fn.infonce_weights(scores.detach(), batch.labels, self.temperature)
        return LossParts(loss=loss, weights=weights, scores=scores.detach())

    def compute_score(self, batch: GroupBatch) -> Tensor:
        """The scores the group softmax runs over: z_y."""
        return batch.yes_logits

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

"""``listwise``: softmax over the group on the yes/no log-odds (beyond the paper)."""

from __future__ import annotations

from torch import Tensor

from objectives.base import GroupBatch
from objectives.cl import CLObjective


class ListwiseObjective(CLObjective):
    """InfoNCE over each group on u = z_y - z_n instead of z_y.

    Formula: ``L = mean_groups[ -log softmax_0(u / T) ]``, u = z_y - z_n, index 0 the positive.
    Its gradient with respect to u is ``-W+`` on the positive and ``+W-_i`` on negatives with the
    CL weights computed on u (``W-_i = softmax_i(u / T) / T``, ``W+ = sum_i W-_i``): group-coupled
    weights like CL, the SFT direction M_y - M_n. Score: u. Weights reported: those CL weights on u.

    Args:
        temperature: T > 0.

    Raises:
        ValueError: a group without exactly one positive.

    References: not in Dai, Zhang et al., arXiv 2510.14824; it fills the "listwise objectives" gap
    the paper leaves open (docs/science.md §6); ms-swift's generative reranker offers a listwise
    cross-entropy with temperature over the yes - no score of the same kind (docs/science.md §6).

    Relations: ``cl`` with z_y replaced by z_y - z_n; equals ``url(weight="cl", direction="sft")``
    except that there the CL weight reads the softmax of z_y, here of u (the same W x D surrogate
    with ``WeightInputs(group_logits=u)`` reproduces it exactly, as the tests check).
    """

    objective_name = "listwise"

    def compute_score(self, batch: GroupBatch) -> Tensor:
        """The scores the group softmax runs over: u = z_y - z_n."""
        return batch.log_odds

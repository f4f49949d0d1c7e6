"""``mix``: a coefficient-weighted sum of named objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from objectives.base import GroupBatch, LossParts, Objective
from objectives.catalog import build_plain


class MixObjective(Objective):
    """``L = sum_k c_k L_k`` over named terms, each a plain objective (``objectives.catalog``; not another mix).

    Terms are a named dict so that a sweep can address each one by a dotted key:
    ``terms.sft`` (a bare coefficient) or ``terms.<key>.coef`` / ``terms.<key>.weight`` (a dict)::

        build("mix", terms={"sft": 1.0, "cl": 0.5})
        build("mix", terms={"sft": 1.0, "cl_dir": {"coef": 0.5, "name": "url", "weight": "sft", "direction": "cl"}})

    A term value is either a number (the coefficient of the objective named like the key) or a
    dict with ``coef`` (default 1), ``name`` (default: the key) and that objective's arguments.

    Weights reported: ``sum_k c_k W_k``. When all terms share a direction this is exactly the
    effective weight of the mix's gradient (``sum_k c_k W_k D``); otherwise it is a summary.
    Score: the score of ``score_term``. ``needs`` and ``label_tokens`` are the unions over the
    terms; each term receives the ``token_logits`` columns of its own label words.
    Extra statistics: ``mix/<key>/loss``, each term's own loss (before its coefficient).

    Args:
        terms: term key -> coefficient or dict (see above). Keys must not contain ".".
        hidden_size: backbone hidden size, handed to every term.
        score_term: key of the term whose score ranks documents; default the term with the largest
            coefficient (the first one on ties).

    Raises:
        ValueError: no terms, a bad key, coefficient or term specification (naming the term key).

    References: not in Dai, Zhang et al., arXiv 2510.14824 (which compares pure objectives); a
    convenience to interpolate between them, e.g. SFT + CL.

    Relations: with one term of coefficient 1 it is that term; two ``url`` terms with the same
    direction equal one ``url`` whose weight is the coefficient-weighted sum of theirs.
    """

    def __init__(
        self,
        terms: Mapping[str, float | Mapping[str, Any]],
        hidden_size: int | None = None,
        score_term: str | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("objective 'mix' needs at least one term, e.g. terms={'sft': 1.0, 'cl': 0.5}")
        self.terms = nn.ModuleDict()
        self.coefficients: dict[str, float] = {}
        for key, spec in terms.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"objective 'mix': term key {key!r} must be a non-empty name without '.'")
            name, coefficient, kwargs = _parse_term(key, spec)
            try:
                self.terms[key] = build_plain(name, hidden_size=hidden_size, **kwargs)
            except ValueError as error:
                raise ValueError(f"objective 'mix', term {key!r}: {error}") from error
            self.coefficients[key] = coefficient
        if score_term is None:
            score_term = max(self.coefficients, key=lambda key: self.coefficients[key])
        if score_term not in self.terms:
            raise ValueError(
                f"objective 'mix': score_term {score_term!r} is not a term; terms: {list(self.terms)}"
            )
        self.score_term = score_term
        self._positive_tokens, self._negative_tokens, self._token_columns = self._merge_label_tokens()

    def _objectives(self) -> dict[str, Objective]:
        """The terms as objectives (``nn.ModuleDict`` types its values as plain modules)."""
        terms: dict[str, Objective] = {}
        for key, term in self.terms.items():
            if not isinstance(term, Objective):
                raise TypeError(f"objective 'mix': term {key!r} is a {type(term).__name__}, not an objective")
            terms[key] = term
        return terms

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(term.needs for term in self._objectives().values()))

    @property
    def label_tokens(self) -> tuple[list[str], list[str]]:
        return list(self._positive_tokens), list(self._negative_tokens)

    def compute(self, batch: GroupBatch) -> LossParts:
        loss = torch.zeros((), dtype=batch.logits.dtype, device=batch.logits.device)
        weights = torch.zeros_like(batch.logits[..., 0])
        scores = None
        term_losses = {}
        for key, term in self._objectives().items():
            parts = term.compute(self._term_batch(key, batch))
            loss = loss + self.coefficients[key] * parts.loss
            weights = weights + self.coefficients[key] * parts.weights
            term_losses[f"mix/{key}/loss"] = parts.loss.detach()
            if key == self.score_term:
                scores = parts.scores
        if scores is None:  # the constructor checks score_term names a term
            raise ValueError(
                f"objective 'mix': score_term {self.score_term!r} is not one of {list(self.terms)}"
            )
        return LossParts(loss=loss, weights=weights, scores=scores, extra_stats=term_losses)

    def compute_score(self, batch: GroupBatch) -> Tensor:
        return self.terms[self.score_term].compute_score(self._term_batch(self.score_term, batch))

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients}, score_term={self.score_term!r}"

    def _merge_label_tokens(self) -> tuple[list[str], list[str], dict[str, list[int]]]:
        """Union of the terms' label words (first seen first) and each term's columns in it."""
        positive: list[str] = []
        negative: list[str] = []
        terms = self._objectives()
        for term in terms.values():
            term_positive, term_negative = term.label_tokens
            positive += [word for word in term_positive if word not in positive]
            negative += [word for word in term_negative if word not in negative]
        columns = {}
        for key, term in terms.items():
            term_positive, term_negative = term.label_tokens
            columns[key] = [positive.index(word) for word in term_positive] + [
                len(positive) + negative.index(word) for word in term_negative
            ]
        return positive, negative, columns

    def _term_batch(self, key: str, batch: GroupBatch) -> GroupBatch:
        """The batch a term sees: only its own token-logit columns, in its own order."""
        if "token_logits" not in self.terms[key].needs:
            return batch.with_token_logits(None)
        expected = len(self._positive_tokens) + len(self._negative_tokens)
        token_logits = batch.token_logits
        if token_logits is None or token_logits.shape[-1] != expected:
            got = None if token_logits is None else tuple(token_logits.shape)
            raise ValueError(
                f"objective 'mix' needs token_logits [B, G, {expected}] for "
                f"{self._positive_tokens + self._negative_tokens}; got {got}"
            )
        return batch.with_token_logits(token_logits[..., self._token_columns[key]])


def _parse_term(key: str, spec: float | Mapping[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """(objective name, coefficient, objective kwargs) of one term specification."""
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        coefficient = kwargs.pop("coef", 1.0)
        name = kwargs.pop("name", key)
    else:
        coefficient, name, kwargs = spec, key, {}
    if isinstance(coefficient, bool) or not isinstance(coefficient, int | float):
        raise ValueError(
            f"objective 'mix', term {key!r}: the coefficient must be a number (or the term a dict "
            f"with 'coef'); got {coefficient!r}"
        )
    return name, float(coefficient), kwargs

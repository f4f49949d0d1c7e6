"""Dotted config keys and the run names made of them: the names the CLI, sweeps, reports and W&B share.

One naming scheme serves ``experiments.cli`` (a run's default ``run_name``, from the keys that say
what ran) and ``experiments.sweep`` (a run's folder, from the keys its sweep varies): the same key
is always abbreviated the same way (``model.objective_args.weight=sft`` -> ``Wsft``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Short names in run names (``url-Wsft-Dcl-n4-s0``); other keys use their last dotted component.
ABBREVIATIONS = {
    "model.objective": "",
    "model.objective_args.weight": "W",
    "model.objective_args.direction": "D",
    "model.objective_args.label_token_count": "L",
    "model.objective_args.tau": "tau",
    "model.objective_args.temperature": "T",
    "model.lm_head": "head-",
    "data.num_negatives": "n",
    "model.lr": "lr",
    "seed_everything": "s",
}
# What a run's default name says about it, in this order (absent or null keys are left out).
NAMING_KEYS = (
    "model.objective",
    "model.objective_args.weight",
    "model.objective_args.direction",
    "model.objective_args.label_token_count",
    "model.objective_args.tau",
    "model.objective_args.temperature",
    "model.lm_head",
    "data.num_negatives",
    "seed_everything",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; empty dicts stay as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_value(value: Any) -> str:
    """A value as it appears in a run name: floats in ``g`` format, anything outside ``[A-Za-z0-9._+-]``
    replaced by ``_`` (a name is one folder name)."""
    text = format(value, "g") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def name_part(key: str, value: Any) -> str:
    """One component of a run name: ``Wsft`` for ``model.objective_args.weight=sft``."""
    return f"{ABBREVIATIONS.get(key, key.rsplit('.', 1)[-1])}{format_value(value)}"


def run_label(flat: dict[str, Any], keys: Iterable[str]) -> str:
    """The run name made of ``keys`` of a flat (dotted) config, in that order: ``url-Wsft-Dcl-s0``."""
    return "-".join(name_part(key, flat[key]) for key in keys if key in flat) or "run"


def run_name(config: dict) -> str:
    """A run's default name, e.g. ``url-Wsft-Dcl-n4-s0``, ``sft-n4-s0`` or ``sft-head-full-n4-s1``.

    The frozen LM head (the default) is left out; an unseeded run says ``sr``.
    """
    flat = {k: v for k, v in flatten(config).items() if v is not None}
    if flat.get("model.lm_head", "frozen") == "frozen":
        flat.pop("model.lm_head", None)
    if not isinstance(flat.get("seed_everything"), int) or isinstance(flat.get("seed_everything"), bool):
        flat["seed_everything"] = "r"
    return run_label(flat, NAMING_KEYS)

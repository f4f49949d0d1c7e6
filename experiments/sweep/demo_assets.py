"""The tiny model and the demo data a demo sweep needs, built before its first run when missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from experiments.keys import flatten


def prepare_demo(config: dict) -> None:
    """Build the tiny model and the demo data when the sweep's config files point at them and they
    are missing (paths set by the sweep's own parameters are left to the user)."""
    command = [str(item) for item in config.get("command", [])]
    files = [Path(command[i + 1]) for i, item in enumerate(command[:-1]) if item == "--config"]
    if not any(f.name in ("demo.yaml", "tiny.yaml") for f in files):
        return
    merged: dict[str, Any] = {}
    for path in files:
        if path.is_file():
            merged.update(flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))
    fixed = set(config["parameters"])
    model = merged.get("model.model_name_or_path")
    if model and "model.model_name_or_path" not in fixed and not (Path(model) / "config.json").is_file():
        from lightning_modules.tiny import build_tiny

        print(f"building the tiny Qwen2-VL into {model}", flush=True)
        build_tiny(Path(model), family="qwen2_vl", seed=0)
    train, evaluation = merged.get("data.train_root"), merged.get("data.eval_root")
    if not train or not evaluation or {"data.train_root", "data.eval_root"} & fixed:
        return
    train, evaluation = Path(train), Path(evaluation)
    if train.parent == evaluation.parent and not (train.is_dir() and evaluation.is_dir()):
        from datamodules.demo import build_demo

        print(f"building the demo benchmark into {train.parent}", flush=True)
        build_demo(train.parent, seed=0)

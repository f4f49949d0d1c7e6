"""Test helper: a text-only training set and a tiny checkpoint trained on it through the real Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

INSTRUCTION = "Find the sentence that answers the question."
TOPICS = [
    ("what colour is the car", "The car is red.", ["The sky is blue.", "Dogs bark at night.", "Tea is hot."]),
    (
        "where does the cat sleep",
        "The cat sleeps on the sofa.",
        ["Rain falls in spring.", "He reads a book."],
    ),
    ("who wrote the letter", "Anna wrote the letter.", ["The train is late.", "Bread is baked daily."]),
    ("when does the shop open", "The shop opens at nine.", ["Fish swim in the sea.", "The road is long."]),
    ("how tall is the tower", "The tower is fifty metres tall.", ["Apples are sweet.", "Snow is cold."]),
    ("why is the road closed", "The road is closed for repairs.", ["Birds sing loudly.", "Milk is white."]),
]


def write_text_groups(root: Path) -> Path:
    """A training root of six text query groups (1 positive, 2-3 hard negatives), one instruction."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "task": "toy",
            "instruction": INSTRUCTION,
            "query": {"text": query},
            "positives": [{"text": positive}],
            "hard_negatives": [{"text": text} for text in negatives],
        }
        for query, positive, negatives in TOPICS
    ]
    (root / "groups.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def fit_text_checkpoint(folder: Path, base: Path, train_root: Path, **module_kwargs) -> Path:
    """Two optimizer steps of LoRA r=4 (plus ``module_kwargs``) on ``train_root``; the checkpoint path."""
    from datamodules.datamodule import RerankDataModule
    from lightning_modules.reranker import RerankerModule
    from tests.helpers import cpu_trainer

    torch.manual_seed(0)
    module = RerankerModule(str(base), **{"lora_r": 4, "lr": 1e-2, "lm_head": "label_rows", **module_kwargs})
    data = RerankDataModule(
        model_name_or_path=str(base),
        train_root=str(train_root),
        num_negatives=2,
        batch_size=2,
        max_length=256,
    )
    trainer = cpu_trainer(folder, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    return path

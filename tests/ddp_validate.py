"""Helper script for tests/test_distributed.py: validate on 1 or 2 CPU processes and dump metrics.

Usage: python tests/ddp_validate.py MODEL_DIR DEMO_DIR OUT_JSON DEVICES
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from datamodules.datamodule import RerankDataModule  # noqa: E402
from experiments.eval_writer import EvalWriter  # noqa: E402
from lightning_modules.reranker import RerankerModule  # noqa: E402


def main() -> None:
    model_dir, demo_dir, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    data = RerankDataModule(
        model_name_or_path=model_dir,
        eval_root=f"{demo_dir}/mrb",
        eval_tasks=["stdlib-docs", "digits-t2i", "faces-it2t"],
        eval_top_k=8,
        max_length=512,
        min_pixels=3136,
        max_pixels=3136,
    )
    module = RerankerModule(model_dir, lora_r=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        default_root_dir=os.path.dirname(out),
        callbacks=[EvalWriter()],  # as the CLI: TREC runs of every rank's queries, written by rank 0
    )
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({k: float(v) for k, v in metrics.items()}, handle)


if __name__ == "__main__":
    main()

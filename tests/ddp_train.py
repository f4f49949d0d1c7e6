"""Helper script for tests/test_distributed.py: two SGD steps on one fixed global batch of 4 groups,
on 1 process or split over 2 DDP processes (gloo); dumps per-step global losses and final LoRA weights.

Usage: python tests/ddp_train.py MODEL_DIR DEMO_DIR OUT_PT DEVICES
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules.datamodule import RerankDataModule  # noqa: E402
from datamodules.stream import StreamBatch  # noqa: E402
from lightning_modules.reranker import RerankerModule  # noqa: E402


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().clone()
        if trainer.world_size > 1:  # each rank's loss is its groups' mean: the global mean averages them
            torch.distributed.all_reduce(loss)
            loss /= trainer.world_size
        self.losses.append(loss.item())


def rank_batch(model_dir: str, demo_dir: str, devices: int):
    """This process's share of the same 4 training groups (all 4 with one process), collated."""
    data = RerankDataModule(
        model_name_or_path=model_dir,
        train_root=f"{demo_dir}/train",
        num_negatives=3,
        batch_size=4,
        max_length=512,
        min_pixels=3136,
        max_pixels=3136,
    )
    data.setup("fit")
    groups = next(iter(data.train_stream)).groups  # the same 4 groups on every process
    rank = int(os.environ.get("LOCAL_RANK", 0))
    share = groups[rank * 4 // devices : (rank + 1) * 4 // devices]
    return data.encode_train(StreamBatch(0, 0, rank, share, ids=[], group_size=4))


def fit_two_steps(module, batch, devices: int, strategy, out: str):
    """Two optimizer steps on ``batch`` with ``strategy`` on ``devices`` CPU processes; the trainer
    and the recorded losses."""
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[recorder],
        default_root_dir=os.path.dirname(out),
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    return trainer, recorder


def main() -> None:
    model_dir, demo_dir, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    batch = rank_batch(model_dir, demo_dir, devices)
    L.seed_everything(0, verbose=False)
    module = RerankerModule(model_dir, lora_r=4, lora_dropout=0.0, lr=1e-2)
    for name, param in module.named_parameters():
        if "lora_B" in name:  # non-zero B so that both LoRA factors move in the first step
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(1))
    trainer, recorder = fit_two_steps(module, batch, devices, "ddp" if devices > 1 else "auto", out)
    if trainer.is_global_zero:
        lora = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        torch.save({"losses": recorder.losses, "lora": lora}, out)


if __name__ == "__main__":
    main()

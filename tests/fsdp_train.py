"""Helper script for tests/test_fsdp.py: two SGD steps on one fixed global batch of 4 groups, on 1
process or sharded over 2 CPU processes (gloo); LoRA, checkpointed micro-batches
(``pairs_per_forward``: the forward keeps no activations, backward recomputes) and the shared
prefix all on. Sharded: :class:`lightning_modules.sharding.ShardedRerankerModule` under
ModelParallelStrategy (FSDP2 ``fully_shard``; why not FSDPStrategy: that module's docstring).
Dumps per-step global losses and the final LoRA weights, and saves a checkpoint (``full``: one
file; ``sharded``: one shard per rank in a folder) for the export check.

Usage: python tests/fsdp_train.py MODEL_DIR DEMO_DIR OUT_PT DEVICES [full|sharded]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightning_modules.reranker import RerankerModule  # noqa: E402
from lightning_modules.sharding import ShardedRerankerModule  # noqa: E402
from tests.ddp_train import fit_two_steps, rank_batch  # noqa: E402


def strategy(devices: int, state_dict_type: str):
    """FSDP2 over ``devices`` CPU processes through Lightning's ModelParallelStrategy."""
    if devices == 1:
        return "auto"
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(
        data_parallel_size=devices,
        tensor_parallel_size=1,
        save_distributed_checkpoint=state_dict_type == "sharded",
        process_group_backend="gloo",
    )


def main() -> None:
    model_dir, demo_dir, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    state_dict_type = sys.argv[5] if len(sys.argv) > 5 else "full"
    torch.set_num_threads(1)
    batch = rank_batch(model_dir, demo_dir, devices)
    L.seed_everything(0, verbose=False)
    module = (ShardedRerankerModule if devices > 1 else RerankerModule)(
        model_dir, lora_r=4, lora_dropout=0.0, lr=1e-2, pairs_per_forward=2, objective="cl"
    )
    for name, param in module.named_parameters():
        if "lora_B" in name:  # non-zero B so that both LoRA factors move in the first step
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(1))
    trainer, recorder = fit_two_steps(module, batch, devices, strategy(devices, state_dict_type), out)
    checkpoint = os.path.join(os.path.dirname(out), "last.ckpt")
    trainer.save_checkpoint(checkpoint)
    if devices > 1:  # gather the shards (DTensors): every rank takes part
        lora = {n: p.detach().full_tensor() for n, p in module.named_parameters() if p.requires_grad}
    else:
        lora = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    if trainer.is_global_zero:
        torch.save({"losses": recorder.losses, "lora": lora, "checkpoint": checkpoint}, out)


if __name__ == "__main__":
    main()

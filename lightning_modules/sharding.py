"""Sharded training with torch FSDP2 (``fully_shard``) through Lightning's ModelParallelStrategy.

What it takes for rerank-lab's training step, found by running it on 2 CPU processes (gloo,
``tests/test_fsdp.py``; losses and LoRA weights equal the 1-process run to 1e-6):

- Decoder layers are the sharded units; the module itself is the root unit (embeddings, LM head,
  norms, the frozen vision tower, the objective). Not the vision blocks: a rank whose groups hold
  no image never runs the vision tower, and a sharded block would then wait forever for that
  rank's all-gather (a collective mismatch: gloo reports "Received data size doesn't match").
- The step runs through ``forward``: FSDP2 gathers the root's weights in the root's forward hooks,
  and Lightning calls ``training_step`` directly under this strategy.
- Layers stay gathered from their first forward to the optimizer step
  (``reshard_after_forward=False``, ``set_reshard_after_backward(False)``, resharded in
  ``on_before_optimizer_step``). The shared prefix's keys/values reach backward through the KV
  cache, not through a layer's forward output, so FSDP2's pre-backward hook (registered on those
  outputs) never gathers the layer again for the prefix's backward; resharding earlier fails with
  "setStorage: ... storage of size 0". Gradients and optimizer state stay sharded (ZeRO-2-like
  memory for the weights: the parameters of a LoRA run are frozen, so the saving that matters is
  the optimizer's and gradients' of full fine-tuning).
- Every rank must run the same number of layer forwards per step: equal groups per rank (the
  training stream gives every rank the same number of batches and groups of the same size).

Lightning's FSDP1 ``FSDPStrategy`` (``trainer/fsdp.yaml``) refuses a CPU ("The strategy `fsdp`
requires a GPU accelerator, but received `accelerator='cpu'`") and torch's FSDP1 itself needs an
accelerator ("FSDP needs a non-CPU accelerator device, but no accelerator device is detected"),
so this FSDP2 path is the one that is tested here; the GPU check (``make gpu-check``) runs it on
one CUDA device.

Checkpoints: with ``save_distributed_checkpoint=True`` each rank writes its shard into a folder
(torch.distributed.checkpoint); :func:`consolidate` turns it into the one-file checkpoint that
``export`` and a non-sharded resume read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from datamodules.batches import TrainBatch
from datamodules.files import atomic_write
from lightning_modules.reranker import RerankerModule


def decoder_layers(module: RerankerModule) -> list[torch.nn.Module]:
    """The transformer blocks of the language model (Qwen-VL layout or a plain causal LM)."""
    decoder = module.scorer.decoder
    language = getattr(decoder, "language_model", decoder)
    layers = getattr(language, "layers", None)
    if layers is None:
        raise ValueError(f"{type(decoder).__name__}: no decoder layers found to shard")
    return list(layers)


class ShardedRerankerModule(RerankerModule):
    """:class:`RerankerModule` for ``ModelParallelStrategy`` (FSDP2 over the data-parallel mesh)."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        if self.device_mesh is None:
            raise RuntimeError(
                "ShardedRerankerModule needs trainer.strategy ModelParallelStrategy, which gives it a device mesh"
            )
        mesh = self.device_mesh["data_parallel"]
        for layer in decoder_layers(self):
            fully_shard(layer, mesh=mesh, reshard_after_forward=False)
            layer.set_reshard_after_backward(False)
        fully_shard(self, mesh=mesh)

    def forward(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        return self(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        for layer in decoder_layers(self):
            if hasattr(layer, "reshard"):
                layer.reshard()  # the next step gathers the updated shards


def consolidate(folder: str | Path, out: str | Path) -> Path:
    """Write the sharded checkpoint ``folder`` (Lightning's distributed checkpoint: ``.distcp``
    shards + ``meta.pt``) as one checkpoint file ``out`` (atomically), as a 1-process run saves it.

    Raises:
        ValueError: ``folder`` is not a distributed checkpoint.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, out = Path(folder), Path(out)
    if not (folder / ".metadata").is_file():
        raise ValueError(f"{folder}: not a sharded checkpoint folder (no .metadata file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        shards = Path(scratch) / "shards.pt"
        dcp_to_torch_save(folder, shards)
        state = torch.load(shards, map_location="cpu", weights_only=True)
        meta = folder / "meta.pt"
        checkpoint = torch.load(meta, map_location="cpu", weights_only=True) if meta.is_file() else {}
        checkpoint["state_dict"] = state["state_dict"]
        optimizers = sorted(k for k in state if k.startswith("optimizer_"))
        if optimizers:
            checkpoint["optimizer_states"] = [state[k] for k in optimizers]
        atomic_write(out, lambda handle: torch.save(checkpoint, handle))
    return out

"""Sharded training on 2 CPU processes (gloo) with torch FSDP2 equals the 1-process run, and its
sharded checkpoint consolidates into one file that exports (lightning_modules/sharding.py).

Lightning's FSDPStrategy (FSDP1, ``trainer/fsdp.yaml``) cannot run here: Lightning refuses it on a
CPU and torch's FSDP1 needs an accelerator; the tests below check both refusals, so a release that
lifts them is noticed, and run FSDP2 through ModelParallelStrategy instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.sharding import consolidate

ROOT = Path(__file__).parent.parent


def _run(tiny_model_dir, demo_dir, out: Path, devices: int, checkpoint: str) -> None:
    """tests/fsdp_train.py on ``devices`` CPU processes; it writes its result to ``out``."""
    out.parent.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = Path(__file__).with_name("fsdp_train.py")
    args = [str(tiny_model_dir), str(demo_dir), str(out), str(devices), checkpoint]
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.distributed
def test_fsdp2_on_two_cpu_processes_equals_one_process_and_exports(tiny_model_dir, demo_dir, tmp_path):
    from lightning_modules.export import export
    from lightning_modules.inference import Reranker

    results = {}
    for devices, kind in ((1, "full"), (2, "sharded")):
        out = tmp_path / f"train-{devices}" / "state.pt"
        _run(tiny_model_dir, demo_dir, out, devices, kind)
        results[devices] = torch.load(out)
    single, double = results[1], results[2]
    assert len(single["losses"]) == 2 and single["losses"][1] != single["losses"][0]
    assert double["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert double["lora"].keys() == single["lora"].keys() and len(single["lora"]) > 10
    for name, value in single["lora"].items():
        torch.testing.assert_close(double["lora"][name], value, atol=1e-5, rtol=0, msg=name)
    # The sharded checkpoint: a folder of per-rank shards, consolidated into one file.
    folder = tmp_path / "train-2" / "last.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2
    merged = consolidate(folder, tmp_path / "merged.ckpt")
    checkpoint = torch.load(merged, weights_only=True)
    assert checkpoint["state_dict"].keys() == single["lora"].keys()
    for name, value in single["lora"].items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, atol=1e-5, rtol=0, msg=name)
    assert checkpoint["rerank_lab"]["base_model"] == str(tiny_model_dir)
    exported = export(merged, tmp_path / "export", min_pixels=3136, max_pixels=3136)
    scores = Reranker.from_pretrained(exported, device="cpu").score("a red square", ["red", "a blue circle"])
    assert len(scores) == 2 and all(s == s for s in scores)


def test_consolidate_reads_a_distributed_checkpoint_folder(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": {"a.lora_A": torch.arange(6.0).view(2, 3)}, "optimizer_0": {"state": {}}}
    dcp.save(state, checkpoint_id=tmp_path / "ckpt")
    torch.save({"epoch": 0, "rerank_lab": {"base_model": "x"}}, tmp_path / "ckpt" / "meta.pt")
    merged = torch.load(consolidate(tmp_path / "ckpt", tmp_path / "one.ckpt"), weights_only=True)
    assert merged["rerank_lab"] == {"base_model": "x"} and merged["epoch"] == 0
    torch.testing.assert_close(merged["state_dict"]["a.lora_A"], torch.arange(6.0).view(2, 3))
    with pytest.raises(ValueError, match="not a sharded checkpoint folder"):
        consolidate(tmp_path, tmp_path / "two.ckpt")


def test_lightning_fsdp1_refuses_a_cpu():
    """Why the CPU tests use FSDP2: the message users would see with trainer/fsdp.yaml on a CPU."""
    import lightning as L
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), logger=False)

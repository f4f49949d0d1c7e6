"""Shared fixtures: one thread, offline hub, a tiny Qwen2-VL and the demo benchmark built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from lightning_modules.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "qwen2_vl", family="qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from datamodules.demo import build_demo

    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo(out, seed=0)
    return out


@pytest.fixture
def umask_022():
    """Files written get the modes an ordinary umask gives (the test machine's umask may differ)."""
    old = os.umask(0o022)
    yield
    os.umask(old)

"""Checkpoints are read weights-only: a crafted file that would run code when unpickled is refused
(export, Lightning resume, load_from_checkpoint) and its code never runs; broken files get a clear
error naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lightning_modules.checkpoint_io import UnsafeCheckpointError, load_checkpoint
from lightning_modules.export import main as export_main
from lightning_modules.reranker import RerankerModule
from tests.helpers import cpu_trainer, fit_checkpoint, train_data


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """A checkpoint shaped like rerank-lab's whose unpickling would create ``marker``."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "crafted.ckpt"
    checkpoint = {
        "state_dict": {},
        "hyper_parameters": {"model_name_or_path": "x", "note": _Payload(marker)},
        "pytorch-lightning_version": "2.6.0",
    }
    torch.save(checkpoint, path)
    assert not marker.exists()
    return path, marker


def test_the_crafted_file_really_runs_code_when_fully_unpickled(crafted, tmp_path):
    path, marker = crafted
    torch.load(path, weights_only=False)  # what export did before: the payload runs
    assert marker.exists()


def test_export_refuses_a_crafted_checkpoint_and_runs_nothing(crafted, tmp_path, capsys):
    path, marker = crafted
    assert (
        export_main(["--ckpt", str(path), "--out", str(tmp_path / "out")]) == 2
    )  # bad input (the convention of experiments/commands.py)
    err = capsys.readouterr().err
    assert f"{path}: refused to load" in err and "builtins.open" in err.replace("io.open", "builtins.open")
    assert "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_resume_and_load_from_checkpoint_refuse_it_too(crafted, tiny_model_dir, demo_dir, tmp_path):
    path, marker = crafted
    with pytest.raises(pickle.UnpicklingError):
        RerankerModule.load_from_checkpoint(path)
    module = RerankerModule(str(tiny_model_dir), lora_r=4)
    trainer = cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(pickle.UnpicklingError):
        trainer.fit(module, datamodule=train_data(tiny_model_dir, demo_dir), ckpt_path=path)
    assert not marker.exists()


def test_real_checkpoints_load_weights_only_with_their_metadata(tiny_model_dir, demo_dir, tmp_path):
    checkpoint = load_checkpoint(fit_checkpoint(tmp_path, tiny_model_dir, demo_dir))
    assert checkpoint["hyper_parameters"]["model_name_or_path"] == str(tiny_model_dir)
    assert checkpoint["hyper_parameters"]["lora_r"] == 4
    assert checkpoint["rerank_lab"]["base_fingerprint"] and checkpoint["rerank_lab"]["trainable"]
    assert isinstance(checkpoint["rerank_lab"]["rng"], torch.Tensor)
    assert checkpoint["datamodule_hyper_parameters"]["max_length"] == 512
    assert checkpoint["optimizer_states"] and checkpoint["global_step"] == 2


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"hello, not a checkpoint", "not a readable PyTorch checkpoint"),
        ("truncated", "not a readable PyTorch checkpoint"),
        ("a list", "not a Lightning checkpoint"),
        ("no hparams", "holds no hyper_parameters"),
        (None, "no such checkpoint file"),
    ],
)
def test_broken_checkpoints_get_a_clear_error(content, reason, tmp_path, capsys):
    path = tmp_path / "broken.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, path)
        path.write_bytes(path.read_bytes()[:700])
    elif content == "a list":
        torch.save([1, 2], path)
    elif content == "no hparams":
        torch.save({"state_dict": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    assert export_main(["--ckpt", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {reason}" in err and "Traceback" not in err


def test_hyper_parameters_that_build_no_module_get_a_clear_error(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "odd.ckpt"
    hparams = {"model_name_or_path": str(tiny_model_dir), "lm_head": "sideways"}
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    assert export_main(["--ckpt", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: its hyper_parameters do not build a reranker" in err and "sideways" in err
    assert "Traceback" not in err


def test_resuming_the_cli_from_a_crafted_checkpoint_is_one_error_line(
    crafted, tiny_model_dir, demo_dir, tmp_path, capsys
):
    from tests.helpers import resume_error

    path, marker = crafted
    err = resume_error(tiny_model_dir, demo_dir, tmp_path / "runs", path, capsys)
    assert "refused to load" in err and str(path) in err and "Traceback" not in err
    assert not marker.exists()

"""Reading rerank-lab checkpoints without running code from them, and naming the base they need.

Every checkpoint a user hands to rerank-lab (``export --ckpt``) is read with torch's weights-only
unpickler: tensors and plain values only. rerank-lab's own checkpoints hold nothing else (trainable
weights, optimizer and scheduler states, loop and data positions, hyper-parameters as plain
values, the generator state as a byte tensor), so they load unchanged; a file that asks for any
other Python object is refused before it can run code. Training resumes (``fit --ckpt_path``) go
through Lightning, whose loader passes ``weights_only=None``; torch >= 2.6 then uses the same
weights-only unpickler (``tests/test_checkpoint_io.py`` checks both paths with a crafted file).

The base fingerprint identifies the frozen weights a checkpoint's trainable weights belong to, so
that export refuses to merge them into another base.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import pickle
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# ---- fingerprints ----------------------------------------------------------------------------


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights, named as in the plain model (LoRA layers seen through).

    LoRA parameters are left out and peft's ``.base_layer`` is removed from names, so a
    LoRA-injected model and the plain base give the same names and tensors.
    """
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = param
    return state


def base_fingerprint(model: nn.Module, samples: int = 4096) -> str | None:
    """A cheap, dtype-independent fingerprint of a base model's weights.

    Hashes every parameter's name, shape and ``samples`` evenly strided values rounded to bfloat16
    (so a float32 and a bfloat16 load of the same bf16 checkpoint agree). Seconds even for 7B.

    Args:
        model: the base model, optionally LoRA-injected by peft (see :func:`base_state`).
        samples: values sampled per parameter.

    Returns:
        Hex SHA-256, or ``None`` when a weight is not floating point (a quantized base).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(base_state(model).items()):
        if not tensor.is_floating_point():
            return None
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        sample = flat[::step][:samples].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def config_sha256(config) -> str:
    """SHA-256 of a model config's architecture (``to_dict`` without bookkeeping keys), sorted JSON."""
    volatile = {  # bookkeeping and run-time switches, not the architecture
        "transformers_version",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "architectures",
        "quantization_config",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if k not in volatile}
        return value

    text = json.dumps(clean(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---- loading --------------------------------------------------------------------------------


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects that only a full (code-running) unpickler could build."""


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without running code from it: torch's weights-only unpickler.

    rerank-lab checkpoints hold tensors and plain values only (dicts, lists, strings, numbers), so
    they load this way; a file that needs any other Python object is refused, never unpickled.

    Raises:
        UnsafeCheckpointError: the file asks for a Python object beyond tensors and plain values.
        ValueError: the file is missing, truncated, not a PyTorch checkpoint, or not a rerank-lab one.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err)
        found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|\n|$)", reason)
        detail = found.group(1).strip() if found else reason.splitlines()[0]
        if "Unsupported global" in detail or "Unsupported operand" in detail:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the file asks for a Python object beyond tensors and plain values "
                f"({detail.rstrip('.')}), and unpickling it could run code. rerank-lab reads checkpoints "
                "weights-only; export a checkpoint written by rerank-lab training"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    except Exception as err:  # truncated zip, garbage bytes, empty file: torch raises many kinds
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no data'}); "
            "is the file complete?"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict); was it written by rerank-lab?")
    if not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise ValueError(f"{path}: holds no hyper_parameters; was it written by rerank-lab training?")
    return checkpoint


def module_arguments(checkpoint: dict, where: str, module_class: type, **overrides) -> dict:
    """``module_class`` (the ``RerankerModule``) keyword arguments from a checkpoint's
    hyper-parameters, with ``overrides``.

    Keys the module does not take (LightningCLI's ``_instantiator`` / ``_class_path``, or keys of
    another rerank-lab version) are left out, the unknown ones with a warning. The class is passed
    in, not imported, because the module itself imports this file (for the base fingerprint).
    """
    accepted = set(inspect.signature(module_class).parameters)  # __init__'s, without self
    hparams = dict(checkpoint["hyper_parameters"])
    unknown = sorted(k for k in hparams if k not in accepted and not k.startswith("_"))
    if unknown:
        log.warning("%s: ignoring hyper-parameters this version does not know: %s", where, unknown)
    if not isinstance(hparams.get("model_name_or_path"), str):
        raise ValueError(
            f"{where}: hyper_parameters.model_name_or_path is missing; was it written by rerank-lab?"
        )
    return {**{k: v for k, v in hparams.items() if k in accepted}, **overrides}


# ---- what a training checkpoint holds -------------------------------------------------------------
def trim_to_trainable(module: nn.Module, checkpoint: dict, info: dict) -> None:
    """Keep only the trainable weights (LoRA, head rows, projection) in ``checkpoint`` and record,
    under ``rerank_lab``: ``info`` (base model and fingerprint), the trainable names, and the
    random-generator states, so that dropout masks after a resume match an uninterrupted run."""
    trainable = {name for name, param in module.named_parameters() if param.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
    checkpoint["rerank_lab"] = {
        **info,
        "trainable": sorted(trainable),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def check_trainable(checkpoint: dict) -> dict | None:
    """Refuse a checkpoint that lacks a trainable weight it lists; its ``rerank_lab`` record when it
    carries generator states to restore (:func:`restore_rng`), else ``None``."""
    info = checkpoint.get("rerank_lab", {})
    missing = set(info.get("trainable", [])) - set(checkpoint["state_dict"])
    if missing:
        raise ValueError(
            f"checkpoint lacks trainable weights {sorted(missing)[:3]}; was it written by rerank-lab?"
        )
    return info if "rng" in info else None


def restore_rng(info: dict) -> None:
    """Set the CPU (and, with the same device count, CUDA) generators saved by :func:`trim_to_trainable`."""
    torch.set_rng_state(info["rng"])
    cuda = info.get("cuda_rng")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)

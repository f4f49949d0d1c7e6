"""Export a trained reranker checkpoint as a plain Hugging Face folder that scores identically.

Command line (``rerank-lab export`` runs the same)::

    python -m lightning_modules.export --ckpt runs/<run>/checkpoints/last.ckpt --out exports/my-reranker
        [--dtype float32|bfloat16] [--max-length N] [--min-pixels N] [--max-pixels N]
        [--base BASE] [--trust-remote-code]

What it does, in order:

1. Reads the checkpoint weights-only (``checkpoint_io.load_checkpoint``: a file that needs any
   Python object beyond tensors and plain values is refused, never unpickled), builds the module
   from its hyper-parameters in float32 without quantization (a QLoRA adapter is merged into the
   full-precision base, the usual QLoRA export), with the base re-read from ``model_name_or_path``
   (or ``--base`` when it moved). Remote code runs only with ``--trust-remote-code``, whatever the
   checkpoint says.
2. Fingerprints that base *before* loading the checkpoint's weights into it (``lora_r: 0``,
   ``lm_head: full`` and ``train_merger`` train base tensors themselves) and compares it with the
   fingerprint recorded at training time (``rerank_lab.base_fingerprint``): a LoRA merged on
   another base silently ruins accuracy (docs/architecture.md §6, pitfall 8). Then loads the trained weights.
3. Scores a few fixed pairs (text and, for vision models, images on both sides) with the training
   module: the reference.
4. Merges every peft LoRA layer into its base weight and puts the base layer back in its place;
   folds the ``label_rows`` offset into the LM-head rows of the label tokens (untying the head from
   the input embeddings first when they are tied, so the embeddings stay the base's).
5. Writes ``save_pretrained`` safetensors weights + config, the base's tokenizer / image-processor /
   chat-template files with the export's pixel budget written into ``preprocessor_config.json``
   (checked: the plain image processor read from the folder resizes like rerank-lab),
   ``rerank_config.json`` (base model, base config hash and fingerprint, objective and its
   arguments, the score definition, label tokens, judge prompt, token and pixel budgets), the
   score head for the ``projection`` direction (``score_head.safetensors``) and a model card
   ``README.md`` (``export_folder``: Hub metadata, a rendered prompt and a plain-transformers
   scoring snippet that ``tests/test_export_card.py`` runs against ``Reranker``).
6. Loads the written folder through :class:`lightning_modules.inference.Reranker` and compares its
   scores with the reference: max |diff| <= 1e-4 or it raises (``ExportParityError``) and nothing
   is left at ``--out``. The measured difference is recorded in ``rerank_config.json``.

The folder is written next to ``--out`` under a temporary name and renamed at the end, so ``--out``
only ever holds a checked export, with ordinary modes (0755 folders, 0644 files under umask 022). An existing non-empty ``--out`` is refused (never overwritten).
With ``--dtype bfloat16`` the merge still runs in float32; the weights are rounded once when saved,
and the parity check then compares the folder with the same rounded weights (the rounding's own
effect on the scores is recorded as ``bf16_rounding_max_abs_diff``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from datamodules.encoding import SYSTEM_PROMPT, EncodedPair, PairEncoder
from datamodules.exit_codes import fail, program
from datamodules.files import staged_folder, write_json
from datamodules.formats import Doc
from lightning_modules.checkpoint_io import (
    base_fingerprint,
    config_sha256,
    load_checkpoint,
    module_arguments,
)
from lightning_modules.export_folder import (
    ExportParityError,
    check_image_processor,
    publish_modes,
    write_card,
    write_pixel_budget,
)
from lightning_modules.export_integrity import record_checksums
from lightning_modules.export_serve import (
    FORMATS,
    ServeFormatError,
    check_crossencoder,
    check_seq_cls,
    refusal,
    seq_cls_model,
    seq_cls_refusal,
    training_instruction,
    write_serving_files,
)
from lightning_modules.inference import DEFAULT_INSTRUCTION, RERANK_CONFIG, SCORE_HEAD, Reranker, as_doc
from lightning_modules.reranker import RerankerModule

log = logging.getLogger(__name__)

FORMAT = "rerank-lab/1"
PARITY_TOLERANCE = 1e-4
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
# Files the export writes itself; everything else in a local base folder is copied (tokenizer, chat
# template, image/video processor and processor configs, ...).
OWN_FILES = ("config.json", "generation_config.json", "README.md", RERANK_CONFIG)

PARITY_INSTRUCTION = "Find the document that matches the query."
PARITY_TEXTS = (
    ("a red car", "A red car parks near the house."),
    ("a dog on the grass", "The cat sits on a table."),
    ("how to open a zip file", "Read and write ZIP archives with the zipfile module."),
    ("two birds", "Two small birds sit in a tree at night, one of them looking at the sky."),
)


# ---- merging ---------------------------------------------------------------------------------


def merge_lora(model: nn.Module) -> int:
    """Merge every peft LoRA layer into its base weight and put the base layer back in its place.

    Returns:
        The number of LoRA layers merged.
    """
    from peft.tuners.lora import LoraLayer

    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in targets:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in vars(model):  # what inject_adapter_in_model left on the instance
            delattr(model, attribute)
    leftovers = [name for name, _ in model.named_parameters() if "lora_" in name]
    if leftovers:
        raise RuntimeError(f"LoRA weights remain after merging: {leftovers[:3]}")
    return len(targets)


def untie_lm_head(model: nn.Module) -> bool:
    """Give the LM head its own weight if it shares the input embeddings'. Returns whether it did."""
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if head.weight.data_ptr() != embeddings.weight.data_ptr():
        return False
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def fold_row_delta(model: nn.Module, token_ids: torch.Tensor, row_delta: torch.Tensor) -> bool:
    """Add the ``label_rows`` offset to the LM-head rows of the label tokens (untying first).

    Returns:
        Whether the head had to be untied from the input embeddings.
    """
    untied = untie_lm_head(model)
    head = model.get_output_embeddings()
    with torch.no_grad():
        rows = head.weight[token_ids].float() + row_delta.detach().float().to(head.weight.device)
        head.weight[token_ids] = rows.to(head.weight.dtype)
    return untied


# ---- scoring used by the checks ----------------------------------------------------------------


def parity_pairs(with_images: bool, min_pixels: int) -> list[tuple[str, Doc, Doc]]:
    """A few fixed (instruction, query, document) triples: text ones, plus image ones if asked."""
    triples = [(PARITY_INSTRUCTION, as_doc(q), as_doc(d)) for q, d in PARITY_TEXTS]
    if with_images:
        rng = np.random.default_rng(0)
        side = int(min_pixels**0.5) + 1
        small, wide = (
            Image.fromarray(rng.integers(0, 256, size=(side, side * width, 3), dtype=np.uint8))
            for width in (1, 2)
        )
        triples += [
            (PARITY_INSTRUCTION, as_doc({"image": small}), as_doc("a red car")),
            (PARITY_INSTRUCTION, as_doc("a red car"), as_doc({"image": wide})),
            (
                PARITY_INSTRUCTION,
                as_doc({"image": small, "text": "the same"}),
                as_doc({"image": wide, "text": "a"}),
            ),
        ]
    return triples


def encode_all(encoder: PairEncoder, triples: Sequence[tuple[str, Doc, Doc]]) -> list[EncodedPair]:
    """Encode (instruction, query, document) triples with ``encoder``."""
    return [
        encoder.encode(instruction, query, doc, where="parity pair") for instruction, query, doc in triples
    ]


@torch.no_grad()
def module_scores(module, pairs: Sequence[EncodedPair]) -> torch.Tensor:
    """Scores of encoded pairs by the training module (its own scoring path), one pair per forward."""
    return torch.cat([module.rank_pairs([pair]).float() for pair in pairs])


def score_kind(objective) -> str:
    """The name of the score an objective ranks by (``rerank_config.json`` ``score``)."""
    name = type(objective).__name__
    if name == "MixObjective":
        return score_kind(objective.terms[objective.score_term])
    if name == "UnifiedRerankingLoss":
        return {
            "sft": "yes_minus_no",
            "cl": "yes_logit",
            "multi_token": "multi_token_log_odds",
            "projection": "projection",
        }.get(objective.direction_name, objective.direction_name)
    return {"CLObjective": "yes_logit"}.get(name, "yes_minus_no")


# ---- export ----------------------------------------------------------------------------------


def output_folder(out: str | Path) -> Path:
    """``--out`` as the folder to create: a new path or an empty folder, never anything else.

    A symbolic link to an empty folder stands for that folder (the export replaces the empty target,
    the link keeps pointing at it); a link to anything else, or a dangling one, is refused.
    """
    out = Path(out)
    if out.is_symlink():
        target = out.resolve()
        if not target.is_dir() or any(target.iterdir()):
            raise FileExistsError(
                f"{out} is a symbolic link to {target}, which is not an empty folder; give a new folder "
                "(exports never overwrite)"
            )
        return target
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder (exports never overwrite)")
    return out


def _check_reranker(
    folder: Path, triples, expected: torch.Tensor, tolerance: float, trust_remote_code: bool
) -> float:
    """max |difference| between ``Reranker.from_pretrained(folder)`` and ``expected`` (raises above ``tolerance``)."""
    exported = Reranker.from_pretrained(
        folder,
        device="cpu",
        dtype="float32",
        prefix_cache=False,
        trust_remote_code=trust_remote_code,
        verify=False,
    )
    got = torch.tensor(exported.score_encoded(encode_all(exported.encoder, triples)))
    diff = float((got - expected).abs().max())
    if not diff <= tolerance:
        raise ExportParityError(
            f"the exported folder scores differ from the training module by up to {diff:.3e} "
            f"(> {tolerance:.0e}) on {len(triples)} pairs; nothing was written"
        )
    return diff


def check_format(fmt: str, hparams: dict, base: str, trust_remote_code: bool, where: str) -> None:
    """Refuse, before any weights load, a ``--format`` that cannot express the checkpoint's score or
    backbone (one line: why). The default format always exports; its sentence-transformers files are
    left out (and the card says why) for scores they cannot express."""
    if fmt not in FORMATS:
        raise ServeFormatError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "rerank-lab":
        return
    import objectives

    try:
        objective = objectives.build(
            hparams.get("objective", "sft"), hidden_size=8, **(hparams.get("objective_args") or {})
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: its objective does not build: {err}") from None
    reason = refusal(score_kind(objective))
    if reason is None:
        from transformers import AutoConfig

        try:
            base_config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ValueError(f"{where}: cannot read the config of its base {base!r} ({err})") from None
        vision = getattr(base_config, "vision_config", None) is not None
        reason = seq_cls_refusal(base_config.model_type, vision)
    if reason is not None:
        raise ServeFormatError(f"--format {fmt} refused for {where}: {reason}")


def _copy_base_files(base: str, staging: Path, encoder: PairEncoder) -> None:
    folder = Path(base)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            skip = path.name in OWN_FILES or path.name.endswith((*WEIGHT_SUFFIXES, ".index.json"))
            if path.is_file() and not skip and not (staging / path.name).exists():
                shutil.copyfile(path, staging / path.name)
    else:  # a hub id: write what the loaders give back
        encoder.tokenizer.save_pretrained(staging)
        if encoder.image_processor is not None:
            encoder.image_processor.save_pretrained(staging)


@dataclass(frozen=True)
class _Base:
    """The base an export merges into, as ``rerank_config.json`` records it."""

    name: str
    config_sha256: str
    fingerprint: str | None


def _build_module(
    ckpt: str | Path, checkpoint: dict, base: str | None, trust_remote_code: bool, fmt: str
) -> tuple[RerankerModule, str]:
    """Step 1: the module from the checkpoint's hyper-parameters (float32, no quantization) on ``base``
    (default: the recorded ``model_name_or_path``), once ``fmt`` is known to fit; returns it and the base."""
    if checkpoint["hyper_parameters"].get("trust_remote_code") and not trust_remote_code:
        raise ValueError(
            f"{ckpt}: its base was loaded with trust_remote_code, which runs code shipped with the base; "
            "pass --trust-remote-code if you trust it"
        )
    arguments = module_arguments(checkpoint, str(ckpt), RerankerModule, dtype="float32", quantization=None)
    arguments["trust_remote_code"] = trust_remote_code
    base = str(base or arguments["model_name_or_path"])
    arguments["model_name_or_path"] = base
    check_format(fmt, arguments, base, trust_remote_code, str(ckpt))
    try:
        return RerankerModule(**arguments), base
    except OSError as err:  # the base folder or hub id cannot be read
        raise ValueError(
            f"{ckpt}: cannot load its base {base!r} ({str(err).splitlines()[0]}); pass --base with the "
            "base model it was trained on"
        ) from None
    except (TypeError, ValueError) as err:  # hyper-parameters of the wrong type or value
        raise ValueError(f"{ckpt}: its hyper_parameters do not build a reranker: {err}") from None


def _load_weights(module: RerankerModule, checkpoint: dict, ckpt: str | Path, base: str) -> _Base:
    """Step 2: the base's identity against training's, then the trained weights loaded (module in eval mode).

    The identity is taken before the checkpoint's weights replace any of its tensors (``lora_r`` 0,
    ``lm_head`` full and ``train_merger`` train base weights themselves).
    """
    recorded = checkpoint.get("rerank_lab") or {}
    model = module.scorer.model
    fingerprint = base_fingerprint(model)
    if recorded.get("base_fingerprint") and fingerprint and recorded["base_fingerprint"] != fingerprint:
        raise ValueError(
            f"{ckpt} was trained on a base with fingerprint {recorded['base_fingerprint'][:16]}..., but "
            f"{base} now has {str(fingerprint)[:16]}...: the base changed since training; pass --base "
            "with the original base model"
        )
    config_hash = config_sha256(model.config)
    if recorded.get("base_config_sha256") and recorded["base_config_sha256"] != config_hash:
        raise ValueError(
            f"{ckpt}: the config of {base} changed since training; pass --base with the original base model"
        )
    module.on_load_checkpoint(checkpoint)
    try:
        result = module.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"{ckpt}: its weights do not fit {base}: {str(err).splitlines()[-1].strip()}"
        ) from None
    if result.unexpected_keys:
        raise ValueError(
            f"{ckpt}: holds weights the module built from its hyper-parameters lacks "
            f"({result.unexpected_keys[:3]}); was it written by this version of rerank-lab?"
        )
    module.eval()
    return _Base(base, config_hash, recorded.get("base_fingerprint") or fingerprint)


def _parity_encoder(
    base: str, data_hparams: dict, budgets: dict, trust_remote_code: bool
) -> tuple[PairEncoder, dict]:
    """Step 3's encoder: the base's, with the given token and pixel budgets (default: the training data's);
    returns it and the budgets it applies (``max_length``, ``min_pixels``, ``max_pixels``)."""
    budgets = {
        "max_length": budgets["max_length"] or data_hparams.get("max_length") or 3200,
        "min_pixels": budgets["min_pixels"] or data_hparams.get("min_pixels"),
        "max_pixels": budgets["max_pixels"] or data_hparams.get("max_pixels"),
    }
    encoder = PairEncoder.from_pretrained(
        base,
        trust_remote_code=trust_remote_code,
        **{k: v for k, v in budgets.items() if v is not None},
    )
    budgets.update(min_pixels=encoder.min_pixels, max_pixels=encoder.max_pixels)
    return encoder, budgets


def _merge(
    module: RerankerModule,
    pairs: Sequence[EncodedPair],
    reference: torch.Tensor,
    tolerance: float,
    dtype: str,
) -> tuple[dict, torch.Tensor, float | None]:
    """Step 4: LoRA merged into the base, the ``label_rows`` offset folded into the head, checked on ``pairs``.

    Returns:
        ``{"merged_layers", "untied"}``, the scores the folder must give (``reference``, or after the
        bfloat16 rounding the saved weights will carry) and that rounding's own difference (or None).
    """
    model = module.scorer.model
    merged = merge_lora(model)
    untied = False
    if module.scorer.row_delta is not None:
        untied = fold_row_delta(model, module.scorer.label_token_ids, module.scorer.row_delta)
        module.scorer.row_delta = None
    model.requires_grad_(False)
    merged_scores = module_scores(module, pairs)
    merge_diff = float((merged_scores - reference).abs().max())
    if not merge_diff <= tolerance:
        raise ExportParityError(f"merging changed the scores by up to {merge_diff:.3e} (> {tolerance:.0e})")
    expected, rounding_diff = reference, None
    if dtype == "bfloat16":
        model.to(torch.bfloat16).to(torch.float32)  # the rounding the saved weights will carry
        expected = module_scores(module, pairs)
        rounding_diff = float((expected - reference).abs().max())
    return {"merged_layers": merged, "untied": untied}, expected, rounding_diff


def _rerank_config(
    module: RerankerModule,
    encoder: PairEncoder,
    base: _Base,
    budgets: dict,
    dtype: str,
    merge: dict,
    parity: dict,
    instruction: str,
    fmt: str,
) -> dict:
    """``rerank_config.json`` before the folder is written (``parity``: pairs, tolerance, bf16 rounding)."""
    hparams = module.hparams
    objective = module.objective
    positive, negative = objective.label_tokens
    return {
        "format": FORMAT,
        "base_model": base.name,
        "base_config_sha256": base.config_sha256,
        "base_fingerprint": base.fingerprint,
        "objective": hparams.objective,
        "objective_args": dict(hparams.objective_args or {}),
        "score": score_kind(objective),
        "score_head": SCORE_HEAD if objective.state_dict() else None,
        "label_tokens": list(module.token_words),
        "label_token_ids": module.scorer.label_token_ids.tolist(),
        "positive_tokens": list(positive),
        "negative_tokens": list(negative),
        "system_prompt": encoder.system_prompt or SYSTEM_PROMPT,
        **budgets,
        "dtype": dtype,
        "lora": {"r": hparams.lora_r, "alpha": hparams.lora_alpha, "merged_layers": merge["merged_layers"]},
        "train_merger": bool(hparams.train_merger),
        "lm_head": {"mode": hparams.lm_head, "row_delta_folded": hparams.lm_head == "label_rows"},
        "lm_head_untied": merge["untied"],
        "parity": parity,
        "default_instruction": instruction,
        "layout": "seq-cls" if fmt == "seq-cls" else "causal-lm",
    }


def _write_folder(
    staging: Path, module: RerankerModule, encoder: PairEncoder, config: dict, triples, fmt: str
) -> str | None:
    """Step 5: weights, the base's files, pixel budget, score head and serving files into ``staging``;
    returns why the sentence-transformers files were left out (None: written)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = module.scorer.model
    model.to(torch.bfloat16 if config["dtype"] == "bfloat16" else torch.float32)
    if fmt == "seq-cls":
        classifier = seq_cls_model(model, config["label_token_ids"], config["score"], encoder.pad_token_id)
        classifier.save_pretrained(staging)
        del classifier
    else:
        model.save_pretrained(staging)
    _copy_base_files(config["base_model"], staging, encoder)
    write_pixel_budget(staging, encoder.min_pixels, encoder.max_pixels)
    check_image_processor(staging, encoder, triples)
    score_params = module.objective.state_dict()
    if score_params:
        from safetensors.torch import save_file

        save_file({k: v.detach().float().contiguous() for k, v in score_params.items()}, staging / SCORE_HEAD)
    instruction = config["default_instruction"]
    return write_serving_files(staging, config, encoder, instruction, seq_cls=fmt == "seq-cls")


def _check_folder(
    staging: Path, config: dict, triples, expected: torch.Tensor, trust_remote_code: bool, fmt: str
) -> None:
    """Step 6: the written folder, loaded from disk, scores like ``expected``; the differences go into
    ``config["parity"]`` (raises ExportParityError above its tolerance)."""
    tolerance = config["parity"]["tolerance"]
    if fmt == "seq-cls":
        config["parity"].update(check_seq_cls(staging, triples, expected, tolerance, config))
        return
    config["parity"]["max_abs_diff"] = _check_reranker(
        staging, triples, expected, tolerance, trust_remote_code
    )
    if config["sentence_transformers"]["written"]:
        config["parity"].update(check_crossencoder(staging, triples, expected, tolerance))


def export(
    ckpt: str | Path,
    out: str | Path,
    dtype: str = "float32",
    max_length: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    base: str | None = None,
    trust_remote_code: bool = False,
    fmt: str = "rerank-lab",
    instruction: str | None = None,
) -> Path:
    """Merge a rerank-lab checkpoint into a plain Hugging Face folder and check score parity.

    Args:
        ckpt: a checkpoint written by rerank-lab training (trainable weights + hparams).
        out: destination folder; must not exist or be empty.
        dtype: weights dtype of the export, ``float32`` (default) or ``bfloat16``.
        max_length: per-pair token cap recorded for inference (default: the training data's).
        min_pixels: per-image minimum pixels recorded (default: the training data's).
        max_pixels: per-image maximum pixels recorded (default: the training data's).
        tolerance: largest allowed |score difference| between the export and the module.
        base: the base model to merge into, when it moved since training (default: the checkpoint's
            ``model_name_or_path``); its weights must match the recorded fingerprint.
        trust_remote_code: allow code shipped with the base. Never taken from the checkpoint: a
            checkpoint trained with it needs this switch too.
        fmt: ``rerank-lab`` (default: the causal LM, also a sentence-transformers ``CrossEncoder``)
            or ``seq-cls`` (a one-label ``*ForSequenceClassification`` for vLLM / TEI / infinity);
            see :mod:`lightning_modules.export_serve`.
        instruction: the default instruction written into the chat template and the
            sentence-transformers prompt (default: the most frequent one of the training data, else
            ``inference.DEFAULT_INSTRUCTION``).

    Returns:
        The folder.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        UnsafeCheckpointError: the checkpoint needs more than the weights-only unpickler.
        ValueError: unreadable checkpoint, or the base read now is not the one it was trained on.
        ExportParityError: the exported folder does not score like the training module.
        ServeFormatError: ``fmt`` cannot express the checkpoint's score or backbone.
    """
    out = output_folder(out)
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"export dtype must be float32 or bfloat16, got {dtype!r}")
    checkpoint = load_checkpoint(ckpt)
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    module, base = _build_module(ckpt, checkpoint, base, trust_remote_code, fmt)
    instruction = instruction or training_instruction(data_hparams.get("train_root")) or DEFAULT_INSTRUCTION
    identity = _load_weights(module, checkpoint, ckpt, base)
    del checkpoint

    requested = {"max_length": max_length, "min_pixels": min_pixels, "max_pixels": max_pixels}
    encoder, budgets = _parity_encoder(base, data_hparams, requested, trust_remote_code)
    triples = parity_pairs(encoder.image_processor is not None, encoder.min_pixels)
    pairs = encode_all(encoder, triples)
    reference = module_scores(module, pairs)
    merge, expected, rounding_diff = _merge(module, pairs, reference, tolerance, dtype)

    parity = {"pairs": len(pairs), "tolerance": tolerance, "max_abs_diff": None}
    if rounding_diff is not None:
        parity["bf16_rounding_max_abs_diff"] = rounding_diff
    config = _rerank_config(module, encoder, identity, budgets, dtype, merge, parity, instruction, fmt)
    score_params = dict(module.objective.state_dict())
    with staged_folder(out, "partial") as staging:
        left_out = _write_folder(staging, module, encoder, config, triples, fmt)
        config["sentence_transformers"] = {"written": left_out is None, "why_not": left_out}
        if left_out is not None:
            log.warning("sentence-transformers files left out: %s", left_out)
        write_json(staging / RERANK_CONFIG, config)
        del module  # the export is checked from disk, with its own files
        _check_folder(staging, config, triples, expected, trust_remote_code, fmt)
        write_json(staging / RERANK_CONFIG, config)
        write_card(staging, config, encoder, score_params)
        record_checksums(staging)
        publish_modes(staging)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m lightning_modules.export``)."""
    parser = argparse.ArgumentParser(
        prog=program("lightning_modules.export"),
        description="Merge a rerank-lab checkpoint into a plain Hugging Face folder and check score parity.",
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by rerank-lab training")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="saved dtype")
    parser.add_argument(
        "--max-length", type=int, default=None, help="token cap per pair (default: training's)"
    )
    parser.add_argument(
        "--min-pixels", type=int, default=None, help="min pixels per image (default: training's)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="max pixels per image (default: training's)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=PARITY_TOLERANCE, help="max allowed score difference"
    )
    parser.add_argument(
        "--base",
        default=None,
        help="base model folder or hub id, if it moved since training (default: the checkpoint's)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow code shipped with the base model"
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        default="rerank-lab",
        choices=FORMATS,
        help="rerank-lab: the causal LM, also a sentence-transformers CrossEncoder (default); seq-cls: a "
        "one-label *ForSequenceClassification folder for vLLM / TEI / infinity",
    )
    parser.add_argument(
        "--instruction",
        default=None,
        help="default instruction of the CrossEncoder prompt and chat template (default: the training data's)",
    )
    args = parser.parse_args(argv)
    try:
        path = export(
            args.ckpt,
            args.out,
            args.dtype,
            args.max_length,
            args.min_pixels,
            args.max_pixels,
            args.tolerance,
            base=args.base,
            trust_remote_code=args.trust_remote_code,
            fmt=args.fmt,
            instruction=args.instruction,
        )
    except (FileExistsError, ValueError, ExportParityError) as err:
        return fail(err, ValueError)  # a bad checkpoint, base or --out: 2; failed score parity: 1
    parity = json.loads((path / RERANK_CONFIG).read_text(encoding="utf-8"))["parity"]
    crossencoder = parity.get("crossencoder_max_abs_diff")
    also = f", CrossEncoder {crossencoder:.2e}" if crossencoder is not None else ""
    print(f"exported {path} (score parity: max |diff| {parity['max_abs_diff']:.2e}{also})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

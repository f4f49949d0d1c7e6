"""Export a trained reranker checkpoint as a plain Hugging Face folder that scores identically.

Command line (``rerank-lab export`` runs the same)::

    python -m lightning_modules.export --ckpt runs/<run>/checkpoints/last.ckpt --out exports/my-reranker
        [--dtype float32|bfloat16] [--max-length N] [--min-pixels N] [--max-pixels N]

What it does, in order:

1. Loads the module from the trainable-only checkpoint (``RerankerModule.load_from_checkpoint``;
   the frozen base is re-read from ``hparams.model_name_or_path``) in float32 and without
   quantization (a QLoRA adapter is merged into the full-precision base, the usual QLoRA export).
   If the checkpoint recorded a fingerprint of its base (``rerank_lab.base_fingerprint``), the base
   read now must match it, else the export stops: a LoRA merged on another base silently ruins
   accuracy (peers.md complaint 11).
2. Scores a few fixed pairs (text and, for vision models, images on both sides) with the training
   module: the reference.
3. Merges every peft LoRA layer into its base weight and puts the base layer back in its place;
   folds the ``label_rows`` offset into the LM-head rows of the label tokens (untying the head from
   the input embeddings first when they are tied, so the embeddings stay the base's).
4. Writes ``save_pretrained`` safetensors weights + config, the base's tokenizer / image-processor /
   chat-template files, ``rerank_config.json`` (base model id, base config hash and fingerprint,
   objective and its arguments, the score definition, label tokens, judge prompt, token and pixel
   budgets), the score head for the ``projection`` direction (``score_head.safetensors``: the
   objective's parameters) and a model card ``README.md``.
5. Loads the written folder through :class:`lightning_modules.inference.Reranker` and compares its
   scores with the reference: max |diff| <= 1e-4 or it raises (``ExportParityError``) and nothing
   is left at ``--out``. The measured difference is recorded in ``rerank_config.json``.

The folder is written next to ``--out`` under a temporary name and renamed at the end, so ``--out``
only ever holds a checked export. An existing non-empty ``--out`` is refused (never overwritten).
With ``--dtype bfloat16`` the merge still runs in float32; the weights are rounded once when saved,
and the parity check then compares the folder with the same rounded weights (the rounding's own
effect on the scores is recorded as ``bf16_rounding_max_abs_diff``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from datamodules.formats import Doc
from lightning_modules.encoding import SYSTEM_PROMPT, EncodedPair, PairEncoder
from lightning_modules.inference import RERANK_CONFIG, SCORE_HEAD, Reranker, as_doc

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


class ExportParityError(RuntimeError):
    """The exported folder does not score like the training module."""


# ---- fingerprints ----------------------------------------------------------------------------


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights, named as in the plain model (LoRA layers seen through).

    LoRA parameters are left out and peft's ``.base_layer`` is removed from names, so a
    LoRA-injected model and the plain base give the same names and tensors.
    """
    state = {}
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
def module_scores(module, pairs: Sequence[EncodedPair], encoder: PairEncoder) -> torch.Tensor:
    """Scores of encoded pairs by the training module (its own scoring path), one pair per forward."""
    scores = []
    for pair in pairs:
        logits, extra = module.score_pairs(encoder.collate([pair]))
        extra = {k: v.unsqueeze(0) for k, v in extra.items()}
        scores.append(module.objective.score(logits.unsqueeze(0), **extra)[0].float())
    return torch.cat(scores)


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


SCORE_TEXT = {
    "yes_minus_no": "z_yes - z_no: the difference of the `yes` and `no` logits at the answer position",
    "yes_logit": "z_yes: the `yes` logit at the answer position",
    "multi_token_log_odds": (
        "logsumexp of the positive label-token logits minus logsumexp of the negative ones"
    ),
    "projection": "w . h + b: a learned linear score on the last hidden state (`score_head.safetensors`)",
}


# ---- export ----------------------------------------------------------------------------------


def _copy_base_files(base: str, staging: Path, encoder: PairEncoder) -> None:
    folder = Path(base)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            skip = path.name in OWN_FILES or path.name.endswith((*WEIGHT_SUFFIXES, ".index.json"))
            if path.is_file() and not skip and not (staging / path.name).exists():
                shutil.copy2(path, staging / path.name)
    else:  # a hub id: write what the loaders give back
        encoder.tokenizer.save_pretrained(staging)
        if encoder.image_processor is not None:
            encoder.image_processor.save_pretrained(staging)


def _model_card(config: dict, merged: int, untied: bool) -> str:
    score = config["score"]
    args = json.dumps(config["objective_args"] or {})
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-ranking",
        f"base_model: {config['base_model']}",
        "tags: [reranker, rerank-lab]",
        "---",
        "",
        "# Reranker exported by rerank-lab",
        "",
        f"- **Base model:** `{config['base_model']}` (config sha256 `{config['base_config_sha256'][:16]}...`)",
        f"- **Objective:** `{config['objective']}` with `{args}`",
        f"- **Score:** `{score}`: {SCORE_TEXT.get(score, score)}; higher means more relevant.",
        f"- **Label tokens:** {', '.join(f'`{w}`' for w in config['label_tokens'])}",
        f"- **LoRA:** {merged} layers merged into the base weights; no adapter is needed."
        + (
            " The LM head was untied from the input embeddings to fold in the label-row offset."
            if untied
            else ""
        ),
        f"- **Budgets:** max_length {config['max_length']} tokens per pair, "
        f"{config['min_pixels']}-{config['max_pixels']} pixels per image.",
        f"- **Parity:** max |score difference| to the training module {config['parity']['max_abs_diff']:.2e} "
        f"on {config['parity']['pairs']} pairs (tolerance {config['parity']['tolerance']:.0e}).",
        "",
        "## Prompt",
        "",
        "System turn:",
        "",
        f"> {config['system_prompt']}",
        "",
        "User turn: `<Instruct>: {instruction}` `<Query>:` [query image] [query text] `\\n<Document>:` "
        "[document image] [document text]; then the assistant generation prompt. The score is read at "
        "the last input position (the answer position).",
        "",
        "## Use",
        "",
        "```python",
        "from lightning_modules.inference import Reranker  # pip install rerank-lab",
        "",
        'reranker = Reranker.from_pretrained("<this folder>", dtype="float32")',
        'reranker.rank("a red car", ["A red car parks.", {"image": "photo.png"}], instruction="...")',
        "```",
        "",
        "Without rerank-lab: load with `AutoModelForImageTextToText.from_pretrained` (plain weights),",
        "render the prompt above with the tokenizer's chat template, left-pad, and compute the score at",
        (
            "the last position from the last hidden state with the linear head in `score_head.safetensors`."
            if score == "projection"
            else f"the last position from the logits of {', '.join(f'`{w}`' for w in config['label_tokens'])}."
        ),
        "",
    ]
    return "\n".join(lines)


def export(
    ckpt: str | Path,
    out: str | Path,
    dtype: str = "float32",
    max_length: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
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

    Returns:
        The folder.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        ValueError: the base read now is not the base the checkpoint was trained on.
        ExportParityError: the exported folder does not score like the training module.
    """
    from lightning_modules.reranker import RerankerModule

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder (exports never overwrite)")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"export dtype must be float32 or bfloat16, got {dtype!r}")
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    recorded = checkpoint.get("rerank_lab", {})
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    del checkpoint

    module = RerankerModule.load_from_checkpoint(ckpt, map_location="cpu", dtype="float32", quantization=None)
    module.eval()
    hparams = module.hparams
    base = str(hparams.model_name_or_path)
    model = module.scorer.model
    fingerprint = base_fingerprint(model)
    if recorded.get("base_fingerprint") and recorded["base_fingerprint"] != fingerprint:
        raise ValueError(
            f"{ckpt} was trained on a base with fingerprint {recorded['base_fingerprint'][:16]}..., but "
            f"{base} now has {str(fingerprint)[:16]}...: the base changed since training; point "
            "model_name_or_path at the original base before exporting"
        )
    config_hash = config_sha256(model.config)
    if recorded.get("base_config_sha256") and recorded["base_config_sha256"] != config_hash:
        raise ValueError(f"{ckpt}: the config of {base} changed since training; export it against that base")

    budgets = {
        "max_length": max_length or data_hparams.get("max_length") or 3200,
        "min_pixels": min_pixels or data_hparams.get("min_pixels"),
        "max_pixels": max_pixels or data_hparams.get("max_pixels"),
    }
    encoder = PairEncoder.from_pretrained(
        base,
        trust_remote_code=hparams.trust_remote_code,
        **{k: v for k, v in budgets.items() if v is not None},
    )
    budgets.update(min_pixels=encoder.min_pixels, max_pixels=encoder.max_pixels)
    triples = parity_pairs(encoder.image_processor is not None, encoder.min_pixels)
    pairs = encode_all(encoder, triples)
    reference = module_scores(module, pairs, encoder)

    merged = merge_lora(model)
    untied = False
    if module.scorer.row_delta is not None:
        untied = fold_row_delta(model, module.scorer.label_token_ids, module.scorer.row_delta)
        module.scorer.row_delta = None
    model.requires_grad_(False)
    merged_scores = module_scores(module, pairs, encoder)
    merge_diff = float((merged_scores - reference).abs().max())
    if not merge_diff <= tolerance:
        raise ExportParityError(f"merging changed the scores by up to {merge_diff:.3e} (> {tolerance:.0e})")
    expected, rounding_diff = reference, None
    if dtype == "bfloat16":
        model.to(torch.bfloat16).to(torch.float32)  # the rounding the saved weights will carry
        expected = module_scores(module, pairs, encoder)
        rounding_diff = float((expected - reference).abs().max())

    objective = module.objective
    score_params = dict(objective.state_dict())
    config = {
        "format": FORMAT,
        "base_model": base,
        "base_config_sha256": config_hash,
        "base_fingerprint": fingerprint,
        "objective": hparams.objective,
        "objective_args": dict(hparams.objective_args or {}),
        "score": score_kind(objective),
        "score_head": SCORE_HEAD if score_params else None,
        "label_tokens": list(module.token_words),
        "label_token_ids": module.scorer.label_token_ids.tolist(),
        "system_prompt": encoder.system_prompt or SYSTEM_PROMPT,
        **budgets,
        "dtype": dtype,
        "lora": {"r": hparams.lora_r, "alpha": hparams.lora_alpha, "merged_layers": merged},
        "lm_head": {"mode": hparams.lm_head, "row_delta_folded": hparams.lm_head == "label_rows"},
        "parity": {"pairs": len(pairs), "tolerance": tolerance, "max_abs_diff": None},
    }
    if rounding_diff is not None:
        config["parity"]["bf16_rounding_max_abs_diff"] = rounding_diff

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        model.save_pretrained(staging)
        _copy_base_files(base, staging, encoder)
        if score_params:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().float().contiguous() for k, v in score_params.items()}, staging / SCORE_HEAD
            )
        (staging / RERANK_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

        del module, model, objective  # the export is checked from disk, with its own files
        exported = Reranker.from_pretrained(staging, device="cpu", dtype="float32", prefix_cache=False)
        got = torch.tensor(exported.score_encoded(encode_all(exported.encoder, triples)))
        diff = float((got - expected).abs().max())
        if not diff <= tolerance:
            raise ExportParityError(
                f"the exported folder scores differ from the training module by up to {diff:.3e} "
                f"(> {tolerance:.0e}) on {len(pairs)} pairs; nothing was written to {out}"
            )
        config["parity"]["max_abs_diff"] = diff
        (staging / RERANK_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_model_card(config, merged, untied), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m lightning_modules.export``)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.export",
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
    args = parser.parse_args(argv)
    try:
        path = export(
            args.ckpt, args.out, args.dtype, args.max_length, args.min_pixels, args.max_pixels, args.tolerance
        )
    except (FileExistsError, ValueError, ExportParityError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    config = json.loads((path / RERANK_CONFIG).read_text(encoding="utf-8"))
    print(f"exported {path} (score parity: max |diff| {config['parity']['max_abs_diff']:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

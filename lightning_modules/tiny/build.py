"""``build_tiny`` (tokenizer + random model + image processor into one folder) and its command line."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
from collections.abc import Iterator, Sequence

from datamodules.exit_codes import fail, program
from datamodules.files import check_new_folder, staged_folder
from lightning_modules.tiny.model import FAMILIES, build_config, build_image_processor, family_spec
from lightning_modules.tiny.tokenizer import build_tokenizer


def build_tiny(out_dir: str | pathlib.Path, family: str = "qwen2_vl", seed: int = 0) -> pathlib.Path:
    """Write a tiny random model + tokenizer + image processor as a Hugging Face folder.

    Args:
        out_dir: Destination folder: missing or empty (nothing is overwritten). It appears whole, when
            every file is written (``datamodules.files.staged_folder``).
        family: One of :data:`FAMILIES`.
        seed: Seed for the random weights. The same seed gives a byte-identical
            ``model.safetensors``.

    Returns:
        The folder path.

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.
        FileExistsError: ``out_dir`` exists and is not an empty folder.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    family_spec(family)
    out = pathlib.Path(out_dir)
    check_new_folder(out)

    tokenizer = build_tokenizer()
    config = build_config(family, tokenizer)
    # Seed a private generator state: the caller's global RNG is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        raise RuntimeError("LM head is tied to the input embeddings; expected untied weights")
    # Mirrors the Instruct checkpoints: either <|im_end|> or <|endoftext|> ends a reply.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
    )
    with staged_folder(out, "building") as staging:
        with _no_progress_bars():
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        build_image_processor(family).save_pretrained(staging)
    return out


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (a one-shard "Writing model shards" bar is just noise)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog=program("lightning_modules.tiny"),
        description="Write a tiny randomly initialised Qwen-VL checkpoint folder that loads offline.",
    )
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="model family")
    parser.add_argument("--seed", default=0, type=int, help="seed of the random weights")
    args = parser.parse_args(argv)
    try:
        path = build_tiny(args.out, family=args.family, seed=args.seed)
    except (FileExistsError, ValueError) as err:  # a taken --out: one line, exit code 2
        return fail(err, ValueError)
    print(path)
    return 0

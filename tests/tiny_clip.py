"""A tiny randomly initialised CLIP (text + vision towers, byte-level tokenizer, PIL image processor) saved
as a plain Hugging Face folder, which sentence-transformers loads as a text + image embedder offline."""

from __future__ import annotations

from pathlib import Path

import torch


def build_clip(out: Path, seed: int = 0) -> Path:
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # every byte, inside and at the end of a word
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"{char}</w>", len(vocab))
    tower = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 64, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "image_size": 32, "patch_size": 16},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(
        image_processor=image_processor, tokenizer=CLIPTokenizer(vocab=vocab, merges=[])
    ).save_pretrained(out)
    return out

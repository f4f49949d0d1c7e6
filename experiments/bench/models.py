"""Model architectures of the speed benchmark, and how config-only folders become random models.

CPU: ``scaled2b`` (the headline) is Qwen2-VL-2B's proportions scaled down (hidden 256, 4 layers,
the tiny tokenizer's vocabulary): the LM head is 0.18 of the decoder's FLOPs as in the real 2B
(7B: 0.08) and the vision tower ~0.4x the decoder, so the FLOP saving of label-row scoring and the
vision share are honest; ``vocab152k`` has Qwen's real 151,936-row vocabulary on a hidden-256
decoder (head 33x the decoder), so full-vocabulary logits cost their real bytes per token (its
speed-ups overstate and are not the headline). ``tiny`` is the tiny checkpoint of
``lightning_modules.tiny`` loaded from disk. CUDA: real-size Qwen2-VL-2B, Qwen2.5-VL-3B and
Qwen2.5-VL-7B architectures from the published config values, random weights, bf16, SDPA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


# Real-size architectures (from the published configs), built with random weights on CUDA.
_QWEN2_VL_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


_QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


ARCHS: dict[str, dict[str, Any]] = {
    # CPU: the tiny model from disk, and a real-vocabulary model built from config.
    "tiny": {"family": "qwen2_vl", "from_disk": True},
    "vocab152k": {
        "family": "qwen2_vl",
        "methods": ("rerank-lab", "naive"),  # checkpointing does not change the head's cost
        "text": {
            "vocab_size": 151936,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [8, 12, 12],
        },
        "vision": {"hidden_size": 256},
    },
    # Qwen2-VL-2B's proportions scaled down: LM head ÷ decoder FLOPs 0.18 (2B: 0.18), vision tower
    # ~0.4x the decoder's parameters, logits ~10% of a token's activation memory.
    "scaled2b": {
        "family": "qwen2_vl",
        "text": {
            "hidden_size": 256,
            "intermediate_size": 1152,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [8, 12, 12],
        },
        "vision": {"depth": 4, "embed_dim": 192, "num_heads": 4, "mlp_ratio": 4, "hidden_size": 256},
    },
    # CUDA: real shapes.
    "qwen2_vl_2b": {
        "family": "qwen2_vl",
        "tied": True,
        "text": {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_VL_VISION, "hidden_size": 1536},
    },
    "qwen2_5_vl_3b": {
        "family": "qwen2_5_vl",
        "tied": True,
        "text": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 2048},
    },
    "qwen2_5_vl_7b": {
        "family": "qwen2_5_vl",
        "text": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 3584},
    },
}


def arch_config(name: str, tokenizer) -> Any:
    """The model config of an architecture in :data:`ARCHS`, with the token ids of ``tokenizer``."""
    from transformers import AutoConfig

    from lightning_modules.tiny import build_config

    spec = ARCHS[name]
    base = build_config(spec["family"], tokenizer).to_dict()
    text = dict(spec.get("text", {}))
    mrope = text.pop("mrope_section", None)
    base["text_config"].update(text)
    base["text_config"].pop("layer_types", None)  # derived from num_hidden_layers again
    if mrope is not None:
        base["text_config"]["rope_parameters"]["mrope_section"] = mrope
        base["text_config"].pop("head_dim", None)
    base["vision_config"].update(spec.get("vision", {}))
    if spec.get("tied"):  # the 2B and 3B checkpoints share the LM head with the input embeddings
        base["tie_word_embeddings"] = base["text_config"]["tie_word_embeddings"] = True
    model_type = base.pop("model_type")
    return AutoConfig.for_model(model_type, **base)


def prepare_arch(name: str, folder: Path, tiny_dir: Path | None, image_side: int) -> Path:
    """A model folder for ``name``: the tiny checkpoint itself, or config + tokenizer + processor.

    Config-only folders are turned into randomly initialised models by :func:`random_backbone`.
    """
    from lightning_modules.tiny import build_image_processor, build_tiny, build_tokenizer

    spec = ARCHS[name]
    if spec.get("from_disk"):
        return tiny_dir if tiny_dir is not None else build_tiny(folder / name, spec["family"])
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    arch_config(name, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor = build_image_processor(spec["family"])
    pixels = image_side * image_side
    processor.size = {"shortest_edge": min(pixels, processor.size["shortest_edge"]), "longest_edge": pixels}
    processor.save_pretrained(out)
    return out


def random_backbone(name_or_path: str, dtype: str = "float32", *args, **kwargs):
    """Stand-in for ``load_backbone`` on config-only folders: the architecture, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lightning_modules.backbone import DTYPES, load_backbone

    if (Path(name_or_path) / "model.safetensors").exists() or (
        Path(name_or_path) / "model.safetensors.index.json"
    ).exists():
        return load_backbone(name_or_path, dtype, *args, **kwargs)
    config = AutoConfig.from_pretrained(name_or_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(
            config, dtype=DTYPES[dtype], attn_implementation="sdpa"
        )
    return model


def use_random_backbones() -> None:
    """Route rerank-lab's loaders to :func:`random_backbone` (config-only folders only)."""
    import lightning_modules.inference as inference
    import lightning_modules.reranker as reranker

    reranker.load_backbone = random_backbone
    inference.load_backbone = random_backbone


def flop_params(model) -> int:
    """Parameters doing matmul work per token: everything but the embedding table and the LM head."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for n, p in model.named_parameters() if id(p) not in skip and "lora_" not in n)


def peak_flops() -> float:
    """Peak dense bf16 FLOP/s of the current CUDA device (by name; H100 SXM 989e12 by default)."""
    import torch

    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), 989e12)


def head_ratio(arch: str, folder: Path) -> float:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder).get_text_config()
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    decoder = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    return round(hidden * config.vocab_size / decoder, 3)

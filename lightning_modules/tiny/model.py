"""The tiny model's per-family settings: sizes, image processor and ``transformers`` config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


# CLIP statistics, used by the Qwen2-VL and Qwen2.5-VL image processors.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 128
VISION_DEPTH = 2
VISION_HIDDEN = 32
VISION_HEADS = 2
VISION_INTERMEDIATE = 64


@dataclass(frozen=True)
class FamilySpec:
    """What differs between the three families.

    Attributes:
        patch_size: Real ViT patch size of the family (14, or 16 for Qwen3-VL).
        temporal_patch_size: Frames per temporal patch (2 in all families).
        merge_size: Spatial merge size (2x2 patches become one LLM token).
        image_mean: Real normalisation mean of the family's image processor.
        image_std: Real normalisation std of the family's image processor.
        mrope_section: Multimodal-RoPE split (T, H, W) of ``head_dim / 2`` frequency pairs, scaled
            down from the real one.
        rope_theta: Real RoPE base.
        max_position_embeddings: Real context length (only metadata at this size).
    """

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    mrope_section: tuple[int, int, int]
    rope_theta: float
    max_position_embeddings: int


FAMILY_SPECS: dict[str, FamilySpec] = {
    # Real head_dim 128 splits as [16, 24, 24]; our head_dim 16 keeps the ratio: [2, 3, 3].
    "qwen2_vl": FamilySpec(14, 2, 2, _CLIP_MEAN, _CLIP_STD, (2, 3, 3), 1_000_000.0, 32768),
    "qwen2_5_vl": FamilySpec(14, 2, 2, _CLIP_MEAN, _CLIP_STD, (2, 3, 3), 1_000_000.0, 128000),
    # Qwen3-VL interleaves T/H/W over [24, 20, 20]; [4, 2, 2] keeps "H and W interleaved, T takes
    # the tail" on 8 pairs.
    "qwen3_vl": FamilySpec(16, 2, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (4, 2, 2), 5_000_000.0, 262144),
}


def pixel_limits(family: str) -> tuple[int, int]:
    """Smallest and largest pixel count the tiny image processor resizes to.

    Args:
        family: One of :data:`FAMILIES`.

    Returns:
        ``(min_pixels, max_pixels)``: 4 and 64 merged tokens' worth of pixels, i.e.
        ``4 * f * f`` and ``64 * f * f`` with ``f = patch_size * merge_size`` (28, or 32 for
        Qwen3-VL).
    """
    spec = family_spec(family)
    factor = spec.patch_size * spec.merge_size
    return 4 * factor * factor, 64 * factor * factor


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family``; ValueError naming the known families otherwise."""
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILY_SPECS[family]


def build_image_processor(family: str) -> Any:
    """Build the family's image processor with small pixel limits.

    The PIL-backend class is used to build and save it. The saved ``preprocessor_config.json``
    names the backend-neutral ``Qwen2VLImageProcessor`` type (as real checkpoints do), and
    ``AutoImageProcessor`` then picks the PIL class when torchvision is missing.

    Args:
        family: One of :data:`FAMILIES`.

    Returns:
        A ``Qwen2VLImageProcessorPil``.
    """
    from transformers import Qwen2VLImageProcessorPil

    spec = family_spec(family)
    min_pixels, max_pixels = pixel_limits(family)
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.merge_size,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
    )


def build_config(family: str, tokenizer: Any) -> Any:
    """Tiny model config for a family, with token ids taken from ``tokenizer``.

    Args:
        family: One of :data:`FAMILIES`.
        tokenizer: The tokenizer from :func:`build_tokenizer`.

    Returns:
        A ``Qwen2VLConfig``, ``Qwen2_5_VLConfig`` or ``Qwen3VLConfig``.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    spec = family_spec(family)
    tok_id = tokenizer.convert_tokens_to_ids
    head_dim = TEXT_HIDDEN // TEXT_HEADS
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": spec.rope_theta,
        "mrope_section": list(spec.mrope_section),
    }
    if sum(spec.mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": spec.max_position_embeddings,
        "rope_parameters": rope,
        "bos_token_id": tok_id("<|endoftext|>"),
        "eos_token_id": tok_id("<|im_end|>"),
        "pad_token_id": tok_id("<|endoftext|>"),
        # The composite config copies a tied text_config up to the root (v4 compatibility), so
        # untying must be said here too; real 3B+ checkpoints have a separate LM head.
        "tie_word_embeddings": False,
    }
    common: dict[str, Any] = {
        "depth": VISION_DEPTH,
        "num_heads": VISION_HEADS,
        "in_channels": 3,
        "patch_size": spec.patch_size,
        "temporal_patch_size": spec.temporal_patch_size,
        "spatial_merge_size": spec.merge_size,
    }
    if family == "qwen2_vl":
        vision = {**common, "embed_dim": VISION_HIDDEN, "mlp_ratio": 2, "hidden_size": TEXT_HIDDEN}
        config_class: Any = Qwen2VLConfig
    elif family == "qwen2_5_vl":
        vision = {
            **common,
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": VISION_INTERMEDIATE,
            "out_hidden_size": TEXT_HIDDEN,
            # Real: window attention everywhere except a few full-attention blocks; keep one of each.
            "window_size": 112,
            "fullatt_block_indexes": [VISION_DEPTH - 1],
            "tokens_per_second": 2,
        }
        config_class = Qwen2_5_VLConfig
    else:
        text["head_dim"] = head_dim
        rope["mrope_interleaved"] = True
        vision = {
            **common,
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": VISION_INTERMEDIATE,
            "out_hidden_size": TEXT_HIDDEN,
            # A learned 2-D position table (interpolated to each grid); must be a square number.
            "num_position_embeddings": 576,
            # One deepstack tap, so the deepstack injection path runs as in the real model.
            "deepstack_visual_indexes": [0],
        }
        config_class = Qwen3VLConfig
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=tok_id("<|image_pad|>"),
        video_token_id=tok_id("<|video_pad|>"),
        vision_start_token_id=tok_id("<|vision_start|>"),
        vision_end_token_id=tok_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    return config

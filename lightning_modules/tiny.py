"""Tiny, randomly initialised Qwen-VL checkpoints that load offline exactly like real ones.

Nothing can be downloaded from the model hub on the machines this project is tested on, yet the
model path must be exercised through the very code used for real checkpoints. This module writes
a normal Hugging Face folder (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``,
``preprocessor_config.json``) holding:

- a byte-level BPE tokenizer trained here, deterministically, on Python standard-library
  docstrings plus a fixed word list, wrapped as ``Qwen2Tokenizer`` with the Qwen special tokens
  (in Qwen's order) and a Qwen2-VL-Instruct style chat template;
- a tiny randomly initialised ``Qwen2VL`` / ``Qwen2_5_VL`` / ``Qwen3VL`` model (2 text layers,
  hidden 64, 2 vision blocks) keeping each family's real patch, temporal-patch and merge sizes so
  the image-token arithmetic is the real one;
- the family's image-processor settings with small pixel limits.

The folder loads with ``HF_HUB_OFFLINE=1`` through ``AutoModelForImageTextToText``,
``AutoTokenizer`` and ``AutoImageProcessor``.

Command line::

    python -m lightning_modules.tiny --out DIR --family {qwen2_vl,qwen2_5_vl,qwen3_vl} [--seed 0]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Qwen's special tokens in Qwen's own order, so that their relative ids mirror the real vocabulary
# (<|endoftext|> first, then the chat and vision markers).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Answer words a reranker may read from the LM head. Each must be ONE token when it directly
# follows "assistant\n" (no leading space), as it does in the chat template.
_LABEL_WORDS_TEXT = (
    "yes no Yes No true false True False YES NO correct wrong right incorrect relevant irrelevant"
)
LABEL_WORDS: tuple[str, ...] = tuple(_LABEL_WORDS_TEXT.split())

# The corpus comes from these modules' docstrings. The list is fixed and sorted, and every module
# ships with every CPython build, so the corpus depends only on the Python version (docstrings are
# edited between releases).
_CORPUS_MODULES_TEXT = """
abc argparse base64 bisect calendar collections contextlib copy csv dataclasses datetime decimal difflib
enum fractions functools glob gzip hashlib heapq html inspect io itertools json logging math operator os
pathlib pickle pprint queue random re shutil statistics string struct tempfile textwrap threading time
urllib.parse uuid warnings zipfile
"""
CORPUS_MODULES: tuple[str, ...] = tuple(sorted(_CORPUS_MODULES_TEXT.split()))

# Everyday English (image captions, queries, documents) so that the demo's text is not tokenized
# byte by byte; it also guarantees a usable corpus under ``python -OO``, which strips docstrings.
_ENGLISH_WORDS_TEXT = """
a an the this that these those is are was were be been being have has had do does did
and or but not if then else when while for with without of in on at by from to into over
under between above below near far up down left right front back top bottom inside
outside image picture photo photograph video document query passage text caption title
question answer relevant irrelevant match matching similar different same retrieval
rerank ranking score search find show shows showing describe description contains
containing about which what who where why how one two three four five six seven eight
nine ten zero first second third last many few some all none each every other another
red green blue yellow black white gray brown orange purple pink dark light bright color
small large big tiny huge long short tall wide narrow round square circle line shape
man woman person people child children boy girl dog cat bird horse car bus train plane
boat bicycle house building street road tree flower grass sky water sea river mountain
table chair bed door window food plate cup bottle book phone computer screen sign
sitting standing walking running playing holding eating looking wearing riding
handwritten digit number letter face faces animal object scene day night snow rain sun
good bad new old young high low hot cold open closed full empty clean dirty happy sad
yes no true false correct wrong right incorrect Yes No True False YES NO
"""
ENGLISH_WORDS: tuple[str, ...] = tuple(sorted(set(_ENGLISH_WORDS_TEXT.split())))

BPE_VOCAB_SIZE = 3000

# Qwen's pre-tokenizer regex (identical to ``transformers.models.qwen2.tokenization_qwen2``), so
# the trained merges see the same pre-tokens the wrapped ``Qwen2Tokenizer`` will produce.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Same semantics as the Qwen2-VL-Instruct template: a default system turn when the conversation
# does not start with one, content parts concatenated with no separator, one
# <|vision_start|><|image_pad|><|vision_end|> per image (the processor later expands the single
# <|image_pad|> to the image's token count), optional "Picture k: " prefixes, videos likewise.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}\n"
    "{%- set video_count = namespace(value=0) -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if loop.first and message['role'] != 'system' -%}\n"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- else -%}\n"
    "{%- for part in message['content'] -%}\n"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}\n"
    "{%- set image_count.value = image_count.value + 1 -%}\n"
    "{%- if add_vision_id -%}{{- 'Picture ' + image_count.value|string + ': ' -}}{%- endif -%}\n"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}\n"
    "{%- elif part['type'] == 'video' or 'video' in part -%}\n"
    "{%- set video_count.value = video_count.value + 1 -%}\n"
    "{%- if add_vision_id -%}{{- 'Video ' + video_count.value|string + ': ' -}}{%- endif -%}\n"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}\n"
    "{%- elif 'text' in part -%}\n"
    "{{- part['text'] -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

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
    spec = _spec(family)
    factor = spec.patch_size * spec.merge_size
    return 4 * factor * factor, 64 * factor * factor


def _spec(family: str) -> FamilySpec:
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILY_SPECS[family]


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def _module_docstrings(module_name: str) -> list[str]:
    """Docstrings of a module and its public top-level functions and classes, names sorted.

    Python sources are read with ``ast`` rather than imported: an imported module's namespace
    depends on what else the process imported (monkeypatching, lazy attributes), its source does
    not. Modules written in C (``math``, ``itertools``, ...) have no source and are introspected.
    """
    spec = importlib.util.find_spec(module_name)
    # Frozen stdlib modules (os, io, ...) report origin "frozen"; their file is in loader_state.
    origin = getattr(spec.loader_state, "filename", None) if spec.origin == "frozen" else spec.origin
    if origin and origin.endswith(".py"):
        tree = ast.parse(pathlib.Path(origin).read_text(encoding="utf-8"))
        nodes = {
            node.name: node
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not node.name.startswith("_")
        }
        docs = [ast.get_docstring(tree)] + [ast.get_docstring(nodes[name]) for name in sorted(nodes)]
    else:
        module = importlib.import_module(module_name)
        objects = [
            obj
            for name, obj in sorted(vars(module).items())
            if not name.startswith("_") and (inspect.isbuiltin(obj) or inspect.isclass(obj))
        ]
        docs = [module.__doc__] + [
            inspect.cleandoc(obj.__doc__) for obj in objects if isinstance(obj.__doc__, str)
        ]
    return [doc for doc in docs if doc and doc.strip()]


def build_corpus() -> list[str]:
    """Deterministic training text for the tokenizer.

    Returns:
        Docstrings of the public functions and classes defined in :data:`CORPUS_MODULES` (modules
        and names sorted), followed by the fixed word list and repeated label words.
    """
    texts: list[str] = []
    for module_name in CORPUS_MODULES:
        texts.extend(_module_docstrings(module_name))
    texts.append(" ".join(ENGLISH_WORDS))
    # Repetition makes the label words frequent enough that BPE merges them whole, both at the
    # start of a line (after "assistant\n") and after a space.
    for word in LABEL_WORDS:
        texts.extend([f"{word}\n{word} {word}. {word}"] * 20)
    return texts


@functools.lru_cache(maxsize=1)
def _train_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Train the byte-level BPE once per process.

    Returns:
        ``(vocab items sorted by id, merges in priority order)`` as immutable tuples, so the cached
        value cannot be mutated by callers.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        # All 256 byte symbols, so any text (and any byte) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(build_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    vocab, merges = _ensure_single_tokens(vocab, merges, LABEL_WORDS)
    return vocab, merges


def _byte_level(text: str) -> str:
    """Map text to the printable byte-level alphabet used in the BPE vocabulary (GPT-2 scheme)."""
    from tokenizers import pre_tokenizers

    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    return "".join(piece for piece, _ in pieces)


def _ensure_single_tokens(
    vocab: tuple[tuple[str, int], ...],
    merges: tuple[tuple[str, str], ...],
    words: Sequence[str],
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Append lowest-priority merges so that each word encodes to a single token.

    The corpus normally makes BPE learn the words; this is the guarantee for corpora where it does
    not (another Python version, ``-OO``). New merges go last, so no existing tokenization changes
    except that of the words (and strings containing exactly that piece sequence).

    Args:
        vocab: ``(token, id)`` pairs sorted by id, ids contiguous from 0.
        merges: Merge pairs in priority order.
        words: Words that must become single tokens.

    Returns:
        The extended ``(vocab, merges)``.
    """
    from tokenizers.models import BPE

    vocab_dict = dict(vocab)
    merge_list = list(merges)
    for word in words:
        token = _byte_level(word)
        # Merging only the leftmost pair per round (and re-tokenizing) stays correct when the new
        # merge also fires elsewhere in the word, e.g. on repeated letters.
        while len(pieces := BPE(vocab=vocab_dict, merges=merge_list).tokenize(token)) > 1:
            left, right = pieces[0].value, pieces[1].value
            merge_list.append((left, right))
            vocab_dict.setdefault(left + right, len(vocab_dict))
    return tuple(sorted(vocab_dict.items(), key=lambda item: item[1])), tuple(merge_list)


def build_tokenizer() -> Any:
    """Build the tiny Qwen tokenizer (BPE + Qwen special tokens + chat template).

    Returns:
        A ``transformers.Qwen2Tokenizer`` with left padding, ``<|endoftext|>`` as pad token and
        ``<|im_end|>`` as eos token (as in the Qwen-VL Instruct checkpoints), the special tokens
        appended after the BPE vocabulary in Qwen's order, and :data:`CHAT_TEMPLATE`.
    """
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe()
    # eos starts as <|endoftext|> so that the constructor registers <|endoftext|> first; the
    # remaining specials then follow in Qwen's order and eos is switched to <|im_end|> below.
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=None,
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    expected = list(range(len(vocab), len(vocab) + len(SPECIAL_TOKENS)))
    if ids != expected:
        raise RuntimeError(f"special tokens got ids {ids}, expected {expected}")
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Image processor and model
# --------------------------------------------------------------------------------------------------


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

    spec = _spec(family)
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

    spec = _spec(family)
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


def build_tiny(out_dir: str | pathlib.Path, family: str = "qwen2_vl", seed: int = 0) -> pathlib.Path:
    """Write a tiny random model + tokenizer + image processor as a Hugging Face folder.

    Args:
        out_dir: Destination folder (created if missing; existing files are overwritten).
        family: One of :data:`FAMILIES`.
        seed: Seed for the random weights. The same seed gives a byte-identical
            ``model.safetensors``.

    Returns:
        The folder path.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    _spec(family)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

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
    with _no_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    build_image_processor(family).save_pretrained(out)
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
        prog="python -m lightning_modules.tiny",
        description="Write a tiny randomly initialised Qwen-VL checkpoint folder that loads offline.",
    )
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES, help="model family")
    parser.add_argument("--seed", default=0, type=int, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = build_tiny(args.out, family=args.family, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny, randomly initialised Qwen-VL checkpoints that load offline exactly like real ones.

Nothing can be downloaded from the model hub on the machines this project is tested on, yet the
model path must be exercised through the very code used for real checkpoints. This package writes
a normal Hugging Face folder (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``,
``preprocessor_config.json``) holding:

- a byte-level BPE tokenizer trained here, deterministically, on Python standard-library
  docstrings plus a fixed word list, wrapped as ``Qwen2Tokenizer`` with the Qwen special tokens
  (in Qwen's order) and a Qwen2-VL-Instruct style chat template (``tokenizer.py``);
- a tiny randomly initialised ``Qwen2VL`` / ``Qwen2_5_VL`` / ``Qwen3VL`` model (2 text layers,
  hidden 64, 2 vision blocks) keeping each family's real patch, temporal-patch and merge sizes so
  the image-token arithmetic is the real one (``model.py``);
- the family's image-processor settings with small pixel limits (``model.py``).

``build.py`` puts the three together (:func:`build_tiny`). The folder loads with
``HF_HUB_OFFLINE=1`` through ``AutoModelForImageTextToText``, ``AutoTokenizer`` and
``AutoImageProcessor``.

Command line::

    python -m lightning_modules.tiny --out DIR --family {qwen2_vl,qwen2_5_vl,qwen3_vl} [--seed 0]
"""

from lightning_modules.tiny.build import build_tiny, main
from lightning_modules.tiny.model import (
    FAMILIES,
    FAMILY_SPECS,
    TEXT_HIDDEN,
    FamilySpec,
    build_config,
    build_image_processor,
    pixel_limits,
)
from lightning_modules.tiny.tokenizer import (
    CHAT_TEMPLATE,
    LABEL_WORDS,
    SPECIAL_TOKENS,
    build_corpus,
    build_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "FAMILIES",
    "FAMILY_SPECS",
    "LABEL_WORDS",
    "SPECIAL_TOKENS",
    "TEXT_HIDDEN",
    "FamilySpec",
    "build_config",
    "build_corpus",
    "build_image_processor",
    "build_tiny",
    "build_tokenizer",
    "main",
    "pixel_limits",
]

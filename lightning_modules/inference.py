"""Batched inference: score and rank documents for a query with a trained (or zero-shot) reranker.

Usage::

    from lightning_modules.inference import Reranker

    reranker = Reranker.from_pretrained("runs/export/my-reranker")        # or a plain base model
    reranker.rank("a red car", ["A red car parks.", {"image": "cat.png"}], instruction="Find the match.")
    # -> [(0, 3.1), (1, -2.4)]: (input index, score), best first
    reranker.score(query, documents, instruction=...)                    # scores in input order

What it loads. An exported folder (``python -m lightning_modules.export``) carries
``rerank_config.json``: the objective whose score ranks (``sft``: z_y − z_n, ``cl``: z_y, ``url``:
its direction's score, ...), the label words, the judge prompt, the token and pixel budgets, and
for the ``projection`` direction the score head (``score_head.safetensors``). A plain Hugging Face
folder or hub id without that file scores zero-shot with the SFT score z_y − z_n on the ``yes`` /
``no`` tokens, the default judge prompt and rerank-lab's default budgets (``max_length`` 3200,
``min_pixels`` 4·28², ``max_pixels`` 1280·28²; each overridable).

Inputs. A query or document is

- a ``str``: always text (a string is never taken for a file name);
- a ``dict`` with ``"text"`` and/or ``"image"``; the image is a path (``str`` or ``Path``, relative to
  the working directory) or a ``PIL.Image.Image``;
- a :class:`datamodules.formats.Doc`.

Same code path as training. Pairs are rendered, tokenised and image-processed by
:class:`~datamodules.encoding.PairEncoder` (left padding, the chat layout, the truncation
rule) and scored by :class:`~lightning_modules.backbone.LabelScorer` (label-token rows only, fp32)
followed by the objective's own ``score``. PIL images go through the very same
``PairEncoder.process_images`` (``encoding.load_image`` takes them as they are, so the pixel
limits and the decompression-bomb check are the training ones).

Batching. All pairs of a call are encoded first and scored through the one scoring path of
training and evaluation (:func:`lightning_modules.scoring.score_pairs`): sorted by token length
(image tokens included; ties keep input order), cut into batches of ``batch_size`` pairs, scored,
and put back into input order, so padding stays small. On ``torch.OutOfMemoryError`` the batch size
is halved (and kept halved for later calls) and the call is scored again; a single pair that does
not fit raises.

Determinism. Scores are computed and returned in float32 (float64 Python floats of float32 values),
whatever the model dtype. :meth:`Reranker.rank` sorts by descending score and breaks exact ties by
ascending input index, so equal scores keep the caller's order. Scores depend on the batch
composition only through floating-point reduction order (about 1e-6 in float32, the documented
evaluation dtype; bfloat16 is faster on GPUs but can flip near-ties).

Shared query prefix (KV cache). Every candidate of a query starts with the same tokens: the system
prompt, the instruction and the query (its image included). The prefix is run once per query and
its keys/values are reused by every candidate batch (expanded, not copied, over the batch), through
the same code as training (:mod:`lightning_modules.prefix`, which explains why it is exact and
where the prefix ends). Tests: scores equal the plain path to 1e-4 (measured 1e-7) for text, image
and image+text queries; training gradients through the same code equal whole pairs for Qwen2-VL,
Qwen2.5-VL and Qwen3-VL.

When it pays: the saving is the prefix's share of each pair's tokens plus the query image's
vision-tower pass (once per query instead of once per candidate); copying the prefix keys/values
into each batch costs far less. ``prefix_cache="auto"`` (default) uses it when the shared prefix is
at least ``prefix.PREFIX_MIN_SHARE`` (10%) of the mean pair length; ``True`` forces it, ``False``
disables it. Figures per MRB task family: ``make bench`` (``runs/bench/bench.md``). For multimodal
backbones without multimodal-RoPE helpers the plain path runs (with one warning).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import objectives
from datamodules.encoding import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    SYSTEM_PROMPT,
    EncodedPair,
    PairEncoder,
)
from datamodules.formats import Doc
from lightning_modules.backbone import DTYPES, LabelScorer, label_token_id, label_words, load_backbone
from lightning_modules.export_integrity import verify_export
from lightning_modules.prefix import (
    ImageFeatureCache,
    pairs_features,
    prefix_usable,
    query_prefix,
    vision_frozen,
)
from lightning_modules.scoring import rank_scores, score_pairs

log = logging.getLogger(__name__)

RERANK_CONFIG = "rerank_config.json"
SCORE_HEAD = "score_head.safetensors"
DEFAULT_INSTRUCTION = "Given the query, judge whether the document is relevant to it."
DEFAULT_MAX_LENGTH = 3200

DocLike = str | Mapping[str, Any] | Doc


def as_doc(item: DocLike, what: str = "document") -> Doc:
    """Normalise a query or document given as ``str``, ``dict`` or :class:`Doc` to a :class:`Doc`.

    Args:
        item: text (``str``), ``{"text": ..., "image": path-or-PIL}``, or a ``Doc``.
        what: how to name it in errors.

    Returns:
        The ``Doc`` (a PIL image is kept as the image object; a path becomes a ``str``).

    Raises:
        ValueError: neither text nor image, unknown keys, or an unsupported type.
    """
    if isinstance(item, Doc):
        doc = item
    elif isinstance(item, str):
        doc = Doc(text=item)
    elif isinstance(item, Mapping):
        unknown = set(item) - {"text", "image"}
        if unknown:
            raise ValueError(f"{what}: unknown keys {sorted(unknown)}; use 'text' and/or 'image'")
        image = item.get("image")
        if isinstance(image, Path):
            image = str(image)
        if image is not None and not isinstance(image, str | Image.Image):
            raise ValueError(f"{what}: image must be a path or a PIL image, got {type(image).__name__}")
        doc = Doc(text=item.get("text") or None, image=image or None)
    else:
        raise ValueError(
            f"{what}: expected a str, a dict with text/image, or a Doc; got {type(item).__name__}"
        )
    if not doc.text and doc.image is None:
        raise ValueError(f"{what}: has neither text nor image")
    return doc


def read_rerank_config(folder: Path) -> dict | None:
    """``rerank_config.json`` of an export folder (``None`` for a plain model), checked to be a JSON
    object of a causal-LM export; problems are one ``ValueError`` line naming the file."""
    path = folder / RERANK_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-export the checkpoint") from None
    if not isinstance(config, dict) or not isinstance(config.get("objective"), str):
        raise ValueError(f"{path}: expected a JSON object with an 'objective' name; re-export the checkpoint")
    if config.get("layout") == "seq-cls":
        raise ValueError(
            f"{folder}: a --format seq-cls export (a one-label classifier without the LM head); load it "
            "with sentence_transformers.CrossEncoder or AutoModelForSequenceClassification, or give Reranker "
            "the default export"
        )
    return config


def contained(folder: Path, name) -> Path:
    """``folder / name`` for a file name that stays inside ``folder`` (no absolute path, no ``..``,
    no link out), else ``ValueError`` naming the ``rerank_config.json`` key."""
    path = folder / str(name)
    if (
        not isinstance(name, str)
        or Path(name).is_absolute()
        or not path.resolve().is_relative_to(folder.resolve())
    ):
        raise ValueError(f"{folder / RERANK_CONFIG}: score_head {name!r} must name a file inside the folder")
    return path


def unreadable_weights(folder: Path, err: Exception) -> str:
    """One line naming the ``*.safetensors`` file of ``folder`` that safetensors cannot read (a
    truncated or overwritten file), found by opening each; ``err`` when none can be named."""
    from safetensors import safe_open

    reason = str(err).splitlines()[0]
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as problem:  # noqa: BLE001 - SafetensorError has no importable base here
            reason = f"{weights}: not a readable safetensors file ({str(problem).splitlines()[0]})"
            break
    return f"{reason}; it was truncated or overwritten: re-export or copy it again"


def _load_weights(path: str | Path, dtype: str, trust_remote_code: bool, attn_implementation: str):
    """The backbone at ``path`` (a folder or hub id), frozen; an unreadable ``*.safetensors`` file is
    one ``ValueError`` line naming it (see :func:`unreadable_weights`)."""
    try:
        model = load_backbone(str(path), dtype, trust_remote_code, attn_implementation)
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' own error type, raised from Rust
            raise
        raise ValueError(unreadable_weights(Path(path), err)) from None
    model.requires_grad_(False)
    return model


def _load_objective(folder: Path, config: dict | None, model) -> tuple[objectives.Objective, str]:
    """The objective that scores (SFT for a plain base) with its score head, and the system prompt.

    Raises:
        ValueError: a score head outside the folder, or label tokens that differ from the objective's.
    """
    hidden_size = model.get_output_embeddings().weight.shape[1]
    if config is None:
        return objectives.build("sft"), SYSTEM_PROMPT
    objective = objectives.build(
        config["objective"], hidden_size=hidden_size, **(config.get("objective_args") or {})
    )
    if config.get("score_head"):
        from safetensors.torch import load_file

        objective.load_state_dict(load_file(str(contained(folder, config["score_head"]))), strict=True)
    expected = config.get("label_tokens")
    if expected is not None and list(expected) != label_words(objective):
        raise ValueError(
            f"{folder / RERANK_CONFIG}: label_tokens {expected} do not match the objective's "
            f"{label_words(objective)}"
        )
    return objective, config.get("system_prompt", SYSTEM_PROMPT)


def _load_encoder(
    path: str | Path, config: dict, budgets: dict, system_prompt: str, trust_remote_code: bool
) -> PairEncoder:
    """The PairEncoder of ``path``; each budget (``max_length``, ``min_pixels``, ``max_pixels``) as
    given, else the export's, else the default."""
    defaults = {
        "max_length": DEFAULT_MAX_LENGTH,
        "min_pixels": DEFAULT_MIN_PIXELS,
        "max_pixels": DEFAULT_MAX_PIXELS,
    }
    return PairEncoder.from_pretrained(
        path,
        trust_remote_code=trust_remote_code,
        **{key: budgets[key] or config.get(key) or default for key, default in defaults.items()},
        system_prompt=system_prompt,
    )


class Reranker:
    """Scores (instruction, query, document) pairs with a label-token reranker.

    Build it with :meth:`from_pretrained`. Attributes of interest: ``encoder`` (the PairEncoder),
    ``scorer`` (the LabelScorer around the backbone), ``objective`` (whose ``score`` ranks),
    ``config`` (``rerank_config.json`` contents, or ``None`` for a plain base), ``batch_size``.

    Args:
        model: the backbone (``*ForConditionalGeneration`` / ``*ForCausalLM``), already on ``device``.
        encoder: the PairEncoder of the checkpoint.
        objective: the objective whose ``score`` ranks documents.
        device: where the model lives.
        batch_size: pairs per forward pass (halved on out-of-memory).
        config: the exported ``rerank_config.json``, if any.
        prefix_cache: reuse the KV cache of the query prefix across a query's candidates: ``"auto"``
            (default: when the shared prefix is at least ``prefix.PREFIX_MIN_SHARE`` of the mean pair
            length, which is where it pays), ``True`` (always) or ``False`` (never).
        image_cache_mb: keep the vision-tower features of up to this many MiB of images (CPU
            memory, least recently used out first), keyed by image path, so that an image met
            again (the same candidate for another query) is not encoded again; 0 turns it off.
            Call ``reranker.image_cache.clear()`` if image files change on disk.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encoder: PairEncoder,
        objective: objectives.Objective,
        device: torch.device,
        batch_size: int = 32,
        config: dict | None = None,
        prefix_cache: bool | str = "auto",
        image_cache_mb: int = 1024,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.objective = objective.to(device).eval()
        self.words = label_words(objective)
        ids = [label_token_id(encoder.tokenizer, word) for word in self.words]
        self.scorer = LabelScorer(model, ids, lm_head="frozen").to(device).eval()
        positive, negative = objective.label_tokens
        self._token_columns = [self.words.index(w) for w in (*positive, *negative)]
        self.device = device
        self.batch_size = batch_size
        self.config = config
        self.prefix_cache = prefix_cache
        self._prefix_supported: bool | None = None
        self.image_cache = ImageFeatureCache(image_cache_mb * 2**20)
        self._vision_frozen = vision_frozen(self.scorer)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        batch_size: int | None = None,
        max_length: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        prefix_cache: bool | str = "auto",
        image_cache_mb: int = 1024,
        verify: bool = True,
    ) -> Reranker:
        """Load an exported reranker folder, or a plain base checkpoint for zero-shot SFT scoring.

        Args:
            path: exported folder (has ``rerank_config.json``), or any HF folder / hub id.
            device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available, else CPU.
            dtype: model weights dtype, ``float32`` (default, the documented evaluation dtype) or
                ``bfloat16``; scores are float32 either way.
            batch_size: pairs per forward pass; default 32 on CUDA and 4 on CPU (where padding costs
                more than batching gains: ``experiments.bench`` measured 4 fastest of 1/4/16).
            max_length: per-pair token cap; default from the export, else 3200.
            min_pixels: per-image minimum pixels; default from the export, else 4·28².
            max_pixels: per-image maximum pixels; default from the export, else 1280·28².
            attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
            trust_remote_code: allow code shipped with the checkpoint.
            prefix_cache: ``"auto"`` (when the shared prefix is a large share of the pairs), ``True`` or
                ``False``: reuse the query prefix's KV cache across candidates (exact; see the module
                docstring).
            image_cache_mb: MiB of image features kept across calls (see the class); 0 turns it off.
            verify: check the folder against the checksums recorded at export (``checksums.sha256``,
                :mod:`lightning_modules.export_integrity`) before reading it; ``False`` loads a folder
                changed on purpose.

        Returns:
            The reranker, in eval mode.

        Raises:
            ValueError: a changed or truncated export (``ExportIntegrityError``), an unreadable
                ``rerank_config.json``, a score head outside the folder, or a ``seq-cls`` export
                (no LM head: a ``CrossEncoder`` / ``AutoModelForSequenceClassification`` loads it).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = Path(path)
        if verify and folder.is_dir():
            verify_export(folder)
        config = read_rerank_config(folder)
        batch_size = batch_size or (32 if device.type == "cuda" else 4)
        model = _load_weights(path, dtype, trust_remote_code, attn_implementation)
        objective, system_prompt = _load_objective(folder, config, model)
        budgets = {"max_length": max_length, "min_pixels": min_pixels, "max_pixels": max_pixels}
        encoder = _load_encoder(path, config or {}, budgets, system_prompt, trust_remote_code)
        model.to(device).eval()
        return cls(model, encoder, objective, device, batch_size, config, prefix_cache, image_cache_mb)

    # ---- public API ------------------------------------------------------------------------
    def score(
        self, query: DocLike, documents: Sequence[DocLike], instruction: str | None = None
    ) -> list[float]:
        """Scores of ``documents`` for ``query``, in input order (higher = more relevant).

        Args:
            query: the query (``str`` text, ``{"text", "image"}`` dict or ``Doc``).
            documents: the candidates, same forms.
            instruction: the task instruction placed after ``<Instruct>:``; default: the export's
                ``default_instruction`` (the one its sentence-transformers prompt and chat template use),
                else :data:`DEFAULT_INSTRUCTION`.

        Returns:
            One float32-valued score per document.
        """
        if not documents:
            return []
        if instruction is None:
            instruction = (self.config or {}).get("default_instruction") or DEFAULT_INSTRUCTION
        query_doc = as_doc(query, "query")
        docs = [as_doc(d, f"document {i}") for i, d in enumerate(documents)]
        pairs = self.encoder.encode_group(instruction, query_doc, docs, where="rerank")
        prefix = (0, 0)
        if len(pairs) > 1 and self.prefix_cache is not False and self._prefix_cache_available():
            prefix = query_prefix(
                self.scorer,
                pairs,
                self.encoder.image_token_id,
                self.encoder.merge_size,
                self.prefix_cache is True,
            )
        return self.score_encoded(pairs, prefix)

    def rank(
        self, query: DocLike, documents: Sequence[DocLike], instruction: str | None = None
    ) -> list[tuple[int, float]]:
        """``(input index, score)`` of every document, best first; exact ties keep input order."""
        scores = self.score(query, documents, instruction=instruction)
        return sorted(enumerate(scores), key=lambda item: (-item[1], item[0]))

    # ---- scoring ---------------------------------------------------------------------------
    def score_encoded(self, pairs: Sequence[EncodedPair], prefix: tuple[int, int] = (0, 0)) -> list[float]:
        """Scores of one query's encoded pairs, in their order (``prefix``: the ``(length, images)``
        they share, run once; ``(0, 0)`` scores every pair whole). Halves ``batch_size`` and scores
        again on out-of-memory."""
        if not pairs:
            return []
        while True:
            size = min(self.batch_size, len(pairs))
            try:
                with torch.inference_mode():
                    logits, hidden = score_pairs(
                        self.scorer,
                        list(pairs),
                        collate=self._collate,
                        features=self._features,
                        size=size,
                        prefix=prefix,
                    )
                    scores = rank_scores(self.objective, logits, hidden, self._token_columns)
                return scores.float().cpu().tolist()
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self.batch_size = max(1, size // 2)
                log.warning("out of memory with %d pairs per batch; retrying with %d", size, self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _collate(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in self.encoder.collate(pairs).items()}

    def _features(self, pairs: Sequence[EncodedPair]):
        """Image features of ``pairs`` through the cache (frozen vision tower), or ``None``."""
        if not self._vision_frozen or self.image_cache.max_bytes <= 0:
            return None
        return pairs_features(self.scorer, pairs, self.image_cache)

    def _prefix_cache_available(self) -> bool:
        """Whether this backbone can run the shared-prefix path (checked once)."""
        if self._prefix_supported is None:
            self._prefix_supported = prefix_usable(self.scorer)
            if not self._prefix_supported:
                log.warning("prefix_cache: not supported by this backbone; scoring without it")
        return self._prefix_supported

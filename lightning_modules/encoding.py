"""Turn (instruction, query, document) triples into model inputs: the chat layout of paper.md §1.

The layout (the released lychee-rerank-mm / Qwen3-VL-Reranker convention):

    system: Judge whether the Document meets the requirements based on the Query and the Instruct
            provided. Note that the answer can only be "yes" or "no".
    user:   "<Instruct>: {instruction}" "<Query>:" [query image] [query text]
            "\\n<Document>:" [document image] [document text]
    assistant generation prompt  ->  the answer is read at the LAST input position.

The text is rendered by the checkpoint's own chat template, each image placeholder is expanded to
the number of visual tokens the image processor gives it, and the batch is LEFT padded so that
position -1 is the answer position of every row.

Visual-token budget: per-image ``min_pixels``/``max_pixels`` and a per-pair ``max_length``.
Truncation cuts document text first, then query text; never image tokens, never the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from datamodules.formats import Doc

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
# Refuse images that would decompress to more than this many pixels (decompression bombs).
MAX_DECODED_PIXELS = 64_000_000


class PairTooLongError(ValueError):
    """A pair does not fit ``max_length`` even with all of its text removed."""


@dataclass
class EncodedPair:
    """Token ids of one pair plus the processed pixels of its images (in order of appearance).

    ``image_keys`` names each image by its path (``None`` for in-memory images), so that its
    vision-tower features can be reused (``prefix.ImageFeatureCache``); empty when unknown.
    """

    input_ids: list[int]
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    image_grid_thw: list[torch.Tensor] = field(default_factory=list)
    truncated: bool = False
    image_keys: list[str | None] = field(default_factory=list)


def load_image(image: str | Image.Image) -> Image.Image:
    """An image (a path, or an in-memory PIL image) as RGB, refusing decompression-bomb sizes."""
    width, height = image.size if isinstance(image, Image.Image) else Image.open(image).size
    if width * height > MAX_DECODED_PIXELS:
        raise ValueError(
            f"{image if isinstance(image, str) else 'in-memory image'}: image is {width}x{height} pixels, over "
            f"the {MAX_DECODED_PIXELS:,} pixel safety limit; downscale it before training"
        )
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


def build_messages(instruction: str, query: Doc, document: Doc, system_prompt: str = SYSTEM_PROMPT) -> list:
    """The chat messages of one pair, in the exact order of paper.md §1."""
    content: list[dict] = [
        {"type": "text", "text": f"<Instruct>: {instruction}"},
        {"type": "text", "text": "<Query>:"},
    ]
    if query.image:
        content.append({"type": "image"})
    if query.text:
        content.append({"type": "text", "text": query.text})
    content.append({"type": "text", "text": "\n<Document>:"})
    if document.image:
        content.append({"type": "image"})
    if document.text:
        content.append({"type": "text", "text": document.text})
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]


def pad_token_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class PairEncoder:
    """Renders, tokenises and image-processes pairs; collates them into left-padded batches.

    Args:
        tokenizer: the checkpoint's tokenizer (must carry a chat template).
        image_processor: the checkpoint's image processor, or ``None`` for text-only backbones.
        max_length: cap on tokens per pair, image tokens included.
        min_pixels: lower bound on pixels per image after resizing.
        max_pixels: upper bound on pixels per image after resizing (bounds visual tokens).
        system_prompt: the judge instruction placed in the system turn.
    """

    def __init__(
        self,
        tokenizer,
        image_processor=None,
        max_length: int = 3200,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; rerank-lab renders pairs with it")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.system_prompt = system_prompt
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.pad_token_id = pad_token_id(tokenizer)
        self.merge_size = getattr(image_processor, "merge_size", 1) if image_processor is not None else 1

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, trust_remote_code: bool = False, **kwargs
    ) -> PairEncoder:
        """Load tokenizer and (if the checkpoint has one) image processor from a hub id or folder."""
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        try:
            image_processor = AutoImageProcessor.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code, backend="pil"
            )
        except (OSError, ValueError):  # text-only checkpoint: no preprocessor_config.json
            image_processor = None
        return cls(tokenizer, image_processor, **kwargs)

    # ---- rendering -------------------------------------------------------------------------
    def render(self, instruction: str, query: Doc, document: Doc) -> str:
        """The chat text of a pair, with one image placeholder per image (before expansion)."""
        return self.tokenizer.apply_chat_template(
            build_messages(instruction, query, document, self.system_prompt),
            tokenize=False,
            add_generation_prompt=True,
        )

    def process_images(self, paths: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pixel patches and grid (t, h, w) of each image, under this encoder's pixel limits.

        One image-processor call for all of them (much cheaper than one call per image).
        """
        if not paths:
            return []
        if self.image_processor is None:
            raise ValueError(f"{paths[0]}: this backbone has no image processor, so it cannot read images")
        out = self.image_processor(
            images=[load_image(path) for path in paths],
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            return_tensors="pt",
        )
        grids = out["image_grid_thw"]
        pixels = torch.split(out["pixel_values"], grids.prod(dim=-1).tolist())
        return list(zip(pixels, grids, strict=True))

    def process_image(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel patches and grid (t, h, w) of one image."""
        return self.process_images([path])[0]

    def _tokenize(self, text: str, grids: Sequence[torch.Tensor]) -> list[int]:
        chunks = text.split(self.image_token)
        if len(chunks) - 1 != len(grids):
            raise ValueError(
                f"chat template produced {len(chunks) - 1} image placeholders for {len(grids)} images"
            )
        ids: list[int] = []
        for i, chunk_ids in enumerate(self.tokenizer(chunks, add_special_tokens=False)["input_ids"]):
            ids.extend(chunk_ids)
            if i < len(grids):
                ids.extend([self.image_token_id] * (int(grids[i].prod()) // self.merge_size**2))
        return ids

    def _cut(self, text: str | None, overflow: int) -> str | None:
        if not text:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = max(0, len(ids) - overflow)
        return self.tokenizer.decode(ids[:keep]) if keep else None

    def encode(
        self,
        instruction: str,
        query: Doc,
        document: Doc,
        query_image: tuple[torch.Tensor, torch.Tensor] | None = None,
        document_image: tuple[torch.Tensor, torch.Tensor] | None = None,
        where: str = "pair",
    ) -> EncodedPair:
        """Encode one pair. ``query_image`` / ``document_image`` pass already processed images."""
        images = []
        if query.image:
            images.append(query_image if query_image is not None else self.process_image(query.image))
        if document.image:
            images.append(
                document_image if document_image is not None else self.process_image(document.image)
            )
        grids = [grid for _, grid in images]
        truncated = False
        # Cut document text first, then query text, until the pair fits. Re-tokenising after a cut
        # can shift a boundary token, so loop on the measured length rather than trusting one cut.
        while True:
            ids = self._tokenize(self.render(instruction, query, document), grids)
            overflow = len(ids) - self.max_length
            if overflow <= 0:
                break
            truncated = True
            if document.text:
                document = Doc(text=self._cut(document.text, overflow), image=document.image)
            elif query.text:
                query = Doc(text=self._cut(query.text, overflow), image=query.image)
            else:
                raise PairTooLongError(
                    f"{where}: {len(ids)} tokens with all text removed ({sum(int(g.prod()) for g in grids)} "
                    f"image patches) exceed max_length={self.max_length}; lower max_pixels or raise max_length"
                )
        keys = [
            side.image if isinstance(side.image, str) else None for side in (query, document) if side.image
        ]
        return EncodedPair(ids, [p for p, _ in images], grids, truncated, keys)

    def encode_group(
        self, instruction: str, query: Doc, documents: Sequence[Doc], where: str = "group"
    ) -> list[EncodedPair]:
        """Encode a query against several documents; all images go through one processor call."""
        paths = ([query.image] if query.image else []) + [doc.image for doc in documents if doc.image]
        processed = iter(self.process_images(paths))
        query_image = next(processed) if query.image else None
        return [
            self.encode(
                instruction,
                query,
                doc,
                query_image=query_image,
                document_image=next(processed) if doc.image else None,
                where=f"{where}: document {i}",
            )
            for i, doc in enumerate(documents)
        ]

    # ---- batching --------------------------------------------------------------------------
    def collate(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        """Left-pad pairs into one batch; the answer position of every row is index -1."""
        return collate_pairs(pairs, self.pad_token_id, self.image_token_id)


def collate_pairs(
    pairs: Sequence[EncodedPair], pad_token_id: int, image_token_id: int
) -> dict[str, torch.Tensor]:
    """Left-pad pairs into one batch (see :meth:`PairEncoder.collate`)."""
    length = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, pair in enumerate(pairs):
        n = len(pair.input_ids)
        input_ids[row, length - n :] = torch.tensor(pair.input_ids, dtype=torch.long)
        attention_mask[row, length - n :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixel_values = [p for pair in pairs for p in pair.pixel_values]
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.stack([g for pair in pairs for g in pair.image_grid_thw])
        batch["mm_token_type_ids"] = (input_ids == image_token_id).long()
        batch["image_counts"] = torch.tensor([len(pair.image_grid_thw) for pair in pairs], dtype=torch.long)
    return batch


def unbatch(batch: dict[str, torch.Tensor]) -> list[EncodedPair]:
    """The pairs of a collated batch (the inverse of :func:`collate_pairs`; pixels are views)."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    rows = batch["input_ids"].tolist()
    pairs = [EncodedPair(ids[len(ids) - n :]) for ids, n in zip(rows, lengths, strict=True)]
    if "pixel_values" in batch:
        grids = list(batch["image_grid_thw"])
        pixels = torch.split(batch["pixel_values"], batch["image_grid_thw"].prod(dim=-1).tolist())
        start = 0
        for pair, count in zip(pairs, batch["image_counts"].tolist(), strict=True):
            pair.pixel_values = list(pixels[start : start + count])
            pair.image_grid_thw = grids[start : start + count]
            start += count
    return pairs

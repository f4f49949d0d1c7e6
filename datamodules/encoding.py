"""Turn (instruction, query, document) triples into model inputs: the chat layout of docs/science.md §1.

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

Message content. Multimodal templates (Qwen-VL) take the user turn as a list of parts; stock
text-only templates (ChatML of SmolLM2, Llama, ...) concatenate ``message['content']`` as a string
and cannot render a list. The encoder probes the template once and, when it cannot render parts,
sends the same parts joined into one string (identical text for Qwen-VL templates, which
concatenate parts without a separator). Pairs with images need a template that renders parts.

User text is plain text. The instruction, the query and document texts and the judge prompt are
tokenised with special-token matching off, so a document holding ``<|im_end|>`` or
``<|im_start|>assistant`` cannot forge the judge's turns; only the tokens the chat template itself
writes (and the image placeholders it places) become control tokens. The template is rendered with
private-use sentinels in place of the texts to tell the two apart; text without special-token
strings gets exactly the ids of tokenising the rendered chat in one piece.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from datamodules.formats import Doc
from datamodules.images import MAX_DECODED_PIXELS, ImageError, open_image, size_problem  # noqa: F401 - re-exported

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28


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
    """An image (a path or URL, or an in-memory PIL image) as RGB, by the rule ``datamodules.validate``
    checks with (:func:`datamodules.images.open_image`): a regular, non-empty, decodable file within
    the pixel and aspect-ratio limits; ``ImageError`` (a ``ValueError``) says what is wrong."""
    if isinstance(image, Image.Image):
        problem = size_problem(*image.size, "in-memory image")
        if problem is not None:
            raise ImageError(problem)
        return image.convert("RGB")
    return open_image(image)


def build_messages(
    instruction: str,
    query: Doc,
    document: Doc,
    system_prompt: str = SYSTEM_PROMPT,
    string_content: bool = False,
) -> list:
    """The chat messages of one pair, in the exact order of docs/science.md §1.

    With ``string_content`` the user turn is one string (the text parts concatenated), for chat
    templates that cannot render a list of parts; pairs with images then raise ``ValueError``.
    """
    if string_content:
        if query.image or document.image:
            raise ValueError(
                "this checkpoint's chat template takes string message content only, so it cannot place "
                "images; use a multimodal checkpoint for pairs with images"
            )
        text = f"<Instruct>: {instruction}<Query>:{query.text or ''}\n<Document>:{document.text or ''}"
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": text}]
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


# Private-use code points mark where the texts go in a rendered chat (see the module docstring).
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


def renders_parts(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders list-of-parts user content, parts joined
    without a separator (Qwen-VL style); ``False`` for string-only templates such as ChatML."""
    a, b = _SENTINEL.format(0), _SENTINEL.format(1)
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": a}, {"type": "text", "text": b}]},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja raises TypeError/UndefinedError/TemplateError alike
        return False
    return isinstance(text, str) and a + b in text


def special_token_strings(tokenizer) -> list[str]:
    """Every special token's text (added tokens marked special plus the named ones), longest first."""
    found = {
        token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if token.special
    }
    found.update(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


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
        self.special_tokens = special_token_strings(tokenizer)
        # ``None`` for text-only backbones: no token of theirs may be taken for an image placeholder.
        self.image_token_id = (
            tokenizer.convert_tokens_to_ids(self.image_token)
            if image_processor is not None and self.image_token in self.special_tokens
            else None
        )
        self._special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in self.special_tokens}
        self._special_re = (
            re.compile("|".join(re.escape(t) for t in self.special_tokens)) if self.special_tokens else None
        )
        self.string_content = not renders_parts(tokenizer)
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
    def render_pieces(self, instruction: str, query: Doc, document: Doc) -> list[tuple[str, bool]]:
        """The chat of a pair as ``(text, is_user_text)`` pieces, one image placeholder per image.

        The template is rendered with a sentinel in place of each user text (the judge prompt, the
        instruction, the query and document texts), which is then put back as its own piece.
        """
        texts = [self.system_prompt, instruction, query.text or "", document.text or ""]
        marked = [_SENTINEL.format(i) for i in range(len(texts))]
        rendered = self.tokenizer.apply_chat_template(
            build_messages(
                marked[1],
                Doc(text=marked[2] if query.text else None, image=query.image),
                Doc(text=marked[3] if document.text else None, image=document.image),
                marked[0],
                self.string_content,
            ),
            tokenize=False,
            add_generation_prompt=True,
        )
        pieces: list[tuple[str, bool]] = []
        start = 0
        for match in _SENTINEL_RE.finditer(rendered):
            pieces += [(rendered[start : match.start()], False), (texts[int(match.group(1))], True)]
            start = match.end()
        pieces.append((rendered[start:], False))
        return [piece for piece in pieces if piece[0]]

    def render(self, instruction: str, query: Doc, document: Doc) -> str:
        """The chat text of a pair, with one image placeholder per image (before expansion)."""
        return "".join(text for text, _ in self.render_pieces(instruction, query, document))

    def process_images(self, paths: Sequence[str | Image.Image]) -> list[tuple[torch.Tensor, torch.Tensor]]:
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

    def process_image(self, path: str | Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel patches and grid (t, h, w) of one image."""
        return self.process_images([path])[0]

    def _tokenize(self, pieces: Sequence[tuple[str, bool]], grids: Sequence[torch.Tensor]) -> list[int]:
        """Token ids of rendered pieces: the template's special tokens (image placeholders expanded
        to their visual tokens) as control ids, everything between them tokenised as plain text."""
        # Alternating list: str = plain text to tokenise; int = a control id; tuple = an image.
        parts: list = [""]
        images = 0
        for text, user in pieces:
            if user or self._special_re is None:
                parts[-1] += text
                continue
            start = 0
            for match in self._special_re.finditer(text):
                parts[-1] += text[start : match.start()]
                token = match.group()
                if token == self.image_token and self.image_token_id is not None:
                    if images >= len(grids):
                        raise ValueError(
                            f"chat template produced more image placeholders than the {len(grids)} images"
                        )
                    count = int(grids[images].prod()) // self.merge_size**2
                    parts += [[self.image_token_id] * count, ""]
                    images += 1
                else:
                    parts += [[self._special_ids[token]], ""]
                start = match.end()
            parts[-1] += text[start:]
        if images != len(grids):
            raise ValueError(f"chat template produced {images} image placeholders for {len(grids)} images")
        texts = [part for part in parts if isinstance(part, str) and part]
        encoded = iter(
            self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            if texts
            else []
        )
        ids: list[int] = []
        for part in parts:
            if isinstance(part, list):
                ids.extend(part)
            elif part:
                ids.extend(next(encoded))
        return ids

    def _cut(self, text: str | None, overflow: int) -> str | None:
        if not text:
            return text
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
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
            ids = self._tokenize(self.render_pieces(instruction, query, document), grids)
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
    pairs: Sequence[EncodedPair], pad_token_id: int, image_token_id: int | None
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

"""What an exported reranker folder holds besides its weights: model card, pixel budget, modes.

The card is written for someone who never installs rerank-lab: it holds valid Hub metadata, one
pair rendered exactly as the model reads it, and a short reference implementation of the score in
plain transformers (chat template, image-token expansion, ``mm_token_type_ids``, the label-token
logits or the projection head). ``tests/test_export_card.py`` runs that snippet from the card of a
real export and compares its scores with :class:`lightning_modules.inference.Reranker`.

Why generated text rather than a library: the Hub's ``ModelCard`` helpers only template YAML and
prose; the snippet must be specialised to the export (backbone kind, score, label-token ids, score
head keys), which is what this module does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.encoding import PairEncoder
from datamodules.formats import Doc
from lightning_modules.export_serve import SERVE_HEADING, ExportParityError, serve_lines  # noqa: F401 - re-exported

MODEL_PLACEHOLDER = "path/to/this/folder"
SNIPPET_HEADING = "## Score it with plain transformers"
# A Hub repository id: "name" or "owner/name" of letters, digits, "-", "_", "."; never a path.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


SCORE_TEXT = {
    "yes_minus_no": "z_yes - z_no: the difference of the `yes` and `no` logits at the answer position",
    "yes_logit": "z_yes: the `yes` logit at the answer position",
    "multi_token_log_odds": (
        "logsumexp of the positive label-token logits minus logsumexp of the negative ones"
    ),
    "projection": "w . h + b: a learned linear score on the last hidden state (`score_head.safetensors`)",
}


def hub_id(base: str) -> str | None:
    """``base`` if it names a Hub repository (and no local path exists by that name), else ``None``."""
    if not HUB_ID.match(base) or base in (".", "..") or Path(base).exists():
        return None
    return base


def _score_lines(config: dict, head_keys: tuple[str, str] | None) -> list[str]:
    """The snippet's last lines: from the model outputs to the score, for this export's score."""
    score = config["score"]
    words, ids = config["label_tokens"], config["label_token_ids"]
    if score == "projection":
        weight, bias = head_keys or ("weight", "bias")
        return [
            "    with torch.no_grad():",
            "        hidden = model.model(**inputs).last_hidden_state[0, -1].float()",
            '    head = load_file(os.path.join(MODEL, "score_head.safetensors"))  # a file of this folder',
            f'    return (hidden @ head["{weight}"][0] + head["{bias}"][0]).item()',
        ]
    lines = [
        "    with torch.no_grad():",
        "        z = model(**inputs, logits_to_keep=1).logits[0, -1].float()",
    ]
    if score == "yes_logit":
        return [*lines, f'    return z[{ids[0]}].item()  # the "{words[0]}" logit']
    if score == "multi_token_log_odds":
        positive, negative = config["positive_tokens"], config["negative_tokens"]
        index = dict(zip(words, ids, strict=True))
        pos, neg = [index[w] for w in positive], [index[w] for w in negative]
        return [
            *lines,
            f"    # positive words {positive}, negative words {negative}",
            f"    return (z[{pos}].logsumexp(0) - z[{neg}].logsumexp(0)).item()",
        ]
    return [*lines, f'    return (z[{ids[0]}] - z[{ids[1]}]).item()  # "{words[0]}" minus "{words[1]}"']


def _snippet_setup_lines(config: dict, vision: bool, image_token: str) -> list[str]:
    """The snippet's imports and globals (tokenizer, image processor, model) up to ``def score``'s docstring."""
    model_class = "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"
    imports = (
        ["AutoImageProcessor", model_class, "AutoTokenizer"] if vision else [model_class, "AutoTokenizer"]
    )
    lines = ["import torch"]
    if config["score"] == "projection":
        lines = ["import os", "", "import torch", "from safetensors.torch import load_file"]
    if vision:
        lines.append("from PIL import Image")
    lines += [
        f"from transformers import {', '.join(sorted(imports))}",
        "",
        f'MODEL = "{MODEL_PLACEHOLDER}"  # or its Hub id',
        f"SYSTEM = {json.dumps(config['system_prompt'])}",
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)",
    ]
    if vision:
        lines += [
            "# The pixel budget is in preprocessor_config.json; backend='pil' is the resize rerank-lab uses.",
            'processor = AutoImageProcessor.from_pretrained(MODEL, backend="pil")',
            f'IMAGE = tokenizer.convert_tokens_to_ids("{image_token}")',
        ]
    return [
        *lines,
        f"model = {model_class}.from_pretrained(MODEL, dtype=torch.float32).eval()",
        "",
        "",
        "def score(instruction, query, document):",
        '    """query, document: dicts with "text" and/or "image" (a file path). Higher = more relevant."""',
    ]


def _snippet_content_lines(vision: bool, string_content: bool) -> list[str]:
    """The user turn's content: one ChatML string (text-only stock templates) or a list of parts."""
    if string_content and not vision:
        return [
            '    q, d = query.get("text") or "", document.get("text") or ""',
            '    content = f"<Instruct>: {instruction}<Query>:{q}\\n<Document>:{d}"  # one string: ChatML',
        ]
    lines = [
        '    content = [{"type": "text", "text": f"<Instruct>: {instruction}"}, {"type": "text", "text": "<Query>:"}]',
        "    for side in (query, document):",
        "        if side is document:",
        '            content.append({"type": "text", "text": "\\n<Document>:"})',
    ]
    if vision:
        lines.append('        content += [{"type": "image"}] if side.get("image") else []')
    lines.append('        content += [{"type": "text", "text": side["text"]}] if side.get("text") else []')
    return lines


def _snippet_input_lines(vision: bool) -> list[str]:
    """From the messages to the model inputs: the chat template, the ids, and the image-token expansion."""
    lines = [
        '    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]',
        "    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
        "    # rerank-lab tokenises user text as plain text; this one-piece call matches it unless a text",
        "    # holds a special-token string such as <|im_end|> (then it would become a control token).",
        "    ids = tokenizer(text, add_special_tokens=False).input_ids",
    ]
    if not vision:
        return [
            *lines,
            "    input_ids = torch.tensor([ids])",
            "    inputs = {'input_ids': input_ids, 'attention_mask': torch.ones_like(input_ids)}",
        ]
    return [
        *lines,
        '    images = [Image.open(s["image"]).convert("RGB") for s in (query, document) if s.get("image")]',
        '    inputs = dict(processor(images=images, return_tensors="pt")) if images else {}',
        "    # Each image placeholder becomes t*h*w / merge_size**2 tokens (its image_grid_thw).",
        '    sizes = iter((inputs["image_grid_thw"].prod(-1) // processor.merge_size**2).tolist() if images else [])',
        "    ids = [t for token in ids for t in [token] * (next(sizes) if token == IMAGE else 1)]",
        "    input_ids = torch.tensor([ids])",
        "    inputs.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))",
        "    if images:",
        '        inputs["mm_token_type_ids"] = (input_ids == IMAGE).long()  # 1 marks image tokens',
    ]


def reference_snippet(
    config: dict, vision: bool, image_token: str, head_keys=None, string_content: bool = False
) -> str:
    """Plain-transformers code that scores one (instruction, query, document) like the export.

    Args:
        config: the export's ``rerank_config.json`` contents.
        vision: whether the backbone reads images (an image-text-to-text model).
        image_token: the tokenizer's image placeholder token (``<|image_pad|>`` for Qwen-VL).
        head_keys: names of the projection head's weight and bias in ``score_head.safetensors``.
        string_content: the chat template takes the user turn as one string (stock ChatML of
            text-only models) rather than a list of parts.
    """
    lines = [
        *_snippet_setup_lines(config, vision, image_token),
        *_snippet_content_lines(vision, string_content),
        *_snippet_input_lines(vision),
        *_score_lines(config, head_keys),
    ]
    return "\n".join(lines) + "\n"


def extract_snippet(card: str) -> str:
    """The Python code block under :data:`SNIPPET_HEADING` of a card written by :func:`model_card`."""
    _, found, rest = card.partition(SNIPPET_HEADING)
    match = re.search(r"```python\n(.*?)```", rest, flags=re.S) if found else None
    if match is None:
        raise ValueError(f"the model card has no python block under {SNIPPET_HEADING!r}")
    return match.group(1)


def _training_text(config: dict) -> str:
    lora, head = config["lora"], config["lm_head"]
    if lora["r"]:
        text = f"LoRA r={lora['r']} on {lora['merged_layers']} layers, merged into the base weights (no adapter needed)"
    else:
        text = "all backbone weights trained (lora_r 0); saved as plain weights"
    if config.get("train_merger"):
        text += "; vision-language merger trained"
    if head["mode"] == "full":
        text += "; LM head trained in full"
    elif head["row_delta_folded"]:
        text += "; label-row offset of the LM head folded into its rows"
        if config.get("lm_head_untied"):
            text += " (the head was untied from the input embeddings first)"
    return text + "."


def _card_metadata(hub: str | None) -> list[str]:
    """The card's YAML front matter (``base_model`` only for a Hub base)."""
    meta = ["---", "library_name: transformers", "pipeline_tag: text-ranking"]
    if hub is not None:
        meta += [f"base_model: {hub}", "base_model_relation: finetune"]
    return [*meta, "tags:", "- reranker", "- rerank-lab", "---"]


def _card_summary_lines(config: dict, vision: bool, hub: str | None) -> list[str]:
    """The title, what the judge reads, and the bullet list: base, objective, score, labels, training,
    budgets and parity."""
    base = config["base_model"]
    base_text = (
        f"[`{hub}`](https://huggingface.co/{hub})"
        if hub
        else f"a local checkpoint folder `{Path(base).name}` (not a Hub model, so no `base_model` metadata)"
    )
    score = config["score"]
    words = ", ".join(
        f"`{w}` ({i})" for w, i in zip(config["label_tokens"], config["label_token_ids"], strict=True)
    )
    parity = config["parity"]
    return [
        "",
        "# Reranker exported by rerank-lab",
        "",
        "A judge that reads a (query, document) pair and scores how well the document meets the query; "
        + (
            "queries and documents may hold text, an image, or both."
            if vision
            else "this backbone reads text only (queries and documents are text)."
        ),
        "",
        f"- **Base model:** {base_text}; config sha256 `{config['base_config_sha256'][:16]}...`",
        f"- **Objective:** `{config['objective']}` with `{json.dumps(config['objective_args'] or {})}`",
        f"- **Score:** `{score}`: {SCORE_TEXT.get(score, score)}; higher means more relevant.",
        f"- **Label tokens (ids):** {words}",
        f"- **Training:** {_training_text(config)}",
        f"- **Budgets:** at most {config['max_length']} tokens per pair"
        + (
            f"; each image is resized to {config['min_pixels']:,}-{config['max_pixels']:,} pixels (also in "
            "`preprocessor_config.json`)."
            if vision
            else "."
        ),
        f"- **Parity:** the folder scores like the training module to {parity['max_abs_diff']:.1e} "
        f"(max |difference| on {parity['pairs']} pairs; tolerance {parity['tolerance']:.0e}).",
        "",
    ]


def _card_prompt_lines(example_prompt: str, example_tokens: str | None, vision: bool) -> list[str]:
    """The "Prompt" section: one rendered pair, and how many tokens an image becomes."""
    lines = [
        "## Prompt",
        "",
        f"One pair ({'a text query, an image + text document' if vision else 'a text query and a text document'}) "
        "as this folder's chat template renders it; "
        "the score is read at the last position, right after the assistant prompt:",
        "",
        "```text",
        example_prompt.rstrip("\n"),
        "```",
        "",
    ]
    if example_tokens:
        lines += [example_tokens, ""]
    return lines


def _card_snippet_lines(config: dict, snippet: str) -> list[str]:
    """The plain-transformers section: what the snippet leaves out, the snippet, and a call."""
    return [
        f"Pairs longer than {config['max_length']} tokens are cut by rerank-lab (document text first, then "
        "query text; never image tokens or the prompt), and rerank-lab tokenises the texts as plain text "
        "(a document holding a chat control string such as `<|im_end|>` cannot forge a turn). The snippet "
        "below does neither, so it matches rerank-lab for pairs within the budget whose texts hold no such "
        "string.",
        "",
        SNIPPET_HEADING,
        "",
        "```python",
        snippet.rstrip("\n"),
        "```",
        "",
        'For example `score("Find the document that matches the query.", {"text": "a red car"}, '
        '{"image": "car.png"})`. Batching needs left padding (the score is read at the last position).',
        "",
    ]


# The card's last section: scoring with rerank-lab's own Reranker.
_RERANK_LAB_LINES = [
    "## Score it with rerank-lab",
    "",
    "rerank-lab is not published on PyPI: install it from a checkout of its source "
    "(`pip install -e path/to/rerank-lab`, or `make install` there), then",
    "",
    "```python",
    "from lightning_modules.inference import Reranker",
    "",
    f'reranker = Reranker.from_pretrained("{MODEL_PLACEHOLDER}")',
    'reranker.rank("a red car", ["A red car parks.", {"image": "photo.png"}], instruction="Find the match.")',
    "```",
    "",
    "`Reranker` batches pairs, reuses the query prefix across candidates and applies the budgets above; "
    "its scores equal the snippet's.",
    "",
]


def model_card(
    config: dict, example_prompt: str, example_tokens: str | None, snippet: str, vision: bool = False
) -> str:
    """The ``README.md`` of an export.

    Args:
        config: the export's ``rerank_config.json`` contents (parity filled in).
        example_prompt: one pair rendered by the folder's chat template, before image expansion.
        example_tokens: a sentence on how many tokens an example image becomes (vision backbones).
        snippet: :func:`reference_snippet`'s code.
    """
    hub = hub_id(config["base_model"])
    lines = [
        *_card_metadata(hub),
        *_card_summary_lines(config, vision, hub),
        *_card_prompt_lines(example_prompt, example_tokens, vision),
        *_card_snippet_lines(config, snippet),
        *serve_lines(config, vision, MODEL_PLACEHOLDER),
        *_RERANK_LAB_LINES,
    ]
    return "\n".join(lines)


def seq_cls_card(card: str) -> str:
    """A seq-cls export's card: the causal-LM snippet and the rerank-lab section do not apply to it
    (no LM head), so they are replaced by a note; the metadata, prompt and "Serve it" stay."""
    head, _, rest = card.partition(SNIPPET_HEADING)
    serve = rest[rest.index(SERVE_HEADING) : rest.index("## Score it with rerank-lab")]
    note = (
        "## Form\n\nA one-label `*ForSequenceClassification` (rerank-lab `export --format seq-cls`): its head is "
        "the difference of the label rows of the trained LM head (or the positive row alone for a CL score), "
        "so `AutoModelForSequenceClassification` gives the score directly, read at the last position of the "
        "rendered pair. rerank-lab's `Reranker` needs the default export (with the LM head).\n\n"
    )
    return head + note + serve


def example_doc_pair() -> tuple[str, Doc, Doc]:
    """The (instruction, query, document) shown in the card (the image is only named, not read)."""
    return (
        "Find the document that matches the query.",
        Doc(text="a red car"),
        Doc(text="A red car parks near the house.", image="car.png"),
    )


# ---- the folder --------------------------------------------------------------------------


def write_pixel_budget(folder: Path, min_pixels: int, max_pixels: int) -> None:
    """Put the export's per-image pixel range into its image-processor config(s).

    Plain ``AutoImageProcessor.from_pretrained(folder)`` then resizes images exactly as rerank-lab
    does, instead of with the base's (usually much larger) range.
    """

    def patch(settings: dict) -> dict:
        settings = dict(settings)
        settings["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if key in settings:
                settings[key] = value
        return settings

    path = folder / "preprocessor_config.json"
    if path.is_file():
        path.write_text(json.dumps(patch(json.loads(path.read_text("utf-8"))), indent=2) + "\n", "utf-8")
    path = folder / "processor_config.json"  # transformers 5 may nest the image processor here
    if path.is_file():
        settings = json.loads(path.read_text("utf-8"))
        if isinstance(settings.get("image_processor"), dict):
            settings["image_processor"] = patch(settings["image_processor"])
            path.write_text(json.dumps(settings, indent=2) + "\n", "utf-8")


def check_image_processor(folder: Path, encoder: PairEncoder, triples) -> None:
    """The folder's own image-processor config must resize like the export's encoder."""
    if encoder.image_processor is None:
        return
    from transformers import AutoImageProcessor

    plain = AutoImageProcessor.from_pretrained(folder, backend="pil")
    images = [side.image for _, query, doc in triples for side in (query, doc) if side.image is not None]
    got = plain(images=[image.convert("RGB") for image in images], return_tensors="pt")
    want = encoder.process_images(images)
    grids = torch.stack([grid for _, grid in want])
    if not torch.equal(got["image_grid_thw"], grids) or not torch.equal(
        got["pixel_values"], torch.cat([pixels for pixels, _ in want])
    ):
        raise ExportParityError(
            f"{folder / 'preprocessor_config.json'} does not reproduce the pixel budget "
            f"{encoder.min_pixels}-{encoder.max_pixels}: grids {got['image_grid_thw'].tolist()} vs {grids.tolist()}"
        )


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def publish_modes(folder: Path) -> None:
    """Give the finished folder ordinary modes (what the umask allows of 0755 / 0644).

    Some writers create 0600 files (``tempfile``-style); an
    export is meant to be read by others (a shared model store, a Hub upload).
    """
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_card(staging: Path, config: dict, encoder: PairEncoder, score_params: dict) -> None:
    instruction, query, doc = example_doc_pair()
    vision = encoder.image_processor is not None
    if not vision:
        doc = Doc(text=doc.text)
    example_tokens = None
    if vision:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8))
        _, grid = encoder.process_images([image])[0]
        tokens = int(grid.prod()) // encoder.merge_size**2
        example_tokens = (
            f"Each `{encoder.image_token}` above stands for one image and is repeated t·h·w / merge_size² "
            f"times (`image_grid_thw` from the image processor, merge_size {encoder.merge_size}): a 224×224 "
            f"photo becomes {tokens} tokens under this folder's pixel budget."
        )
    head_keys = None
    if config["score"] == "projection":
        names = sorted(score_params)
        head_keys = (
            next(n for n in names if n.endswith("weight")),
            next(n for n in names if n.endswith("bias")),
        )
    string_content = bool(getattr(encoder, "string_content", False))
    snippet = reference_snippet(config, vision, encoder.image_token, head_keys, string_content)
    card = model_card(config, encoder.render(instruction, query, doc), example_tokens, snippet, vision)
    if config.get("layout") == "seq-cls":
        card = seq_cls_card(card)
    (staging / "README.md").write_text(card, encoding="utf-8")

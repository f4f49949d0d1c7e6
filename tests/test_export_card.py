"""The exported folder's model card: Hub metadata, a rendered prompt, and a plain-transformers snippet
that an outsider can run and that scores exactly like ``Reranker`` (text and image pairs)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_modules.export import export
from lightning_modules.export_folder import hub_id, model_card
from lightning_modules.inference import Reranker
from tests.helpers import CARD_INSTRUCTION, fit_checkpoint, run_snippet


@pytest.fixture(scope="module")
def exported(tiny_model_dir, demo_dir, tmp_path_factory):
    """A label_rows + LoRA checkpoint after two steps, exported with a 3136-6272 pixel budget."""
    folder = tmp_path_factory.mktemp("card")
    ckpt = fit_checkpoint(folder, tiny_model_dir, demo_dir, lm_head="label_rows")
    return export(ckpt, folder / "export", min_pixels=3136, max_pixels=6272)


def test_card_snippet_scores_like_reranker(exported, tmp_path):
    card = (exported / "README.md").read_text(encoding="utf-8")
    score = run_snippet(card, exported)["score"]
    rng = np.random.default_rng(3)
    photo, wide = tmp_path / "photo.png", tmp_path / "wide.png"
    # 224 px and 300x120: both larger than the budget, so the resize is exercised.
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(rng.integers(0, 256, (120, 300, 3), dtype=np.uint8)).save(wide)
    pairs = [
        ({"text": "a red car"}, {"text": "A red car parks near the house."}),  # text pair
        ({"text": "a red car"}, {"image": str(photo)}),  # image document
        ({"text": "two birds", "image": str(wide)}, {"text": "Two birds in a tree.", "image": str(photo)}),
    ]
    reranker = Reranker.from_pretrained(exported, device="cpu")
    for query, document in pairs:
        expected = reranker.score(query, [document], instruction=CARD_INSTRUCTION)[0]
        assert abs(score(CARD_INSTRUCTION, query, document) - expected) <= 1e-5, (query, document)
    # Not a constant: the snippet tells documents apart as Reranker does.
    got = [score(CARD_INSTRUCTION, q, d) for q, d in pairs]
    assert max(got) - min(got) > 1e-3


def test_card_metadata_prompt_and_install_line(exported):
    card = (exported / "README.md").read_text(encoding="utf-8")
    front = card.split("---\n")[1]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-ranking"
    assert "base_model" not in meta  # trained from a local folder: no path in Hub metadata
    assert "pip install rerank-lab" not in card and "pip install -e" in card
    prompt = re.search(r"```text\n(.*?)```", card, flags=re.S).group(1)
    assert "<Instruct>: Find the document that matches the query.<Query>:a red car" in prompt
    assert "<|vision_start|><|image_pad|><|vision_end|>A red car parks near the house." in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    assert "3,136-6,272 pixels" in card and "a 224×224 photo becomes 4 tokens" in card


def test_hub_metadata_names_only_hub_ids(tmp_path):
    assert hub_id("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert hub_id("gpt2") == "gpt2"
    for local in (str(tmp_path), "/data/models/qwen", "runs/demo/model", "./model", "a/b/c", ".."):
        assert hub_id(local) is None, local
    (tmp_path / "folder").mkdir()
    config = {
        "base_model": "Qwen/Qwen2-VL-2B-Instruct",
        "base_config_sha256": "0" * 64,
        "objective": "sft",
        "objective_args": {},
        "score": "yes_minus_no",
        "label_tokens": ["yes", "no"],
        "label_token_ids": [9693, 2152],
        "lora": {"r": 16, "merged_layers": 196},
        "lm_head": {"mode": "frozen", "row_delta_folded": False},
        "max_length": 3200,
        "min_pixels": 3136,
        "max_pixels": 1003520,
        "parity": {"max_abs_diff": 1e-7, "pairs": 7, "tolerance": 1e-4},
        "system_prompt": "Judge.",
    }
    meta = yaml.safe_load(model_card(config, "prompt", None, "pass\n").split("---\n")[1])
    assert meta["base_model"] == "Qwen/Qwen2-VL-2B-Instruct" and meta["base_model_relation"] == "finetune"


def test_card_snippet_for_a_text_only_model_with_a_string_only_template(tiny_model_dir, tmp_path):
    """A causal LM whose ChatML template takes string content only (SmolLM2-style): the card's
    snippet sends the user turn as one string and matches Reranker's zero-shot scores."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from datamodules.encoding import PairEncoder
    from lightning_modules.export_folder import write_card

    base = tmp_path / "text-lm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    reranker = Reranker.from_pretrained(base, device="cpu")
    encoder = PairEncoder.from_pretrained(base)
    assert encoder.image_processor is None and getattr(encoder, "string_content", True)
    card_config = {
        "base_model": str(base),
        "base_config_sha256": "0" * 64,
        "objective": "sft",
        "objective_args": {},
        "score": "yes_minus_no",
        "label_tokens": reranker.words,
        "label_token_ids": reranker.scorer.label_token_ids.tolist(),
        "system_prompt": encoder.system_prompt,
        "lora": {"r": 0, "merged_layers": 0},
        "lm_head": {"mode": "frozen", "row_delta_folded": False},
        "max_length": 512,
        "min_pixels": 3136,
        "max_pixels": 3136,
        "parity": {"max_abs_diff": 0.0, "pairs": 4, "tolerance": 1e-4},
    }
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    write_card(card_dir, card_config, encoder, {})
    card = (card_dir / "README.md").read_text(encoding="utf-8")
    assert "AutoModelForCausalLM" in card and "AutoImageProcessor" not in card
    # a text-only card speaks of text: no image budget, no preprocessor_config.json (not in the folder)
    assert "pixels" not in card and "preprocessor_config.json" not in card and "reads text only" in card
    score = run_snippet(card, base)["score"]
    for query, document in (("a red car", "A red car parks."), ("two birds", "The cat sits on a table.")):
        expected = reranker.score(query, [document], instruction=CARD_INSTRUCTION)[0]
        got = score(CARD_INSTRUCTION, {"text": query}, {"text": document})
        assert abs(got - expected) <= 1e-5, (query, document, got, expected)

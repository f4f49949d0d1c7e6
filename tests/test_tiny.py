"""Tiny offline Qwen-VL checkpoints: folder format, tokenizer, chat template, forward, determinism."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import huggingface_hub
import pytest
import torch
from PIL import Image

from lightning_modules import tiny
from lightning_modules.tiny import build
from lightning_modules.tiny import tokenizer as tiny_tokenizer

# Two shared cores: one torch thread avoids 10-100x slowdowns under contention.
torch.set_num_threads(1)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}

CHECKPOINT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Every family built once, with seed 0."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny.build_tiny(root / family, family=family, seed=0) for family in tiny.FAMILIES}


@pytest.fixture(scope="module")
def loaded(built: dict[str, pathlib.Path]) -> dict[str, tuple[Any, Any, Any]]:
    """``(model, tokenizer, image_processor)`` per family, loaded in offline mode via the Auto classes.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is patched along
    with the environment variable (the CLI test covers a process started with the variable set).
    """
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        assert huggingface_hub.is_offline_mode()
        return {
            family: (
                AutoModelForImageTextToText.from_pretrained(path).eval(),
                AutoTokenizer.from_pretrained(path),
                AutoImageProcessor.from_pretrained(path),
            )
            for family, path in built.items()
        }


def _image_batch(
    model: Any, tokenizer: Any, processor: Any, size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Model inputs for one chat-formatted pair holding one image, built as a reranker would."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Query: a red square."}, {"type": "image"}],
        }
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pixels = processor(images=[Image.new("RGB", size, (200, 20, 20))], return_tensors="pt")
    n_tokens = int(pixels["image_grid_thw"][0].prod()) // processor.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n_tokens, 1)
    encoded = tokenizer([text], return_tensors="pt")
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "pixel_values": pixels["pixel_values"],
        "image_grid_thw": pixels["image_grid_thw"],
        # Modality per position, as the HF processors build it: 1 on <|image_pad|> only.
        "mm_token_type_ids": (encoded["input_ids"] == model.config.image_token_id).long(),
    }


def test_folder_holds_a_normal_checkpoint(built: dict[str, pathlib.Path]) -> None:
    for family, path in built.items():
        assert {p.name for p in path.iterdir()} >= CHECKPOINT_FILES
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == family
        assert config["architectures"] == [MODEL_CLASSES[family]]
        assert config["tie_word_embeddings"] is False


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_loads_offline_through_auto_classes(loaded: dict[str, tuple[Any, Any, Any]], family: str) -> None:
    from transformers.utils import is_torchvision_available

    model, tokenizer, processor = loaded[family]
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    expected_processor = "Qwen2VLImageProcessor" if is_torchvision_available() else "Qwen2VLImageProcessorPil"
    assert type(processor).__name__ == expected_processor
    assert tokenizer.padding_side == "left"
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32

    names = [name for name, _ in model.named_parameters()]
    assert any(name.startswith("model.language_model.layers.") for name in names)
    assert any(name.startswith("model.visual.") for name in names)

    head = model.get_output_embeddings().weight
    assert tuple(head.shape) == (len(tokenizer), tiny.TEXT_HIDDEN)
    assert head.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_label_words_are_single_tokens(loaded: dict[str, tuple[Any, Any, Any]]) -> None:
    _, tokenizer, _ = loaded["qwen2_vl"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt)["input_ids"]
    for word in tiny.LABEL_WORDS:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
        # In context: the answer word right after "assistant\n" is the same single token.
        assert tokenizer(prompt + word)["input_ids"] == [*prompt_ids, ids[0]]
    assert len({tokenizer.convert_tokens_to_ids(w) for w in tiny.LABEL_WORDS}) == len(tiny.LABEL_WORDS)


def test_special_tokens(loaded: dict[str, tuple[Any, Any, Any]]) -> None:
    for model, tokenizer, _ in loaded.values():
        ids = tokenizer.convert_tokens_to_ids(list(tiny.SPECIAL_TOKENS))
        # Appended after the BPE vocabulary in Qwen's order, like ids 151643..151656 in Qwen.
        first = ids[0]
        assert ids == list(range(first, first + len(tiny.SPECIAL_TOKENS)))
        assert first + len(tiny.SPECIAL_TOKENS) == len(tokenizer)
        assert tokenizer.pad_token == "<|endoftext|>"
        assert tokenizer.eos_token == "<|im_end|>"
        assert set(tiny.SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
        # Special tokens are atomic in running text.
        assert (
            tokenizer("a<|image_pad|><|image_pad|>b", add_special_tokens=False)["input_ids"][1:3]
            == [tokenizer.convert_tokens_to_ids("<|image_pad|>")] * 2
        )
        config = model.config
        assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")


def test_chat_template_renders_qwen2_vl_format(loaded: dict[str, tuple[Any, Any, Any]]) -> None:
    _, tokenizer, _ = loaded["qwen3_vl"]
    messages = [
        {"role": "system", "content": "Judge relevance."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Query: a cat. Document: "},
                {"type": "image"},
                {"type": "text", "text": "Relevant?"},
            ],
        },
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nJudge relevance.<|im_end|>\n"
        "<|im_start|>user\nQuery: a cat. Document: <|vision_start|><|image_pad|><|vision_end|>"
        "Relevant?<|im_end|>\n<|im_start|>assistant\n"
    )
    # String content, the default system turn, and no generation prompt.
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_forward_with_one_image(loaded: dict[str, tuple[Any, Any, Any]], family: str) -> None:
    model, tokenizer, processor = loaded[family]
    batch = _image_batch(model, tokenizer, processor, (56, 56))
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        out = model(**batch)
        hidden = model.model(**batch).last_hidden_state
    assert out.logits.shape == (1, length, len(tokenizer))
    assert torch.isfinite(out.logits).all()
    assert hidden.shape == (1, length, tiny.TEXT_HIDDEN)
    # The LM head is a plain [vocab, hidden] matrix: label rows can be read without full logits.
    head = model.get_output_embeddings().weight
    torch.testing.assert_close(hidden[:, -1] @ head.T, out.logits[:, -1], rtol=1e-4, atol=1e-5)


def test_56px_image_is_four_tokens(loaded: dict[str, tuple[Any, Any, Any]]) -> None:
    model, tokenizer, processor = loaded["qwen2_vl"]
    pixels = processor(images=[Image.new("RGB", (56, 56))], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(pixels["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    batch = _image_batch(model, tokenizer, processor, (56, 56))
    assert int(batch["mm_token_type_ids"].sum()) == 4
    # Qwen3-VL: 16-pixel patches, so 64x64 is its 2x2-merged 4-token image.
    _, _, processor3 = loaded["qwen3_vl"]
    pixels3 = processor3(images=[Image.new("RGB", (64, 64))], return_tensors="pt")
    assert pixels3["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(pixels3["pixel_values"].shape) == (16, 3 * 2 * 16 * 16)


def test_same_seed_same_bytes_other_seed_differs(
    built: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    again = tiny.build_tiny(tmp_path / "again", family="qwen2_vl", seed=0)
    other = tiny.build_tiny(tmp_path / "other", family="qwen2_vl", seed=1)
    reference = built["qwen2_vl"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (reference / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (reference / "model.safetensors").read_bytes()


def test_bpe_training_is_deterministic() -> None:
    # The trainer's hash maps are seeded per instance, so a fresh, uncached run exercises a
    # different iteration order.
    assert tiny_tokenizer._train_bpe.__wrapped__() == tiny_tokenizer._train_bpe()


def test_missing_words_get_merged_into_single_tokens() -> None:
    from tokenizers.models import BPE

    vocab, merges = tiny_tokenizer._train_bpe()
    word = "zyzzyvaqq"  # repeated letters: a new merge also fires inside the word
    before = BPE(vocab=dict(vocab), merges=list(merges))
    assert len(before.tokenize(word)) > 1
    new_vocab, new_merges = tiny_tokenizer._ensure_single_tokens(vocab, merges, [word])
    after = BPE(vocab=dict(new_vocab), merges=list(new_merges))
    assert [t.value for t in after.tokenize(word)] == [word]
    assert [i for _, i in new_vocab] == list(range(len(new_vocab)))
    for text in ("relevant", "Ġdocument", "Query"):
        assert [t.value for t in after.tokenize(text)] == [t.value for t in before.tokenize(text)]


def test_cli_in_fresh_offline_process_matches_in_process_build(
    built: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules.tiny", "--out", str(out), "--family", "qwen3_vl"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Another process (other hash seeds) must reproduce tokenizer and weights byte for byte.
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (out / name).read_bytes() == (built["qwen3_vl"] / name).read_bytes(), name


def test_unknown_family_is_rejected(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="qwen2_vl"):
        tiny.build_tiny(tmp_path, family="llava")


def test_a_taken_out_is_refused_untouched_and_the_cli_says_so(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        tiny.build_tiny(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert build.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: already exists"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left beside it


def test_a_failed_build_leaves_nothing(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        build, "build_image_processor", lambda family: type("P", (), {"save_pretrained": broken})()
    )
    with pytest.raises(OSError, match="No space"):
        tiny.build_tiny(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

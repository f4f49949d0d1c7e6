"""Export: LoRA merged, label-row offset folded, plain HF folder that scores like the training module."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch
from safetensors import safe_open

from lightning_modules.export import ExportParityError, base_fingerprint, config_sha256, export
from lightning_modules.inference import Reranker
from lightning_modules.reranker import RerankerModule
from tests.helpers import BUDGETS, fit_checkpoint

pytestmark = pytest.mark.usefixtures("umask_022")  # exports get the modes an ordinary umask gives


@pytest.fixture(scope="module")
def trained_ckpt(tiny_model_dir, demo_dir, tmp_path_factory):
    """LoRA r=4 + label_rows after two optimizer steps."""
    return fit_checkpoint(tmp_path_factory.mktemp("trained"), tiny_model_dir, demo_dir, lm_head="label_rows")


def pairs_for(demo_dir):
    """A few real demo queries with their candidates (text and image, both sides)."""
    from datamodules.formats import list_tasks, load_task

    out = []
    for folder in list_tasks(demo_dir / "mrb")[:3]:
        task = load_task(folder)
        qid = sorted(task.candidates)[0]
        docs = sorted(task.candidates[qid], key=lambda d: -task.candidates[qid][d])[:4]
        out.append((task.meta.instruction, task.queries[qid], [task.corpus[d] for d in docs]))
    return out


def module_scores(module, encoder, triples) -> torch.Tensor:
    scores = []
    with torch.no_grad():
        for instruction, query, docs in triples:
            scores.append(module.rank_pairs(encoder.encode_group(instruction, query, docs)))
    return torch.cat(scores)


def reranker_scores(reranker, triples) -> torch.Tensor:
    return torch.tensor([s for ins, q, docs in triples for s in reranker.score(q, docs, instruction=ins)])


def check_round_trip(ckpt, out, base, demo_dir) -> tuple[dict, Reranker]:
    export(ckpt, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_dir()} == {0o755}  # 1_LogitScore
    config = json.loads((out / "rerank_config.json").read_text())
    assert config["base_model"] == str(base)
    assert config["parity"]["max_abs_diff"] <= 1e-4
    for name in ("config.json", "model.safetensors", "README.md", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert (out / "preprocessor_config.json").is_file()
    with safe_open(out / "model.safetensors", "pt") as handle:
        keys = list(handle.keys())
    assert keys and not any("lora" in key or "base_layer" in key for key in keys)

    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert config["base_config_sha256"] == config_sha256(model.config)

    module = RerankerModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    reranker = Reranker.from_pretrained(out, device="cpu", batch_size=3)
    triples = pairs_for(demo_dir)
    expected = module_scores(module, reranker.encoder, triples)
    got = reranker_scores(reranker, triples)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    zero_shot = reranker_scores(Reranker.from_pretrained(base, device="cpu", **BUDGETS), triples)
    assert (got - zero_shot).abs().max() > 1e-3  # the training changed the scores, and export kept it
    return config, reranker


def test_export_round_trip_with_label_rows(trained_ckpt, tiny_model_dir, demo_dir, tmp_path):
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    lora_b = [v for k, v in checkpoint["state_dict"].items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    config, reranker = check_round_trip(trained_ckpt, tmp_path / "export", tiny_model_dir, demo_dir)
    assert config["objective"] == "sft" and config["score"] == "yes_minus_no"
    assert config["label_tokens"] == ["yes", "no"]
    assert config["lm_head"] == {"mode": "label_rows", "row_delta_folded": True}
    assert (config["max_length"], config["min_pixels"], config["max_pixels"]) == (512, 3136, 3136)

    # Only the label rows of the head moved; the input embeddings are the base's.
    base = Reranker.from_pretrained(tiny_model_dir, device="cpu").scorer.model
    exported = reranker.scorer.model
    ids = reranker.scorer.label_token_ids
    delta = (exported.lm_head.weight - base.lm_head.weight).abs().sum(dim=1)
    assert delta[ids].min() > 0 and delta.sum() == delta[ids].sum()
    assert torch.equal(exported.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_export_round_trip_lora_only(tiny_model_dir, demo_dir, tmp_path):
    ckpt = fit_checkpoint(tmp_path, tiny_model_dir, demo_dir)
    config, _ = check_round_trip(ckpt, tmp_path / "export", tiny_model_dir, demo_dir)
    assert config["lora"]["merged_layers"] > 0 and config["score_head"] is None


def test_export_projection_direction_saves_the_score_head(tiny_model_dir, demo_dir, tmp_path):
    ckpt = fit_checkpoint(
        tmp_path,
        tiny_model_dir,
        demo_dir,
        objective="url",
        objective_args={"weight": "cl", "direction": "projection"},
    )
    out = export(ckpt, tmp_path / "export")
    config = json.loads((out / "rerank_config.json").read_text())
    assert config["score"] == "projection" and (out / config["score_head"]).is_file()
    module = RerankerModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    reranker = Reranker.from_pretrained(out, device="cpu")
    triples = pairs_for(demo_dir)[:1]
    torch.testing.assert_close(
        reranker_scores(reranker, triples),
        module_scores(module, reranker.encoder, triples),
        atol=1e-4,
        rtol=0,
    )
    # The same export's model card: its plain-transformers snippet reads the projection head too.
    from tests.helpers import CARD_INSTRUCTION, run_snippet

    score = run_snippet((out / "README.md").read_text(encoding="utf-8"), out)["score"]
    for document in ({"text": "A red car parks near the house."}, {"text": "The cat sits."}):
        expected = reranker.score("a red car", [document], instruction=CARD_INSTRUCTION)[0]
        got = score(CARD_INSTRUCTION, {"text": "a red car"}, document)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0)


def test_export_unties_a_tied_head_before_folding_label_rows(tiny_model_dir, demo_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    tied = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, tied)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = model.config.get_text_config().tie_word_embeddings = True
    model.lm_head.weight = model.get_input_embeddings().weight
    (tied / "model.safetensors").unlink()
    model.save_pretrained(tied)
    ckpt = fit_checkpoint(tmp_path, tied, demo_dir, lm_head="label_rows")
    export(ckpt, tmp_path / "export")
    exported = Reranker.from_pretrained(tmp_path / "export", device="cpu").scorer.model
    base = Reranker.from_pretrained(tied, device="cpu").scorer.model
    assert base.lm_head.weight.data_ptr() == base.get_input_embeddings().weight.data_ptr()
    assert exported.lm_head.weight.data_ptr() != exported.get_input_embeddings().weight.data_ptr()
    assert torch.equal(exported.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert not torch.equal(exported.lm_head.weight, base.lm_head.weight)


def test_export_refuses_a_non_empty_folder(trained_ckpt, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        export(trained_ckpt, out)
    assert (out / "notes.txt").read_text() == "user data" and len(list(out.iterdir())) == 1


def test_export_refuses_a_base_that_changed_since_training(trained_ckpt, tmp_path):
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint.setdefault("rerank_lab", {})["base_fingerprint"] = "0" * 64
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="base changed"):
        export(tmp_path / "other.ckpt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_fingerprint_sees_through_lora_and_dtype(tiny_model_dir):
    module = RerankerModule(str(tiny_model_dir), lora_r=4)
    plain = Reranker.from_pretrained(tiny_model_dir, device="cpu")
    assert base_fingerprint(module.scorer.model) == base_fingerprint(plain.scorer.model)
    bf16 = Reranker.from_pretrained(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert base_fingerprint(bf16.scorer.model) == base_fingerprint(plain.scorer.model)


def test_parity_failure_leaves_nothing_behind(trained_ckpt, tmp_path, monkeypatch):
    import lightning_modules.export as export_module

    monkeypatch.setattr(export_module, "fold_row_delta", lambda *args: False)  # a broken merge
    with pytest.raises(ExportParityError):
        export(trained_ckpt, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert not any(p.name.startswith(".export.partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "trained",
    [{"lora_r": 0}, {"lm_head": "full"}, {"train_merger": True}],
    ids=["lora_r0", "lm_head_full", "train_merger"],
)
def test_export_of_checkpoints_that_trained_base_weights(trained, tiny_model_dir, demo_dir, tmp_path):
    """Base tensors trained in place (not LoRA): the base is fingerprinted before they are loaded."""
    ckpt = fit_checkpoint(tmp_path, tiny_model_dir, demo_dir, **trained)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    base_tensors = [name for name in state if "lora_" not in name and "row_delta" not in name]
    assert base_tensors  # the checkpoint holds trained copies of base weights
    config, reranker = check_round_trip(ckpt, tmp_path / "export", tiny_model_dir, demo_dir)
    assert config["lora"]["r"] == trained.get("lora_r", 4)
    assert config["lm_head"]["mode"] == trained.get("lm_head", "frozen")
    assert config["train_merger"] is bool(trained.get("train_merger"))
    base = Reranker.from_pretrained(tiny_model_dir, device="cpu").scorer.model.state_dict()
    exported = reranker.scorer.model.state_dict()
    changed = [name for name in base_tensors if name.startswith("scorer.model.")]
    assert changed and any(
        not torch.equal(
            exported[name.removeprefix("scorer.model.")], base[name.removeprefix("scorer.model.")]
        )
        for name in changed
    )


def test_export_takes_a_moved_base_and_still_checks_it(trained_ckpt, tiny_model_dir, tmp_path, capsys):
    from lightning_modules.export import main
    from lightning_modules.tiny import build_tiny

    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, moved)
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["model_name_or_path"] = str(tmp_path / "gone")
    torch.save(checkpoint, tmp_path / "moved.ckpt")
    assert main(["--ckpt", str(tmp_path / "moved.ckpt"), "--out", str(tmp_path / "a")]) == 2  # bad input
    err = capsys.readouterr().err
    assert "cannot load its base" in err and "--base" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()

    out = tmp_path / "b"
    assert main(["--ckpt", str(tmp_path / "moved.ckpt"), "--out", str(out), "--base", str(moved)]) == 0
    assert json.loads((out / "rerank_config.json").read_text())["base_model"] == str(moved)

    other = build_tiny(tmp_path / "other", family="qwen2_vl", seed=1)
    args = ["--ckpt", str(trained_ckpt), "--out", str(tmp_path / "c"), "--base", str(other)]
    assert main(args) == 2
    assert "the base changed since training" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_export_never_trusts_remote_code_on_the_checkpoint_s_word(trained_ckpt, tmp_path, capsys):
    from lightning_modules.export import main

    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["trust_remote_code"] = True
    torch.save(checkpoint, tmp_path / "remote.ckpt")
    assert main(["--ckpt", str(tmp_path / "remote.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_writes_its_pixel_budget_into_the_image_processor(trained_ckpt, tmp_path):
    """A plain AutoImageProcessor read from the export resizes like rerank-lab (not the base's range)."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    out = export(trained_ckpt, tmp_path / "export", min_pixels=3136, max_pixels=6272)
    processor = AutoImageProcessor.from_pretrained(out, backend="pil")
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (3136, 6272)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    grid = processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) * 14 * 14 <= 6272 and grid.tolist() == [1, 4, 4]

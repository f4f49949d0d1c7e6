"""Helpers that several test modules share: builders of small inputs (demo data, training files, MRB
tasks, Hub datasets, images), a quiet CPU Trainer, a checkpoint after two real optimizer steps, and
in-process runs of the command-line tools. Tests import them from here (never from another test
module); fixtures that need pytest's scoping live in ``conftest.py``."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from datamodules.datamodule import RerankDataModule
from datamodules.stream import StreamBatch
from datamodules.validate import main as validate_main
from experiments.cli import main as cli_main
from experiments.eval_writer import EvalWriter
from lightning_modules.export_folder import MODEL_PLACEHOLDER, extract_snippet
from lightning_modules.reranker import RerankerModule


# ---- the demo DataModule, a quiet CPU Trainer, an encoded training batch (was test_reranker.py) ----
def make_data(tiny_model_dir, demo_dir, **overrides) -> RerankDataModule:
    kwargs = dict(
        model_name_or_path=str(tiny_model_dir),
        train_root=str(demo_dir / "train"),
        eval_root=str(demo_dir / "mrb"),
        num_negatives=3,
        batch_size=2,
        eval_top_k=20,
        max_length=512,
        min_pixels=3136,
        max_pixels=3136,
    )
    kwargs.update(overrides)
    return RerankDataModule(**kwargs)


def cpu_trainer(root, writer: bool = True, **overrides) -> L.Trainer:
    """A quiet CPU Trainer for tests: no logger, bar, summary or checkpoints unless overridden; with
    the evaluation writer the CLI adds (tables, eval_history.jsonl, TREC runs) unless ``writer=False``."""
    kwargs = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    callbacks = [*overrides.pop("callbacks", []), *([EvalWriter()] if writer else [])]
    return L.Trainer(**{**kwargs, **overrides, "callbacks": callbacks})


def first_batch(data: RerankDataModule, count: int = 2, predicate=lambda group: True) -> dict:
    """A training batch (encoded groups) of the first ``count`` streamed groups that satisfy ``predicate``."""
    data.setup("fit")
    groups = []
    for stream_batch in data.train_stream:
        groups += [g for g in stream_batch.groups if predicate(g)]
        if len(groups) >= count:
            break
    return data.encode_train(
        StreamBatch(0, 0, 0, groups[:count], ids=[], group_size=data.hparams.num_negatives + 1)
    )


# ---- a LoRA checkpoint after two optimizer steps through the real Trainer (was test_export.py) ----
BUDGETS = {"max_length": 512, "min_pixels": 3136, "max_pixels": 3136}


def train_data(tiny_model_dir, demo_dir, base=None) -> RerankDataModule:
    return RerankDataModule(
        model_name_or_path=str(base or tiny_model_dir),
        train_root=str(demo_dir / "train"),
        num_negatives=3,
        batch_size=2,
        **BUDGETS,
    )


def fit_checkpoint(folder, base, demo_dir, **module_kwargs):
    """Two optimizer steps through the real Trainer and checkpoint code (LoRA B becomes non-zero)."""
    torch.manual_seed(0)
    module = RerankerModule(str(base), **{"lora_r": 4, "lr": 1e-2, **module_kwargs})
    trainer = cpu_trainer(folder, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=train_data(None, demo_dir, base=base))
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


# ---- clean training files / MRB tasks, and `python -m datamodules.validate` in-process (was test_validate.py) ----
def png(path: Path, size=(16, 16), colour=(10, 200, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def validate_cli(capsys, *argv) -> tuple[int, list[str]]:
    code = validate_main([str(a) for a in argv])
    return code, capsys.readouterr().out.strip().splitlines()


def good_record(k: int) -> dict:
    return {
        "task": "alpha",
        "instruction": "find it",
        "query": {"text": f"query {k}", "image": f"images/q{k % 3}.png"},
        "positives": [{"text": f"positive {k}"}],
        "hard_negatives": [{"image": "images/q0.png"}, {"text": f"hard {k}"}],
    }


def write_clean_train(root: Path, n: int = 24) -> None:
    for i in range(3):
        png(root / "images" / f"q{i}.png", colour=(i * 80, 10, 10))
    (root / "a.jsonl").write_text("\n".join(json.dumps(good_record(k)) for k in range(n // 2)) + "\n\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(good_record(k)) for k in range(n // 2, n)) + "\n")


def write_task(task: Path, queries=3, docs=6) -> None:
    task.mkdir(parents=True)
    png(task / "images" / "d0.png")
    (task / "task.json").write_text(json.dumps({"family": "T2I", "instruction": "find", "metric": "ndcg@10"}))
    (task / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "text": f"q {i}"}) + "\n" for i in range(queries))
    )
    corpus = [{"id": f"d{i}", "text": f"doc {i}"} for i in range(docs)]
    corpus[0]["image"] = "images/d0.png"
    (task / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (task / "qrels.tsv").write_text("".join(f"q{i} 0 d{i} 1\nq{i} 0 d{i + 1} 0\n" for i in range(queries)))
    (task / "candidates.trec").write_text(
        "".join(f"q{i} Q0 d{j} {j + 1} {10 - j}.5 bm25\n" for i in range(queries) for j in range(docs))
    )


# ---- a demo fit through the CLI (was test_cli.py) ----------------------------------------------
def fit_args(tiny_model_dir, demo_dir, runs_dir, *extra):
    return [
        "fit",
        "--config",
        "experiments/configs/demo.yaml",
        f"--model.model_name_or_path={tiny_model_dir}",
        f"--data.train_root={demo_dir / 'train'}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        "--data.eval_tasks=[faces-i2i, stdlib-docs]",
        "--data.eval_top_k=5",
        f"--runs_dir={runs_dir}",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=4",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def resume_error(tiny_model_dir, demo_dir, runs_dir, ckpt, capsys) -> str:
    """The stderr of a demo fit resumed from ``ckpt`` that must stop with exit code 1."""
    args = fit_args(
        tiny_model_dir, demo_dir, runs_dir, "--validate_before_fit=false", "--trainer.logger=false"
    )
    with pytest.raises(SystemExit) as caught:
        cli_main([*args, f"--ckpt_path={ckpt}"])
    assert caught.value.code == 1
    return capsys.readouterr().err


# ---- small images and a UMRB dataset as on the Hub (was test_convert.py) -----------------------
def image_bytes(color: tuple[int, int, int], fmt: str, size: tuple[int, int] = (9, 7)) -> bytes:
    """A small image whose first pixel differs from the rest, so pixel order matters."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.putpixel((0, 0), (color[2], color[0], color[1]))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def same_pixels(path: str | Path, data: bytes) -> bool:
    with Image.open(path) as stored, Image.open(io.BytesIO(data)) as original:
        return stored.size == original.size and list(stored.convert("RGB").getdata()) == list(
            original.convert("RGB").getdata()
        )


def write_umrb(src: Path, layout: str = "files") -> dict[str, bytes]:
    """UMRB as on the Hub: id, modality, text, image (the Image feature, bytes embedded); qrels with Q0.

    ``layout``: ``files`` (query/corpus/qrels.parquet), ``shards`` (the parquet-converter folders), or
    ``card`` (renamed files found through the dataset card's configs, as in the UMRB cards)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    png, jpg = image_bytes((200, 10, 10), "PNG"), image_bytes((10, 200, 10), "JPEG")
    png2 = image_bytes((1, 2, 250), "PNG", (5, 11))
    features = Features(
        {"id": Value("string"), "modality": Value("string"), "text": Value("string"), "image": ImageFeature()}
    )
    query = {
        "id": ["q1", "q2", "q3"],
        "modality": ["image,text", "image", "text"],
        "text": ["what is red?", None, "green thing"],
        "image": [{"bytes": png, "path": "q1.png"}, {"bytes": jpg, "path": "q2.jpg"}, None],
    }
    corpus = {
        "id": ["c1", "c2", "c3", "c4"],
        "modality": ["text", "image", "image,text", "text"],
        "text": ["a red square", "caption not part of an image record", "green", "unrelated"],
        "image": [None, {"bytes": png, "path": "dup.png"}, {"bytes": png2, "path": "c3.png"}, None],
    }
    qrels = {
        "query-id": ["q1", "q1", "q2", "q3"], "Q0": ["Q0"] * 4,
        "corpus-id": ["c1", "c4", "c2", "c3"], "score": [1, 0, 1, 2],
    }  # fmt: skip
    qrels_features = Features(
        {
            "query-id": Value("string"),
            "Q0": Value("string"),
            "corpus-id": Value("string"),
            "score": Value("int8"),
        }
    )
    if layout == "shards":  # the Hub's parquet-converter layout: <config>/<split>/<shard>.parquet
        names = {"query": "query/test/0000.parquet", "corpus": "corpus/corpus/0000.parquet",
                 "qrels": "qrels/test/0000.parquet"}  # fmt: skip
    elif layout == "card":
        names = {"query": "data/q.parquet", "corpus": "data/c.parquet", "qrels": "data/j.parquet"}
        (src / "README.md").parent.mkdir(parents=True, exist_ok=True)
        (src / "README.md").write_text(
            "---\nconfig_names:\n  - query\n  - corpus\n  - qrels\nconfigs:\n"
            "  - config_name: qrels\n    data_files:\n      - split: test\n        path: data/j.parquet\n"
            "  - config_name: corpus\n    data_files:\n      - split: corpus\n        path: data/c.parquet\n"
            "  - config_name: query\n    data_files:\n      - split: test\n        path: data/q.parquet\n---\n"
        )
    else:
        names = {"query": "query.parquet", "corpus": "corpus.parquet", "qrels": "qrels.parquet"}
    for name, table, feats in (
        ("query", query, features),
        ("corpus", corpus, features),
        ("qrels", qrels, qrels_features),
    ):
        (src / names[name]).parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(table, features=feats).to_parquet(str(src / names[name]))
    return {"png": png, "jpg": jpg, "png2": png2}


# ---- the exported model card's snippet, run as an outsider would (was test_export_card.py) -----
CARD_INSTRUCTION = "Find the document that matches the query."


def run_snippet(card: str, folder) -> dict:
    """Execute the card's snippet, pointed at ``folder``, as an outsider would; returns its namespace."""
    code = extract_snippet(card)
    assert code.count(f'MODEL = "{MODEL_PLACEHOLDER}"') == 1
    imported = set(re.findall(r"^(?:from|import) (\w+)", code, flags=re.M))
    assert imported <= {"os", "torch", "safetensors", "PIL", "transformers"}, imported  # no rerank-lab
    assert len(code.splitlines()) <= 45
    namespace: dict = {}
    exec(compile(code.replace(MODEL_PLACEHOLDER, str(folder)), "model-card-snippet", "exec"), namespace)
    return namespace

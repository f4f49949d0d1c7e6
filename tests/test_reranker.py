"""The reranker LightningModule and DataModule on the tiny model and the demo benchmark."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules.metrics import evaluate_run
from datamodules.ranking import ranked
from lightning_modules.reranker import RerankerModule, count_parameters
from tests.helpers import cpu_trainer, first_batch, make_data


def test_lora_targets_only_the_language_model(tiny_model_dir):
    module = RerankerModule(str(tiny_model_dir), lora_r=4)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("language_model" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    n_trainable, n_total = count_parameters(module)
    assert 0 < n_trainable < n_total


def test_unmatched_lora_target_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match="matched no module"):
        RerankerModule(str(tiny_model_dir), lora_r=4, lora_target=r".*no_such_module.*")


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_training_steps_reduce_the_loss_on_a_fixed_batch(tiny_model_dir, demo_dir, objective):
    torch.manual_seed(0)
    batch = first_batch(make_data(tiny_model_dir, demo_dir))
    module = RerankerModule(str(tiny_model_dir), objective=objective, lora_r=0, lr=1e-3)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = module.loss_step(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert batch.positives.shape == (2, 4) and batch.positives[:, 0].all()
    assert losses[-1] < 0.6 * losses[0]


def test_validation_reports_every_task_and_the_retriever_exactly(tiny_model_dir, demo_dir, tmp_path):
    data = make_data(tiny_model_dir, demo_dir)
    module = RerankerModule(str(tiny_model_dir), lora_r=0)
    trainer = cpu_trainer(tmp_path, inference_mode=False)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    tasks = data.task_metas
    assert len(tasks) >= 6
    for meta in tasks:
        assert f"val/{meta.name}/{meta.metric}" in metrics
    assert {f"val/family/{m.family}" for m in tasks} <= set(metrics)
    per_task = [metrics[f"val/{m.name}/{m.metric}"] for m in tasks]
    assert metrics["val/mrb_avg"] == pytest.approx(sum(per_task) / len(per_task), abs=1e-6)

    # The retriever number is the first-stage run scored by the evaluator's own code.
    expected = []
    for task in data._eval_tasks():
        top = {q: dict(ranked(d, 20)) for q, d in task.candidates.items()}
        values = evaluate_run(top, task.qrels, task.meta.metric)
        expected.append(sum(values.values()) / len(values))
    assert metrics["val/retriever_avg"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)

    # A local record and one TREC run per task are written into the run folder.
    record = json.loads((tmp_path / "eval_history.jsonl").read_text().splitlines()[-1])
    assert record["average"] == pytest.approx(metrics["val/mrb_avg"], abs=1e-6)
    written = sorted(p.stem for p in (tmp_path / "runs" / "val-step0").glob("*.trec"))
    assert written == sorted(m.name for m in tasks)


def test_a_validation_is_recorded_in_eval_history_and_not_in_metrics_jsonl(
    tiny_model_dir, demo_dir, tmp_path
):
    """One local record per fact: a validation's values (per task, families, average, retriever,
    step) are its eval_history.jsonl line; metrics.jsonl holds the training scalars only."""
    from experiments.callbacks import EvalBookkeeping, LocalMetrics

    data = make_data(tiny_model_dir, demo_dir, eval_tasks=["faces-i2i", "stdlib-docs"], eval_top_k=5)
    module = RerankerModule(str(tiny_model_dir), lora_r=0, lr=1e-3)
    callbacks = [LocalMetrics(), EvalBookkeeping()]
    trainer = cpu_trainer(
        tmp_path, callbacks=callbacks, max_steps=2, val_check_interval=2, log_every_n_steps=1
    )
    trainer.fit(module, datamodule=data)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    assert "val/mrb_avg" in logged and "val/retriever_avg" in logged

    (record,) = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert (record["stage"], record["step"]) == ("val", 2)
    recorded = {"val/mrb_avg": record["average"], "val/retriever_avg": record["retriever"]["average"]}
    recorded |= {f"val/family/{family}": value for family, value in record["families"].items()}
    recorded |= {f"val/{task}/{r['metric']}": r["value"] for task, r in record["tasks"].items()}
    assert recorded.keys() == logged.keys()
    for key, value in logged.items():  # the loggers get float32 copies of the recorded values
        assert recorded[key] == pytest.approx(value, abs=1e-6)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all("train/loss" in row for row in rows)
    assert not [key for row in rows for key in row if key.startswith("val/")]


def test_the_module_alone_computes_and_logs_but_writes_no_file(tiny_model_dir, demo_dir, tmp_path, capsys):
    """Without the evaluation writer (experiments/eval_writer.py) validate, test and predict leave
    the run folder empty and print no table; the result is handed over in ``eval_result``."""
    data = make_data(tiny_model_dir, demo_dir, eval_tasks=["faces-i2i", "stdlib-docs"], eval_top_k=5)
    module = RerankerModule(str(tiny_model_dir), lora_r=0)
    trainer = cpu_trainer(tmp_path / "run", writer=False)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    result = module.eval_result
    assert (result.stage, result.step) == ("val", 0)
    # Logged from the same float64 summary (Lightning keeps logged scalars as float32).
    assert result.summary.average == pytest.approx(metrics["val/mrb_avg"], abs=1e-7)
    assert result.retriever.average == pytest.approx(metrics["val/retriever_avg"], abs=1e-7)
    assert sorted(result.runs) == sorted(result.summary.tasks) == ["faces-i2i", "stdlib-docs"]
    for task, run in result.runs.items():  # every judged query's candidates, scored
        assert len(run) >= result.summary.tasks[task].n_queries and all(len(d) == 5 for d in run.values())
    trainer.test(module, datamodule=data, verbose=False)
    assert module.eval_result.stage == "test"
    trainer.predict(module, datamodule=data)
    assert module.eval_result.stage == "predict" and module.eval_result.summary is None
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))
    assert "reranked vs first-stage retriever" not in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["frozen", "label_rows", "full"])
def test_lm_head_modes_train_only_what_they_say(tiny_model_dir, demo_dir, mode):
    batch = first_batch(make_data(tiny_model_dir, demo_dir), count=1)
    module = RerankerModule(str(tiny_model_dir), lora_r=4, lm_head=mode)
    module.loss_step(batch).loss.backward()
    head = module.scorer.lm_head.weight
    label_ids = module.scorer.label_token_ids
    if mode == "frozen":
        assert not head.requires_grad and module.scorer.row_delta is None
    elif mode == "label_rows":
        assert not head.requires_grad
        assert module.scorer.row_delta.grad is not None and module.scorer.row_delta.grad.abs().sum() > 0
    else:
        assert head.grad is not None
        others = torch.ones(head.shape[0], dtype=torch.bool)
        others[label_ids] = False
        assert head.grad[label_ids].abs().sum() > 0 and head.grad[others].abs().sum() == 0


@pytest.mark.parametrize("objective", ["cl", "sft"])
def test_micro_batched_group_has_the_gradients_of_the_whole_group(tiny_model_dir, demo_dir, objective):
    """pairs_per_forward=1 (checkpointed two-pass) equals one forward over the group, fp64."""
    # Two groups with image queries, so image slicing is exercised.
    batch = first_batch(make_data(tiny_model_dir, demo_dir), predicate=lambda group: group.query.image)
    assert any(pair.pixel_values for group in batch.groups for pair in group)
    lengths = [len(pair.input_ids) for group in batch.groups for pair in group]
    assert lengths != sorted(lengths)  # micro-batches are length-sorted, so the row order is exercised
    grads = {}
    for chunk in (0, 1, 3):
        torch.manual_seed(0)
        module = RerankerModule(
            str(tiny_model_dir), objective=objective, lora_r=0, dtype="float64", pairs_per_forward=chunk
        )
        module.loss_step(batch).loss.backward()
        grads[chunk] = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for chunk in (1, 3):
        for name, grad in grads[0].items():
            torch.testing.assert_close(grads[chunk][name], grad, atol=1e-6, rtol=0, msg=name)


def test_checkpoint_holds_only_trainable_weights_and_resumes_them(tiny_model_dir, demo_dir, tmp_path):
    data = make_data(tiny_model_dir, demo_dir)
    module = RerankerModule(str(tiny_model_dir), lora_r=4, lm_head="label_rows")
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    names = set(checkpoint["state_dict"])
    assert names and all("lora_" in n or "row_delta" in n for n in names)
    assert "optimizer_states" in checkpoint
    restored = RerankerModule.load_from_checkpoint(path)
    for name, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(restored.state_dict()[name], value)


class _Losses(L.Callback):
    """Records the training losses; with ``stop_at`` it interrupts the run after that step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def _fit(tiny_model_dir, demo_dir, root, max_steps, ckpt_path=None, every=None, stop_at=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    data = make_data(tiny_model_dir, demo_dir, eval_root=None, num_workers=0)
    module = RerankerModule(str(tiny_model_dir), lora_r=4, lr=1e-2)  # LoRA dropout stays on
    recorder = _Losses(stop_at)
    callbacks = [recorder]
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}")
        )
    trainer = cpu_trainer(
        root, max_steps=max_steps, enable_checkpointing=bool(every), limit_val_batches=0, callbacks=callbacks
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return recorder.losses


def test_resume_from_checkpoint_continues_with_the_same_losses(tiny_model_dir, demo_dir, tmp_path):
    uninterrupted = _fit(tiny_model_dir, demo_dir, tmp_path / "a", max_steps=4)
    first = _fit(tiny_model_dir, demo_dir, tmp_path / "b", max_steps=4, every=2, stop_at=2)  # interrupted
    resumed = _fit(
        tiny_model_dir, demo_dir, tmp_path / "c", max_steps=4, ckpt_path=tmp_path / "b" / "step=2.ckpt"
    )
    assert first == pytest.approx(uninterrupted[:2], abs=1e-6)
    assert len(resumed) == 2
    assert resumed == pytest.approx(uninterrupted[2:], abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_score_fusion_extremes(tiny_model_dir, demo_dir, tmp_path, alpha):
    """alpha=0 ranks by the retriever alone; alpha=1 by the reranker alone (min-max keeps the order)."""
    data = make_data(tiny_model_dir, demo_dir, eval_tasks=["faces-i2i", "stdlib-docs"], eval_top_k=10)
    trainer = cpu_trainer(tmp_path)
    fused = trainer.validate(
        RerankerModule(str(tiny_model_dir), lora_r=0, fusion_alpha=alpha), datamodule=data, verbose=False
    )[0]
    if alpha == 0.0:
        assert fused["val/mrb_avg"] == pytest.approx(fused["val/retriever_avg"], abs=1e-9)
    else:
        plain = trainer.validate(
            RerankerModule(str(tiny_model_dir), lora_r=0), datamodule=data, verbose=False
        )[0]
        assert fused["val/mrb_avg"] == pytest.approx(plain["val/mrb_avg"], abs=1e-9)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_vision_lora_and_merger_options_reach_every_family(tmp_path, family):
    from lightning_modules.tiny import build_tiny

    folder = build_tiny(tmp_path / family, family=family)
    plain = RerankerModule(str(folder), lora_r=4)
    assert not any("visual" in n for n, p in plain.named_parameters() if p.requires_grad)
    module = RerankerModule(str(folder), lora_r=4, lora_vision=True, train_merger=True)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("visual.blocks" in n and "lora_" in n for n in trainable)
    assert any("merger" in n and "lora_" not in n for n in trainable)
    assert any("language_model" in n and "lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in module.parameters() if p.requires_grad)


# First-step values on the tiny model and the demo's first two groups, float64, no LoRA (computed at
# fcbdc0b). The exactness tests compare paths with each other; these catch a drift of every path at
# once (a changed prompt, label token, reduction or objective formula).
PINNED_FIRST_STEP = {
    "sft": (None, 2.8057072671031476, 0.4860802547, 1.5299480921),
    "cl": (None, 1.3750624899354158, 0.7471703524, 0.7471703524),
    "url": ({"weight": "cl", "direction": "sft"}, -0.0117329212214641, 0.7471703524, 0.7471703524),
}


@pytest.mark.parametrize("objective", sorted(PINNED_FIRST_STEP))
def test_first_step_loss_and_weights_are_pinned(tiny_model_dir, demo_dir, objective):
    args, loss, weight_pos, weight_neg = PINNED_FIRST_STEP[objective]
    batch = first_batch(make_data(tiny_model_dir, demo_dir))
    module = RerankerModule(
        str(tiny_model_dir), objective=objective, objective_args=args, lora_r=0, dtype="float64"
    )
    out = module.loss_step(batch)  # no Trainer needed
    assert out.loss.item() == pytest.approx(loss, rel=1e-7)
    assert out.stats["weight_pos_mean"].item() == pytest.approx(weight_pos, rel=1e-7)
    assert out.stats["weight_neg_sum"].item() == pytest.approx(weight_neg, rel=1e-7)
    assert out.stats["sft_loss"].item() == pytest.approx(PINNED_FIRST_STEP["sft"][1], rel=1e-7)

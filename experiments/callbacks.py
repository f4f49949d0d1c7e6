"""The callbacks every ``experiments.cli`` run gets (``build_cli``'s trainer defaults).

* :class:`RunConfigSaver`: the resolved config into the run folder and, once, into W&B as dotted keys.
* :class:`ParameterCount`: trainable / total parameters into the logger.
* :class:`LocalMetrics`: ``metrics.jsonl`` (the training scalars, appended whole) and the progress
  lines (elapsed time, rate, ETA; a validation heartbeat every 30 s).
* :class:`EvalBookkeeping`: validation steps aligned with the tables, the best ``val/mrb_avg`` and its
  step in the W&B summary.
* :class:`TrainingRecords`: running totals such as ``train/skipped_records``.

Evaluation files are written by ``experiments.eval_writer.EvalWriter``, added beside these: its
``eval_history.jsonl`` is the run folder's one record of validations and tests (``metrics.jsonl``
holds no ``val/`` key; the loggers, W&B included, get both).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from datamodules.batches import TrainBatch
from experiments.keys import flatten
from experiments.runs import RunError, append_line
from lightning_modules.reranker import count_parameters


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run's own folder and pushes it to W&B as dotted keys
    (the only hyperparameters logged: Lightning's own copy of the module's and datamodule's
    arguments is turned off in :meth:`RerankCLI.after_instantiate_classes`)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "config.yaml"
            if not path.exists():  # validate-before-fit and fit share one run folder
                self.parser.save(self.config, path, skip_unset=False, multifile=False)
                for logger in trainer.loggers:
                    if type(logger).__name__ == "WandbLogger":
                        import wandb

                        artifact = wandb.Artifact(f"config-{logger.experiment.id}", type="config")
                        artifact.add_file(str(path))
                        logger.experiment.log_artifact(artifact)
        trainable, total = count_parameters(pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(
                {**wandb_config(self.config.as_dict()), "params/trainable": trainable, "params/total": total}
            )


def wandb_config(config: dict) -> dict:
    """The run's config as W&B shows it: dotted keys of what can change a run's numbers; the logger's
    own settings (``trainer.logger.*``) and the config files' paths (``config``, machine-specific)
    are left out: the full file is the run's ``config.yaml`` (also uploaded as an artifact)."""
    flat = flatten(config)
    return {
        k: v for k, v in flat.items() if k != "config" and not k.startswith(("trainer.logger.", "config."))
    }


class ParameterCount(Callback):
    """Prints trainable / total parameters once (LoRA makes the ratio worth seeing)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainable, total = count_parameters(pl_module)
        if trainer.is_global_zero:
            print(
                f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
            )


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LocalMetrics(Callback):
    """Appends the training scalars to ``<run>/metrics.jsonl`` so reports work without W&B, and
    prints progress when the progress bar is off (the demo, logs of batch jobs).

    One line per logging step during training (``{"step": 10, "epoch": 0, "train/loss": ...}``: the
    ``train/`` keys, i.e. loss, objective weights and statistics, running totals), written whole or
    not at all by global rank 0 only. Evaluation results are not written here: a validation's or
    test's values are the ``eval_history.jsonl`` line of ``experiments.eval_writer.EvalWriter`` (one
    record per evaluation, one reader path), while the loggers still get every ``val/`` key. The
    training heartbeat says elapsed time, steps per second and the time left (validation excluded);
    during an evaluation a line at most every ``progress_every_s`` seconds says how many queries are
    done.
    """

    progress_every_s = 30.0

    def __init__(self) -> None:
        self.clock = time.monotonic
        self._train_seconds = 0.0  # time in training steps only (validation excluded)
        self._steps_timed = 0
        self._batch_started: float | None = None
        self._started = 0.0
        self._eval_started = 0.0
        self._eval_told = 0.0

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row: dict[str, float] = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):
                row[key] = float(value)
        path = Path(trainer.default_root_dir) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            append_line(path, row)
        except OSError as error:
            raise RunError(f"cannot append to {path}: {error.strerror or error}") from error

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        self._started = self.clock()

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_started = self.clock()

    def heartbeat(self, trainer: Trainer) -> str:
        """``step 120/240  loss 0.6931 ...  elapsed 2m05s  1.04 step/s  ETA 1m55s``."""
        metrics = trainer.callback_metrics
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        known = isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))
        parts = [f"step {trainer.global_step}/{int(total) if known else '?'}"] + [
            f"{key.split('/')[-1]} {float(metrics[key]):.4f}"
            for key in ("train/loss", "train/group_accuracy", "train/weight_pos_mean", "train/weight_neg_sum")
            if key in metrics
        ]
        parts.append(f"elapsed {duration(self.clock() - self._started)}")
        if self._steps_timed and self._train_seconds > 0:
            rate = self._steps_timed / self._train_seconds
            parts.append(f"{rate:.3g} step/s" if rate >= 1 else f"{1 / rate:.3g} s/step")
            if known:
                parts.append(f"ETA {duration((int(total) - trainer.global_step) / rate)}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._batch_started is not None:
            self._train_seconds += self.clock() - self._batch_started
            self._steps_timed += 1
            self._batch_started = None
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._write(trainer)
            if trainer.progress_bar_callback is None and trainer.is_global_zero:
                print(self.heartbeat(trainer), flush=True)

    # ---- evaluation progress -----------------------------------------------------------------
    def _eval_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_started = self._eval_told = self.clock()

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _eval_start

    @staticmethod
    def _queries(trainer: Trainer, stage: str) -> int | None:
        """This rank's number of evaluation queries, when known."""
        counts = getattr(trainer, f"num_{stage}_batches", None)
        if counts and math.isfinite(counts[0]):
            return int(counts[0])
        loader = getattr(trainer, f"{stage}_dataloaders", None)
        dataset = getattr(loader, "dataset", None)
        items = getattr(dataset, "items", None)
        if items is None:
            return None
        return len(items[getattr(dataset, "rank", 0) :: max(1, getattr(dataset, "world_size", 1))])

    def _eval_progress(self, trainer: Trainer, stage: str, batch_idx: int) -> None:
        now = self.clock()
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if now - self._eval_told < self.progress_every_s:
            return
        self._eval_told = now
        done, total, elapsed = batch_idx + 1, self._queries(trainer, stage), now - self._eval_started
        text = f"{stage}: {done}/{total if total else '?'} queries, {duration(elapsed)}"
        if total and done < total:
            text += f", ETA {duration(elapsed / done * (total - done))}"
        print(text, flush=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_progress(trainer, "val", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_progress(trainer, "test", batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_progress(trainer, "predict", batch_idx)


def is_better(value: float, step: int, best: float | None, best_step: int | None) -> bool:
    """The one rule for "best" (the W&B summary, the sweep's run metric, ``best-step<N>.ckpt``): the
    highest ``val/mrb_avg`` of the validations during training (step > 0), the ones a checkpoint can
    hold. The untrained model's step-0 validation is a baseline: it is "best" only until training
    validates once, and never beats a trained validation."""
    if best is None or (best_step == 0 and step > 0):
        return True
    return (step > 0 or best_step == 0) and value > best


class EvalBookkeeping(Callback):
    """Validation and test scalars logged at ``global_step`` (the step the tables, TREC folders and
    checkpoints name; Lightning would use the count of finished batches, one less during training),
    and the W&B run summary holding the BEST ``val/mrb_avg`` with its step (:func:`is_better`), not
    the last."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.best_step: int | None = None

    def _align_step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("step", float(trainer.global_step))  # the logger connector pops it as the step

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._align_step(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._align_step(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.callback_metrics.pop("step", None)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Sent to the loggers already; kept, it would name a later training-time checkpoint's {step}.
        trainer.callback_metrics.pop("step", None)
        value = trainer.callback_metrics.get("val/mrb_avg")
        if trainer.sanity_checking or value is None:
            return
        if is_better(float(value), trainer.global_step, self.best, self.best_step):
            self.best, self.best_step = float(value), trainer.global_step
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                # After this validation's history row (which set the summary to the latest value).
                logger.experiment.summary["val/mrb_avg"] = self.best
                logger.experiment.summary["val/mrb_avg_best_step"] = self.best_step

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")


class TrainingRecords(Callback):
    """Counts the groups trained and the records skipped as bad over all ranks, logs
    ``train/skipped_records`` as a running total (kept in checkpoints, so a resumed run continues
    it), and stops a fit that trained on no group at all (every record skipped) with an error
    instead of ending with exit code 0 and an untrained model."""

    def __init__(self) -> None:
        self.groups = 0
        self.skipped = 0
        self.batches = 0

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        self.batches = 0  # batches of this process's fit; the totals carry over a resume

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not isinstance(batch, TrainBatch):
            return
        self.batches += 1
        counts = torch.tensor(
            [batch.positives.shape[0], int((batch.stream or {}).get("skipped", 0))],
            device=pl_module.device,
        )
        groups, skipped = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.groups += int(groups)
        self.skipped += int(skipped)
        pl_module.log("train/skipped_records", float(self.skipped), batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
        self._log_final_total(trainer)
        if self.groups or not self.batches:  # no batch at all: a resumed run that had already finished
            return
        root = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get(
            "train_root", "the training data"
        )
        if self.skipped:
            raise RunError(
                f"{root}: all {self.skipped} training record(s) read were bad and skipped "
                "(data.on_bad_record: skip), so nothing was trained; "
                f"`python -m datamodules.validate {root}` lists each problem as file:line"
            )
        raise RunError(f"{root}: the training batches held no group, so nothing was trained")

    def _log_final_total(self, trainer: Trainer) -> None:
        """The total after the last step, unless that step was a logging step (``log_every_n_steps``)."""
        if (
            not trainer.is_global_zero
            or not self.batches
            or trainer.global_step % max(1, trainer.log_every_n_steps) == 0
        ):
            return
        final = {"train/skipped_records": float(self.skipped)}
        for logger in trainer.loggers:
            logger.log_metrics(final, step=trainer.global_step)
        if any(isinstance(callback, LocalMetrics) for callback in trainer.callbacks):
            row = {"step": trainer.global_step, "epoch": trainer.current_epoch, **final}
            append_line(Path(trainer.default_root_dir) / "metrics.jsonl", row)

    def state_dict(self) -> dict:
        return {"groups": self.groups, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.groups, self.skipped = int(state.get("groups", 0)), int(state.get("skipped", 0))

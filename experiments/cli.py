"""LightningCLI entry point: ``python -m experiments.cli {fit,validate,test,predict} --config ...``.

Every run gets its own folder ``<runs_dir>/<run_name>-<timestamp>``, created exclusively when the
run starts (experiments/runs.py), holding the resolved config, the local metrics record
(``metrics.jsonl``, ``eval_history.jsonl``), TREC runs, checkpoints (written atomically) and the
W&B files, so repeated runs in one directory (a sweep agent) never collide. W&B goes offline by
itself when no login exists or its server cannot be reached (``wandb sync
<run>/wandb/offline-run-*`` uploads later); ``WANDB_MODE=disabled`` turns it off.

``test`` scores ``data.test_root`` when it is set: ``best-*.ckpt`` is chosen on ``data.eval_root``
(validation) only, so testing on the same tasks would report the selection benchmark itself.
The optimizer and schedule are the module's own (AdamW + linear warm-up/decay, ``model.lr`` ...):
LightningCLI's automatic ``--optimizer`` / ``--lr_scheduler`` options are off.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import objectives
from datamodules.datamodule import RerankDataModule
from datamodules.trec import FormatError, error_message
from experiments.eval_writer import EvalWriter
from experiments.keys import flatten, run_name
from experiments.runs import (
    AtomicCheckpointIO,
    CheckpointError,
    RunError,
    append_line,
    check_checkpoint,
    check_run_name,
    choose_wandb_mode,
    create_run_dir,
)
from lightning_modules.reranker import RerankerModule, count_parameters

RUN_DIR_ENV = "RERANK_LAB_RUN_DIR"
EXPORT_HELP = "Merge a checkpoint into a plain Hugging Face folder (rerank-lab export --help)."


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
                self.parser.save(self.config, path, skip_none=False, multifile=False)
                for logger in trainer.loggers:
                    if type(logger).__name__ == "WandbLogger":
                        import wandb

                        artifact = wandb.Artifact(f"config-{logger.experiment.id}", type="config")
                        artifact.add_file(str(path))
                        logger.experiment.log_artifact(artifact)
        config = self.config.as_dict()
        trainable, total = count_parameters(pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams({**flatten(config), "params/trainable": trainable, "params/total": total})


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
    """Appends every logged scalar to ``<run>/metrics.jsonl`` so reports work without W&B, and prints
    progress when the progress bar is off (the demo, logs of batch jobs).

    One line per logging step during training (``{"step": 10, "train/loss": ...}``) and one per
    validation (``val/...`` keys), written whole or not at all by global rank 0 only. The training
    heartbeat says elapsed time, steps per second and the time left (validation excluded); during
    an evaluation a line at most every ``progress_every_s`` seconds says how many queries are done.
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

    def _write(self, trainer: Trainer, prefix: str) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
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
            self._write(trainer, "train/")
            if trainer.progress_bar_callback is None and trainer.is_global_zero:
                print(self.heartbeat(trainer), flush=True)

    # ---- evaluation progress -----------------------------------------------------------------
    def _eval_start(self, trainer: Trainer, *args) -> None:
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

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        self._write(trainer, "val/")


class EvalBookkeeping(Callback):
    """Validation and test scalars logged at ``global_step`` (the step the tables, TREC folders and
    checkpoints name; Lightning would use the count of finished batches, one less during training),
    and the W&B run summary holding the BEST ``val/mrb_avg`` with its step, not the last."""

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
        if self.best is None or float(value) > self.best:
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
        if not isinstance(batch, dict) or "positives" not in batch:
            return
        self.batches += 1
        counts = torch.tensor(
            [batch["positives"].shape[0], int((batch.get("stream") or {}).get("skipped", 0))],
            device=pl_module.device,
        )
        groups, skipped = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.groups += int(groups)
        self.skipped += int(skipped)
        pl_module.log("train/skipped_records", float(self.skipped), batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
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

    def state_dict(self) -> dict:
        return {"groups": self.groups, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.groups, self.skipped = int(state.get("groups", 0)), int(state.get("skipped", 0))


def check_config(config) -> None:
    """Refuse values that would train or score something else than asked, naming the config key.

    Runs before any weights load, so a typo costs seconds, not a backbone load.
    """
    data, model = config["data"], config["model"]
    for key in ("eval_top_k", "eval_pairs_per_batch"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunError(
                f"data.{key}={value!r}: must be a whole number >= 1 "
                + (
                    "(the number of first-stage candidates reranked per query)"
                    if key == "eval_top_k"
                    else "(candidate pairs per evaluation forward pass)"
                )
            )
    check_model_path(model.get("model_name_or_path"))
    args = model.get("objective_args") or {}
    if not isinstance(args, dict):
        raise RunError(f"model.objective_args={args!r}: must be a mapping of the objective's arguments")
    try:
        # hidden_size only sizes a projection direction's layer; the real one is built with the model.
        objectives.build(model["objective"], hidden_size=8, **dict(args))
    except (ValueError, TypeError) as error:
        raise RunError(
            f"model.objective={model['objective']!r} with model.objective_args={dict(args)}: {error}"
        ) from None


def check_model_path(path) -> None:
    """A ``model.model_name_or_path`` that can only be a local folder (absolute, relative with more
    than one part, ``~``) must exist; a Hub id (``name`` or ``namespace/name``) is left to the loader."""
    text = str(path or "")
    local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if not text or (local and not Path(text).expanduser().is_dir()):
        raise RunError(
            f"model.model_name_or_path={text!r}: no such model folder; point it at a local checkpoint "
            "folder (e.g. the one `make demo` builds, runs/demo/model) or a Hugging Face Hub id"
        )


class RerankCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Parent folder of run folders.")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run name: one folder name, no path (default: derived from the objective, negatives and seed).",
        )
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="Validate once before training (fit only).",
        )
        # A data key of the CLI rather than a DataModule argument: only `test` reads it, by pointing
        # the DataModule's evaluation at it (after_instantiate_classes).
        parser.add_argument(
            "--data.test_root",
            type=str | None,
            default=None,
            help="MRB root that `test` scores (default: data.eval_root). Keep it apart from data.eval_root: "
            "checkpoints (best-*.ckpt) are selected on validation.",
        )

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        # Listed in --help only: main() hands `export` to lightning_modules.export before LightningCLI.
        parser._subcommands_action.add_subcommand(
            "export", ArgumentParser(description=EXPORT_HELP), help=EXPORT_HELP
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path here (for its hyperparameters) before any of our hooks: a
        # damaged file is reported with the last good checkpoint instead of a raw zip error.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        check_checkpoint(ckpt_path)
        try:
            super()._parse_ckpt_path()  # torch.load(weights_only=True): never runs code from the file
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"checkpoint {ckpt_path}: refused to load: it asks for Python objects beyond tensors and "
                "plain values, and unpickling them could run code; resume only from checkpoints written "
                "by rerank-lab"
            ) from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "export":
            self.parser.error(
                "export: run it as `rerank-lab export ...` (python -m lightning_modules.export)"
            )
        try:
            check_config(config)
            name = check_run_name(config.get("run_name") or run_name(config.as_dict()))
            choose_wandb_mode()
            if os.environ.get(RUN_DIR_ENV):
                # A DDP worker started by Lightning (or a multi-node launcher that sets it): use the
                # folder rank 0 created instead of creating a second one.
                run_dir = Path(os.environ[RUN_DIR_ENV])
            else:
                run_dir = create_run_dir(config["runs_dir"], name)
                os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the worker processes Lightning starts
        except RunError as error:
            self.parser.error(str(error))
        if config["data"].get("seed") is None:
            # One seed per run: the data order follows seed_everything unless data.seed is given
            # (Lightning has already turned seed_everything=true into a number here).
            config["data"]["seed"] = int(config.get("seed_everything") or 0)
        self.test_root = config["data"].pop("test_root", None)  # not a RerankDataModule argument
        if self.subcommand == "test" and not self.test_root:
            print(
                "test: data.test_root is not set, so the validation tasks (data.eval_root) are scored; "
                "a best-*.ckpt was selected on these same tasks",
                file=sys.stderr,
            )
        config["trainer"]["default_root_dir"] = str(run_dir)
        self.run_dir = run_dir
        logger = config["trainer"].get("logger")
        if logger is not None and "WandbLogger" in str(getattr(logger, "class_path", "")):
            logger.init_args.save_dir = str(run_dir)
            logger.init_args.name = name
            if os.environ.get("WANDB_MODE") == "offline":
                logger.init_args.offline = True
                logger.init_args.log_model = (
                    False  # checkpoints stay in the run folder; W&B cannot take them offline
                )

    def after_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config["data"]["test_root"] = self.test_root  # back into the config the run folder records
        if self.subcommand == "test" and self.test_root:
            self.datamodule.hparams.eval_root = self.test_root
        # The resolved config goes to W&B once, as dotted keys (RunConfigSaver); Lightning's own
        # copy of the same arguments under bare names would double the keys.
        self.model._log_hyperparams = False
        if self.datamodule is not None:
            self.datamodule._log_hyperparams = False
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # not a custom or a sharded one
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _point_checkpoints_at_run(self) -> None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(self.run_dir / "checkpoints")

    def before_fit(self) -> None:
        self._point_checkpoints_at_run()
        if self.config["fit"].get("validate_before_fit"):
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(f"run folder: {self.run_dir}")


def build_cli(args: list[str] | None = None) -> RerankCLI:
    """Parse ``args`` (``None`` reads ``sys.argv``), instantiate and run the subcommand."""
    try:
        cli = RerankCLI(
            RerankerModule,
            RerankDataModule,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "callbacks": [
                    ParameterCount(),
                    TrainingRecords(),
                    LocalMetrics(),
                    EvalWriter(),  # before EvalBookkeeping: its W&B table row precedes the summary
                    EvalBookkeeping(),
                ]
            },
            parser_kwargs={
                "parser_mode": "omegaconf+",
                "description": "rerank-lab: train (fit), validate, test and predict with LLM rerankers, "
                "and export a checkpoint as a plain Hugging Face folder.",
            },
            auto_configure_optimizers=False,  # the module's AdamW + schedule; no silent --optimizer
            args=args,
        )
    finally:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # the next run in this process picks its own folder
            os.environ.pop(RUN_DIR_ENV, None)
        # Lightning leaves the W&B run open; a second run in the same process would be logged into it.
        # W&B also keeps the settings of its first run in a process-wide singleton (a first run under
        # WANDB_MODE=disabled would silence every later offline run): tear it down between runs.
        if "wandb" in sys.modules:
            wandb = sys.modules["wandb"]
            if wandb.run is not None:
                wandb.finish()
            if hasattr(wandb, "teardown"):
                wandb.teardown()
    return cli


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``rerank-lab``), same as ``python -m experiments.cli``.

    ``rerank-lab export --ckpt ... --out ...`` merges a checkpoint into a plain Hugging Face folder.
    A run that cannot start or continue (a bad record, a damaged checkpoint, a full disk) ends with
    one ``error:`` line and exit code 1, not a traceback.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        from lightning_modules.export import main as export_main

        sys.exit(export_main(argv[1:]))
    try:
        build_cli(args)
    except (RunError, FormatError) as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

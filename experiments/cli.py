"""LightningCLI entry point: ``python -m experiments.cli {fit,validate,test,predict} --config ...``.

Every run gets its own folder ``<runs_dir>/<run_name>-<timestamp>`` holding the resolved config,
the local metrics record (``eval_history.jsonl``), TREC runs, checkpoints and the W&B files, so
repeated runs in one directory (a sweep agent) never collide. W&B goes offline by itself when no
login exists (``wandb sync <run>/wandb/offline-run-*`` uploads later); ``WANDB_MODE=disabled``
turns it off.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules.datamodule import RerankDataModule
from experiments.keys import flatten
from lightning_modules.reranker import RerankerModule, count_parameters

RUN_DIR_ENV = "RERANK_LAB_RUN_DIR"


def wandb_logged_in() -> bool:
    """Whether W&B has credentials (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def ensure_wandb_mode() -> None:
    """Go offline (with a one-line notice) when W&B has no login and no mode was chosen."""
    if os.environ.get("WANDB_MODE") or wandb_logged_in():
        return
    os.environ["WANDB_MODE"] = "offline"
    print(
        "W&B: no login found, logging offline; upload later with `wandb sync <run>/wandb/offline-run-*`",
        file=sys.stderr,
    )


def run_name(config) -> str:
    """A name that says what ran, e.g. ``url-Wsft-Dcl-n4-s0`` or ``sft-n4-s0``."""
    model, data = config["model"], config["data"]
    parts = [str(model["objective"])]
    args = model.get("objective_args") or {}
    for key, tag in (
        ("weight", "W"),
        ("direction", "D"),
        ("label_token_count", "L"),
        ("tau", "tau"),
        ("temperature", "T"),
    ):
        if args.get(key) is not None:
            parts.append(f"{tag}{args[key]}")
    if model.get("lm_head", "frozen") != "frozen":
        parts.append(f"head-{model['lm_head']}")
    parts.append(f"n{data['num_negatives']}")
    seed = config.get("seed_everything")
    parts.append(f"s{seed if isinstance(seed, int) else 'r'}")
    return "-".join(parts)


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run's own folder and pushes it to W&B as dotted keys."""

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


class LocalMetrics(Callback):
    """Appends every logged scalar to ``<run>/metrics.jsonl`` so reports work without W&B.

    One line per logging step during training (``{"step": 10, "train/loss": ...}``) and one per
    validation (``val/...`` keys), written by global rank 0 only.
    """

    def _write(self, trainer: Trainer, prefix: str) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
                row[key] = float(value)
        path = Path(trainer.default_root_dir) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._write(trainer, "train/")
            if trainer.progress_bar_callback is None and trainer.is_global_zero:  # a heartbeat instead
                metrics = trainer.callback_metrics
                total = trainer.max_steps if trainer.max_steps > 0 else "?"
                parts = [f"step {trainer.global_step}/{total}"] + [
                    f"{key.split('/')[-1]} {float(metrics[key]):.4f}"
                    for key in (
                        "train/loss",
                        "train/group_accuracy",
                        "train/weight_pos_mean",
                        "train/weight_neg_sum",
                    )
                    if key in metrics
                ]
                print("  ".join(parts), flush=True)

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        self._write(trainer, "val/")


class RerankCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Parent folder of run folders.")
        parser.add_argument("--run_name", type=str | None, default=None, help="Run name (default: derived).")
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="Validate once before training (fit only).",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ensure_wandb_mode()
        name = config.get("run_name") or run_name(config)
        if os.environ.get(RUN_DIR_ENV):
            # A DDP worker started by Lightning (or a multi-node launcher that sets it): use the
            # folder rank 0 chose instead of deriving a second, different timestamp.
            run_dir = Path(os.environ[RUN_DIR_ENV])
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(config["runs_dir"]) / f"{name}-{stamp}"
            suffix = 1
            while run_dir.exists():  # two runs started within the same second
                run_dir = Path(config["runs_dir"]) / f"{name}-{stamp}-{suffix}"
                suffix += 1
            os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the worker processes Lightning starts
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
            trainer_defaults={"callbacks": [ParameterCount(), LocalMetrics()]},
            parser_kwargs={"parser_mode": "omegaconf+"},
            args=args,
        )
    finally:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # the next run in this process picks its own folder
            os.environ.pop(RUN_DIR_ENV, None)
    # Lightning leaves the W&B run open; a second run in the same process would be logged into it.
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()
    return cli


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``rerank-lab``), same as ``python -m experiments.cli``.

    ``rerank-lab export --ckpt ... --out ...`` merges a checkpoint into a plain Hugging Face folder.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        from lightning_modules.export import main as export_main

        sys.exit(export_main(argv[1:]))
    build_cli(args)


if __name__ == "__main__":
    main()

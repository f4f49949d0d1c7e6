"""LightningCLI entry point: ``python -m experiments.cli {fit,validate,test,predict} --config ...``.

``rerank-lab fit|validate|test|predict`` hands the same arguments to :func:`main` (the dispatcher,
experiments/commands.py, holds every other subcommand, ``export`` among them).

Every run gets its own folder ``<runs_dir>/<run_name>-<timestamp>``, created exclusively when the
run starts (experiments/runs.py), holding the resolved config, the local records
(``metrics.jsonl``: training scalars; ``eval_history.jsonl``: one line per validation or test), TREC runs, checkpoints (written atomically) and the
W&B files, so repeated runs in one directory (a sweep agent) never collide. W&B goes offline by
itself when no login exists or its server cannot be reached (``wandb sync
<run>/wandb/offline-run-*`` uploads later); ``WANDB_MODE=disabled`` turns it off.

``test`` scores ``data.test_root`` when it is set: ``best-*.ckpt`` is chosen on ``data.eval_root``
(validation) only, so testing on the same tasks would report the selection benchmark itself.
The optimizer and schedule are the module's own (AdamW + linear warm-up/decay, ``model.lr`` ...):
LightningCLI's automatic ``--optimizer`` / ``--lr_scheduler`` options are off.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import pickle
import re
import sys
from pathlib import Path

import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.datamodule import RerankDataModule
from datamodules.encoding import PairEncoder
from datamodules.formats import list_tasks, read_task_meta
from datamodules.trec import FormatError, error_message
from experiments.callbacks import (
    EvalBookkeeping,
    LocalMetrics,
    ParameterCount,
    RunConfigSaver,
    TrainingRecords,
)
from experiments.eval_writer import EvalWriter
from experiments.keys import run_name
from experiments.runs import (
    AtomicCheckpointIO,
    CheckpointError,
    RunError,
    check_checkpoint,
    check_run_name,
    choose_wandb_mode,
    claim_run_dir,
    create_run_dir,
)
from lightning_modules.reranker import RerankerModule, build_objective

RUN_DIR_ENV = "RERANK_LAB_RUN_DIR"


def check_config(config) -> None:
    """Refuse values that would train or score something else than asked, naming the config key.

    Runs before any weights load, so a typo costs seconds, not a backbone load.
    """
    data, model = config["data"], config["model"]
    for section, key, meaning in (
        (data, "data.eval_top_k", "the number of first-stage candidates reranked per query"),
        (model, "model.eval_pairs_per_forward", "candidate pairs per evaluation forward pass"),
    ):
        value = section.get(key.split(".")[1])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunError(f"{key}={value!r}: must be a whole number >= 1 ({meaning})")
    check_model_path(model.get("model_name_or_path"))
    for key, value in (("quantization", "4bit"), ("optimizer", "adamw8bit")):
        if model.get(key) == value and importlib.util.find_spec("bitsandbytes") is None:
            raise RunError(
                f"model.{key}={value!r} needs bitsandbytes, which is not installed: pip install -e '.[qlora]'"
            )
    args = model.get("objective_args") or {}
    if not isinstance(args, dict):
        raise RunError(f"model.objective_args={args!r}: must be a mapping of the objective's arguments")
    try:  # the objective the module will build first, sized from config.json (no weights read)
        build_objective(
            model["model_name_or_path"], model["objective"], dict(args), bool(model.get("trust_remote_code"))
        )
    except (ValueError, OSError) as error:
        raise RunError(str(error).splitlines()[0]) from None


def check_before_loading(config, subcommand: str | None, argv: list[str]) -> None:
    """What can be checked before any weights load or W&B run starts: the data paths exist, the
    evaluation tasks' modalities fit the backbone, the trainer fits this machine (RunError, one line)."""
    roots = {"fit": ("train_root", "eval_root"), "validate": ("eval_root",), "predict": ("eval_root",)}
    test_key = "test_root" if config["data"].get("test_root") else "eval_root"
    for key in roots.get(subcommand or "", (test_key,)):
        value = config["data"].get(key)
        if value and "://" not in str(value) and not Path(str(value)).expanduser().exists():
            raise RunError(f"data.{key}={str(value)!r}: no such file or folder; point it at your data")
    check_modalities(config, test_key if subcommand == "test" else "eval_root")
    check_accelerator(config, argv)


def check_modalities(config, key: str) -> None:
    """Image tasks need a vision tower: a text-only backbone (config.json without ``vision_config``)
    with an image task under ``data.<key>`` is refused, naming the task."""
    model_path, root = config["model"].get("model_name_or_path"), config["data"].get(key)
    if not root or "://" in str(root) or not (Path(str(model_path)) / "config.json").is_file():
        return
    try:
        backbone = json.loads((Path(str(model_path)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the loader reports it
    if not isinstance(backbone, dict) or backbone.get("vision_config") is not None:
        return
    for folder in list_tasks(str(root), config["data"].get("eval_tasks")):
        meta = read_task_meta(folder)
        if "I" in meta.family or "VD" in meta.family:
            raise RunError(
                f"data.{key}: task {meta.name} ({folder / 'task.json'}) is {meta.family}, an image task, but "
                f"model.model_name_or_path={str(model_path)!r} has no vision tower; use a vision-language "
                "backbone, or choose text tasks with data.eval_tasks"
            )


def check_accelerator(config, argv: list[str]) -> None:
    """A GPU trainer on a machine without CUDA: name the config file (or flag) that asked for it."""
    import torch

    accelerator = str(config["trainer"].get("accelerator") or "")
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    source = "by default"
    for i, arg in enumerate(argv):  # the last setter wins, as in the parser
        path = (
            argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else arg.removeprefix("--config=")
        )
        if arg.startswith("--trainer.accelerator"):
            source = "on the command line"
        elif path != arg or arg.startswith("--config="):
            source = f"in {path}" if _sets_key(path, "trainer.accelerator") else source
    raise RunError(
        f"trainer.accelerator={accelerator!r} (set {source}): this machine has no CUDA GPU; use "
        "--config experiments/configs/trainer/cpu.yaml instead"
    )


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


_UNKNOWN_KEY = (
    re.compile(r"unrecognized arguments: --?([\w.]+)"),
    re.compile(r"does not accept option '([\w.]+)'"),
    re.compile(r'[Kk]ey "([\w.]+)" is not expected'),
)


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files named on a command line, in order."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.removeprefix("--config="))
    return files


def _sets_key(path: str, key: str) -> bool:
    try:
        node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# Keys that moved: a config that still sets one is refused with its new name.
RENAMED_KEYS = {"data.eval_pairs_per_batch": "model.eval_pairs_per_forward"}


def one_line_error(message: str, parser, argv: list[str]) -> str:
    """An unknown key as one line, with where it was set and the closest valid key; other errors joined."""
    for pattern in _UNKNOWN_KEY:
        match = pattern.search(message)
        if match:
            key = match[1]
            files = [f for f in config_files(argv) if _sets_key(f, key)]
            where = f"{files[-1]}: " if files else ""
            if key in RENAMED_KEYS:
                return f"{where}{key} was renamed {RENAMED_KEYS[key]}; set that key instead"
            keys = [
                a.dest for a in parser._actions if "." in a.dest or a.dest in ("seed_everything", "ckpt_path")
            ]
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "`--help` lists the valid keys"
            return f"{where}unknown config key {key}; {hint}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class OneLineParser(LightningArgumentParser):
    """Prints an input error as one ``error:`` line (exit 2) instead of the whole usage text."""

    cli_args: list[str] = []

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            super().error(message, ex)  # raises; the parser that exits reports it
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"error: {one_line_error(message, parser, self.cli_args)}\n")
        sys.exit(2)


class RerankCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        argv = kwargs.get("args")
        self.cli_args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.cli_args = self.cli_args
        return parser

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
        try:
            check_config(config)
            check_before_loading(config, self.subcommand, self.cli_args)
            name = check_run_name(config.get("run_name") or run_name(config.as_dict()))
            choose_wandb_mode()
            if os.environ.get(RUN_DIR_ENV):
                # The ranks of one run (Lightning's DDP workers, or every node under a launcher that
                # exports it) share the folder; rank 0 claims it, and refuses one that another run holds.
                run_dir = Path(os.environ[RUN_DIR_ENV])
            else:
                run_dir = create_run_dir(config["runs_dir"], name)
                os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the worker processes Lightning starts
            claim_run_dir(run_dir, config.get("ckpt_path"))
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
            # data.model_name_or_path and data.trust_remote_code are linked to the model's: the
            # checkpoint's tokenizer and image processor are loaded once, by the module.
            if isinstance(getattr(self.model, "pair_encoder", None), PairEncoder):
                self.datamodule.reuse_processors(self.model.pair_encoder)
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
            parser_class=OneLineParser,
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
                "description": "rerank-lab: train (fit), validate, test and predict with LLM rerankers "
                "(`rerank-lab --help` lists the other subcommands: export, evaluate, ...).",
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
    """``python -m experiments.cli`` (and ``rerank-lab fit|validate|test|predict``).

    A setting that cannot work is refused before anything loads with one ``error:`` line and exit
    code 2; a run that cannot start or continue (a bad record, a damaged checkpoint, a full disk)
    ends with one ``error:`` line and exit code 1, not a traceback.
    """
    try:
        build_cli(args)
    except (RunError, FormatError) as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

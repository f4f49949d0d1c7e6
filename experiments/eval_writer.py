"""The evaluation writer: what an evaluation leaves in the run folder, as a Lightning callback.

``RerankerModule`` computes and logs an evaluation and leaves an ``EvalResult`` (stage, step,
reranked and first-stage summaries, the reranked runs of every rank) in ``pl_module.eval_result``;
:class:`EvalWriter` turns it into files, on global rank 0, after every validation and test that
is not Lightning's sanity check:

* the per-task table (reranked vs first-stage retriever) on standard output;
* ``<run>/runs/<stage>-step<N>/<task>.trec``: each task's reranked run (``model.write_runs``),
  written atomically (a temporary file in the same folder, fsynced, renamed);
* ``<run>/eval_history.jsonl``: one line per evaluation (``stage``, ``step``, the summary of
  docs/formats.md §4, ``retriever``, and ``skipped_candidates`` when bad records were left out),
  appended after the TREC files, whole or not at all. It is the run folder's one record of
  evaluation results: ``metrics.jsonl`` (experiments/callbacks.py) holds the training scalars only,
  and readers (``experiments.report``, the sweep's run metric, the demo) read validations from here;
* a ``<stage>/tasks`` table for loggers that take tables (W&B).

After ``predict`` it writes ``<run>/predictions/<task>.trec``. The CLI (experiments/cli.py) adds
it to every Trainer it builds; a Trainer without it writes none of these files. It lives in
``experiments`` because it writes a run folder's files with the run folder's helpers
(experiments/runs.py), and ``lightning_modules`` never imports ``experiments``.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.metrics import format_table
from datamodules.trec import write_run
from experiments.runs import RunError, append_line

COLUMNS = ["task", "family", "metric", "reranked", "retriever", "delta", "queries"]


class EvalWriter(Callback):
    """Writes each evaluation's table, TREC runs, ``eval_history.jsonl`` line and logger table
    (module docstring), on global rank 0; the module has already merged the ranks' runs."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_eval(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_eval(trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        result = _take_result(pl_module)
        if result is None or result.runs is None:
            return
        runs = result.runs
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir) / "predictions"
        for task, run in runs.items():
            _write_trec(folder / f"{task}.trec", run)
        print(f"predictions: one TREC run per task in {folder}", flush=True)

    def _write_eval(self, trainer: Trainer, pl_module: LightningModule) -> None:
        result = _take_result(pl_module)
        if result is None or result.summary is None or trainer.sanity_checking:
            return
        runs = result.runs or {}
        if not trainer.is_global_zero:
            return
        stage, step, summary, retriever = result.stage, result.step, result.summary, result.retriever
        table = format_table(summary, baseline=retriever)
        print(f"\n{stage} at step {step} (reranked vs first-stage retriever)\n{table}", flush=True)
        run_dir = Path(trainer.default_root_dir)
        for task, run in runs.items():
            _write_trec(run_dir / "runs" / f"{stage}-step{step}" / f"{task}.trec", run)
        record = {"stage": stage, "step": step, **summary.to_dict(), "retriever": retriever.to_dict()}
        if result.skipped_candidates:
            record["skipped_candidates"] = dict(result.skipped_candidates)
        history = run_dir / "eval_history.jsonl"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            append_line(history, record)
        except OSError as error:
            raise RunError(f"cannot append to {history}: {error.strerror or error}") from error
        rows = [
            [name, r.family, r.metric, r.value, base.value, r.value - base.value, r.n_queries]
            for name, r in summary.tasks.items()
            for base in (retriever.tasks[name],)
        ]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key=f"{stage}/tasks", columns=COLUMNS, data=rows, step=step)


def _take_result(pl_module: LightningModule):
    """The module's last ``EvalResult``, taken so that it is written once (``None`` if there is none)."""
    result = getattr(pl_module, "eval_result", None)
    setattr(pl_module, "eval_result", None)  # noqa: B010 - an attribute of our module, not of LightningModule
    return result


def _write_trec(path: Path, run: dict) -> None:
    try:
        write_run(path, run)
    except OSError as error:
        raise RunError(
            f"cannot write {path}: {error.strerror or error}; no partial file was left under that name"
        ) from error

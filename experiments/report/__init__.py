"""Compare runs: ``python -m experiments.report RUNS_DIR [--out DIR] [--zero-shot DIR]`` (docs/science.md §4, §7).

Finds every run folder under RUNS_DIR (a folder holding ``config.yaml``, as ``experiments.cli`` writes
them; hidden folders are skipped), reads its validations from ``eval_history.jsonl`` and its training
scalars (the weight curves) from ``metrics.jsonl``, and writes into ``--out`` (default: RUNS_DIR):

* ``report.md``: the computed verdict on the paper's probe claims (first whether the design can reach
  significance at all and whether the validity gates passed); the per-cell table (final
  ``val/mrb_avg`` and families, mean ± sample std over seeds, x100); every row against the baselines
  (first stage, the exact random-order expectation, the zero-shot judge); the comparisons tested over
  seeds (per-seed values, paired t and exact sign-flip p, Holm-adjusted, a two-level bootstrap interval
  over seeds and queries, the MDE, the verdict); the weight mechanism (W+ and ΣW− over training, the
  W_CL / W_SFT ratio per seed); the plots; every run with the command line that reproduces it from
  the repository root.
* ``probe_table.md`` (also printed): the per-cell table alone. One row per (objective, weight,
  direction) and per value of any other config key that differs between the runs; plain ``sft`` /
  ``cl`` count as W_SFT D_SFT / W_CL D_CL.
* ``probe_bar.png``, ``weights.png`` (W+ and W− over steps), ``intervals.png`` (the intervals, the
  paper's values).
* ``report.json``: the same numbers for scripts: ``comparisons[]`` (``verdict`` at top level, p-values,
  interval, MDE, ``n_seeds``), ``runs[]`` with ``per_query`` (``{task: {query_id: value}}``) and a
  portable command, ``baselines``, ``gates``, ``mechanism``.

Every file is written atomically, and a file in ``--out`` is replaced only when the previous
``report.json`` lists it unchanged: the report never overwrites anything it did not write. Only local
files are read (never W&B). A sweep run whose ``done.json`` is missing (still running, or failed) is
left out unless ``--include-unfinished``.

Modules: ``runs`` (run folders, rows), ``queries`` (per-query metrics), ``baselines``, ``stats`` (the
tests, the two-level bootstrap, Holm, MDE), ``claims`` (comparisons), ``analysis`` (verdicts, gates,
mechanism), ``plots``, ``render`` (Markdown, JSON), ``cli`` (the command).
"""

from .analysis import verdict
from .claims import COMPARISONS
from .cli import main, write_outputs
from .queries import bootstrap, load_query_table
from .runs import RunRecord, find_run_folders, group_rows, load_run, mean_curve, mean_std
from .stats import holm, mde, paired_t, sign_flip_p, two_level_bootstrap

__all__ = [
    "COMPARISONS",
    "RunRecord",
    "bootstrap",
    "find_run_folders",
    "group_rows",
    "load_query_table",
    "load_run",
    "main",
    "mean_curve",
    "mean_std",
    "holm",
    "mde",
    "paired_t",
    "sign_flip_p",
    "two_level_bootstrap",
    "verdict",
    "write_outputs",
]

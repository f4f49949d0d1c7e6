"""Compare runs: ``python -m experiments.report RUNS_DIR [--out DIR]`` (docs/science.md §4).

Finds every run folder under RUNS_DIR (``config.yaml`` plus ``eval_history.jsonl`` or ``metrics.jsonl``,
as ``experiments.cli`` writes them; hidden folders are skipped) and writes into ``--out`` (default:
RUNS_DIR):

* ``report.md``: the computed verdict on the paper's probe claims; the per-cell table (final
  ``val/mrb_avg`` and families, mean ± sample std over seeds, x100, n seeds shown); the comparisons
  per seed (mean ± std of the per-seed differences); 95% paired bootstrap intervals over queries from
  the TREC files of each run's final validation, with the exact procedure; the plots; every run with
  its seed, final metric, seconds and the command line that reproduces it.
* ``probe_table.md`` (also printed): the per-cell table alone. One row per (objective, weight,
  direction) and per value of any other config key that differs between the runs; plain ``sft`` /
  ``cl`` count as W_SFT D_SFT / W_CL D_CL.
* ``probe_bar.png`` (the table as bars), ``weights.png`` (W+ ``train/weight_pos_mean`` and W−
  ``train/weight_neg_sum`` over steps, one line per cell, mean ± std over seeds: the paper's "W_CL
  stays smaller"), ``intervals.png`` (the intervals and the paper's values).
* ``report.json``: the same numbers for scripts, with every run's parameters, seed, final metric and
  recorded command (from the sweep runner's ``done.json``).

Comparisons (``claims.py``): W_SFT − W_CL under each direction, D_SFT − D_CL under each weight,
|weight effect| − |direction effect|, the Table 2 rows (τ-mask, constant weight) and D_rand, each
where its cells were run. Every file is written atomically, and a file in ``--out`` is replaced only
when the previous ``report.json`` lists it unchanged: the report never overwrites anything it did not
write. Only local files are read (never W&B). A sweep run whose ``done.json`` is missing (still
running, or failed) is left out unless ``--include-unfinished``.

Modules: ``runs`` (run folders, rows), ``queries`` (per-query metrics, the bootstrap), ``claims``
(comparisons, verdict), ``plots``, ``render`` (Markdown, JSON), ``cli`` (the command).
"""

from .claims import COMPARISONS, verdict_of
from .cli import main, write_outputs
from .queries import bootstrap, load_query_table
from .runs import RunRecord, find_run_folders, group_rows, load_run, mean_curve, mean_std

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
    "verdict_of",
    "write_outputs",
]

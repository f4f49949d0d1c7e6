"""`make demo`: the whole loop on CPU in minutes, from nothing but installed packages.

1. a tiny random Qwen2-VL checkpoint (``lightning_modules.tiny``),
2. the demo benchmark built from real data shipped inside packages (``datamodules.demo``),
3. ``experiments.cli fit`` with ``experiments/configs/demo.yaml`` (SFT), validating before and
   after training; both per-task tables are printed and the run folder is named at the end.

Exits 1 if training did not improve the MRB-style average: the demo is also a smoke test that
the model learns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="folder for the tiny model, demo data and runs")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from datamodules.demo import build_demo
    from experiments.cli import build_cli
    from lightning_modules.tiny import build_tiny

    out = Path(args.out)
    model_dir, data_dir = out / "model", out / "data"
    if not (model_dir / "config.json").is_file():
        print(f"building tiny Qwen2-VL into {model_dir}")
        build_tiny(model_dir, family="qwen2_vl", seed=0)
    print(f"building the demo benchmark into {data_dir}")
    build_demo(data_dir, seed=0)

    cli_args = [
        "fit",
        "--config",
        str(CONFIG),
        f"--model.model_name_or_path={model_dir}",
        f"--data.train_root={data_dir / 'train'}",
        f"--data.eval_root={data_dir / 'mrb'}",
        f"--runs_dir={out / 'runs'}",
    ]
    if args.max_steps is not None:
        cli_args.append(f"--trainer.max_steps={args.max_steps}")
    sys.argv = sys.argv[:1]  # the CLI reads only cli_args; keep LightningCLI from seeing --out
    cli = build_cli(cli_args)

    lines = (cli.run_dir / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    history = [json.loads(line) for line in lines]
    before, after = history[0], history[-1]
    print("\nper-task metric, before -> after training")
    for task, result in after["tasks"].items():
        start = before["tasks"][task]["value"]
        print(
            f"  {task:<24} {result['family']:<6} {result['metric']:<10} {start:.3f} -> {result['value']:.3f}"
        )
    print(f"  {'average':<24} {'':<6} {'':<10} {before['average']:.3f} -> {after['average']:.3f}")
    print(f"  (first-stage retriever average: {after['retriever']['average']:.3f})")
    print(f"\nrun folder: {cli.run_dir}")
    offline = sorted((cli.run_dir / "wandb").glob("offline-run-*"))
    if offline:
        print(f"W&B offline run: {offline[-1]}  (upload with: wandb sync {offline[-1]})")
    if after["average"] <= before["average"]:
        print("demo FAILED: training did not improve the average", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

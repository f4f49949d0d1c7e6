"""``make gpu-check``: one short script for a single H100/H200 that settles what a CPU cannot, and
prints one table.

    python -m experiments.bench.gpu_check [--out runs/gpu-check] [--dry-run]

Parts, in order (each timed; the whole is sized for under 8 minutes on an H100/H200):

1. ``imports``: every package rerank-lab needs, importable or not, with the command that fetches
   the missing ones as wheels here (the device machine has no package index; see the device tool's
   README: carry ``.whl`` and install it with ``pip install --no-index --target``).
2. ``test-gpu``: ``pytest -m gpu`` (tests/test_gpu.py: bf16 training, prefix sharing and export on
   CUDA; flash-attn scores when it is installed).
3. ``bench``: the CUDA half of ``make bench`` at real Qwen2-VL-2B and Qwen2.5-VL-3B shapes (random
   weights, bf16): training pairs/s, peak memory and MFU against the naive baseline at N = 4 and
   16, and inference, in one process (``GPU_CHECK_WORKLOAD``: every MRB family, one timing each).
4. ``fsdp-fit``: 20 optimizer steps of the tiny model through ``experiments.cli fit`` with
   ``trainer/fsdp.yaml`` on one GPU (Lightning's FSDPStrategy, bf16-mixed), loss finite.

Without CUDA (or with ``--dry-run``) it runs what a CPU can of each part, in under two minutes:
the import check, ``pytest -m gpu`` (collected, skipped), the bench code path on the tiny model
with the quick workload, and the fit command of part 4 for 2 steps with the strategy, accelerator
and precision of ``trainer/fsdp.yaml`` overridden to ``auto``/``cpu``/``32-true`` (Lightning runs
FSDPStrategy on CUDA only). It exits 0 when every part passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.files import write_text

ROOT = Path(__file__).resolve().parents[2]
# import name -> distribution name (the ones rerank-lab imports at run time, tests included)
REQUIRED = {
    "torch": "torch",
    "lightning": "lightning",
    "transformers": "transformers",
    "peft": "peft",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "PIL": "pillow",
    "numpy": "numpy",
    "omegaconf": "omegaconf",
    "jsonargparse": "jsonargparse",
    "docstring_parser": "docstring-parser",
    "typeshed_client": "typeshed-client",
    "wandb": "wandb",
    "torchmetrics": "torchmetrics",
    "bitsandbytes": "bitsandbytes",
    "pytest": "pytest",
    "pytrec_eval": "pytrec-eval-terrier",
    "sklearn": "scikit-learn",  # the demo data the GPU tests train on
    "skimage": "scikit-image",
}
OPTIONAL = {"flash_attn": "flash-attn"}
WHEEL_COMMAND = (
    "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
    "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "
    "-d .whl {specs}"
)


def check_imports() -> dict:
    """Which required packages import here; what to carry for the missing ones."""
    missing, found = [], {}
    for module, dist in {**REQUIRED, **OPTIONAL}.items():
        if importlib.util.find_spec(module) is None:
            if module in REQUIRED:
                missing.append(dist)
            continue
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "?"
    result = {"ok": not missing, "found": found, "missing": missing}
    if missing:
        pins = []
        for dist in missing:
            try:  # the version this project was tested with, when this machine has it
                pins.append(f"{dist}=={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                pins.append(dist)
        result["carry"] = WHEEL_COMMAND.format(specs=" ".join(pins))
    return result


def _run(command: list[str], timeout: int, env: dict | None = None) -> tuple[int, str]:
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    return done.returncode, done.stdout + done.stderr


def run_gpu_tests(dry: bool, timeout: int = 300) -> dict:
    """``pytest -m gpu``; the dry run collects only the files that hold GPU tests (collecting the
    whole suite costs most of a 2-core machine's minute)."""
    files = ["tests/test_gpu.py", "tests/test_configs.py"] if dry else []
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    code, output = _run(command, timeout)
    summary = next((line for line in reversed(output.splitlines()) if " in " in line and "=" not in line), "")
    summary = summary or next((line for line in reversed(output.splitlines()) if line.strip()), "")
    return {"ok": code == 0, "summary": summary.strip(), "tail": output[-2000:] if code else ""}


def run_bench(out: Path, dry: bool, tiny_dir: Path | None) -> dict:
    from experiments.bench.runner import run

    if dry:
        report = run(out, quick=True, tiny_dir=tiny_dir)
    else:
        report = run(out, models=["qwen2_vl_2b", "qwen2_5_vl_3b"], mode="in-process", check=True)
    rows = []
    for arch, entry in report["models"].items():
        summary, inference = entry["summary"], entry.get("inference", {})
        for key in ("rerank-lab/n4", "rerank-lab/n16", "naive/n4", "naive/n16"):
            result = entry["train"].get(key, {})
            mfu = f", MFU {100 * result['mfu']:.1f}%" if "mfu" in result else ""
            rows.append(
                f"{arch} train {key}: "
                + (
                    "OOM"
                    if result.get("oom")
                    else f"{result.get('pairs_per_s', 0):.1f} pairs/s, {result.get('peak_mib', 0):.0f} MiB{mfu}"
                )
            )
        rows.append(
            f"{arch} speed-up vs naive N=4/16: {summary['train_speedup_n4'] or 0:.2f}x/"
            f"{summary['train_speedup_n16'] or 0:.2f}x; inference {inference.get('default_pairs_per_s', 0):.1f} "
            f"pairs/s ({inference.get('speedup', 0):.2f}x one pair per forward)"
        )
    return {"ok": True, "rows": rows, "json": str(out / "bench.json")}


def run_fsdp_fit(out: Path, dry: bool, tiny_dir: Path, demo_dir: Path) -> dict:
    configs = ROOT / "experiments" / "configs"
    common = [
        sys.executable,
        "-m",
        "experiments.cli",
        "fit",
        "--config",
        str(configs / "base.yaml"),
        "--config",
        str(configs / "model" / "tiny.yaml"),
        "--config",
        str(configs / "data" / "demo.yaml"),
    ]
    overrides = [
        f"--model.model_name_or_path={tiny_dir}",
        f"--data.train_root={demo_dir / 'train'}",
        f"--data.eval_root={demo_dir / 'mrb'}",
        f"--runs_dir={out}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--model.lora_r=4",  # FSDP with LoRA, as real runs
        "--trainer.log_every_n_steps=1",
    ]
    env = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    fsdp = ["--config", str(configs / "trainer" / "fsdp.yaml"), "--trainer.devices=1"]
    if dry:  # the same files, fsdp.yaml included, with the strategy swapped for one a CPU runs
        cpu = ["--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.precision=32-true"]
        command = [*common, *fsdp, *overrides, *cpu, "--trainer.max_steps=2"]
    else:
        command = [*common, *fsdp, *overrides, "--trainer.max_steps=20"]
    started = time.perf_counter()
    code, output = _run(command, 420 if not dry else 120, env)
    metrics = sorted(out.glob("*/metrics.jsonl"))
    losses = []
    if metrics:
        rows = [json.loads(line) for line in metrics[-1].read_text().splitlines() if line.strip()]
        losses = [row["train/loss"] for row in rows if "train/loss" in row]
    ok = code == 0 and bool(losses) and all(loss == loss for loss in losses)
    summary = (
        f"{len(losses)} logged losses, first {losses[0]:.3f} last {losses[-1]:.3f}, "
        f"{time.perf_counter() - started:.0f} s"
        if losses
        else "no loss logged"
    )
    return {"ok": ok, "summary": summary, "tail": "" if ok else output[-3000:]}


def table(parts: dict[str, dict]) -> str:
    lines = ["| part | result | figures | seconds |", "|---|---|---|---|"]
    for name, part in parts.items():
        if name == "imports":
            figures = (
                "missing: " + ", ".join(part["missing"]) if part["missing"] else f"{len(part['found'])} found"
            )
            if "flash-attn" not in part["found"]:
                figures += "; flash-attn absent (sdpa used)"
            versions = [
                f"{d} {part['found'][d]}"
                for d in ("torch", "transformers", "lightning", "peft")
                if d in part["found"]
            ]
            figures += "; " + ", ".join(versions)
        elif name == "bench":
            figures = "<br>".join(part.get("rows", [])) or part.get("error", "")
        else:
            figures = part.get("summary", "")
        lines.append(f"| {name} | {'ok' if part['ok'] else 'FAILED'} | {figures} | {part['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.gpu_check"), description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="the CPU dry run even where CUDA is present")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parts: dict[str, dict] = {}
    started = time.perf_counter()

    def timed(name: str, fn, *fn_args) -> None:
        start = time.perf_counter()
        try:
            parts[name] = fn(*fn_args)
        except Exception as error:  # noqa: BLE001 - one part failing must not hide the others' figures
            parts[name] = {"ok": False, "summary": f"{type(error).__name__}: {error}"[:500]}
        parts[name]["seconds"] = time.perf_counter() - start
        print(f"gpu-check: {name}: {'ok' if parts[name]['ok'] else 'FAILED'}", flush=True)

    timed("imports", check_imports)
    if parts["imports"]["missing"]:
        print(f"gpu-check: carry these wheels (device README):\n  {parts['imports']['carry']}", flush=True)
    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    if not dry:
        print(f"gpu-check: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    else:
        print("gpu-check: no CUDA device (or --dry-run): CPU dry run of every part", flush=True)
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    timed("test-gpu", run_gpu_tests, dry)
    from datamodules.demo import build_demo
    from lightning_modules.tiny import build_tiny

    tiny_dir = args.out / "tiny"
    if not (tiny_dir / "config.json").is_file():
        build_tiny(tiny_dir, family="qwen2_vl", seed=0)
    demo_dir = args.out / "demo"
    if not (demo_dir / "train").is_dir():
        build_demo(demo_dir, seed=0)
    timed("bench", run_bench, args.out / "bench", dry, tiny_dir)
    timed("fsdp-fit", run_fsdp_fit, args.out / "fit", dry, tiny_dir, demo_dir)
    print()
    print(f"gpu-check ({'CPU dry run' if dry else 'CUDA'}), {time.perf_counter() - started:.0f} s")
    print(table(parts))
    for name, part in parts.items():
        if not part["ok"] and part.get("tail"):
            print(f"\n--- {name} output (end) ---\n{part['tail']}")
    write_text(args.out / "gpu_check.json", json.dumps(parts, indent=2, default=str) + "\n")
    return 0 if all(part["ok"] for part in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

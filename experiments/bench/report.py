"""The benchmark's report: summary ratios and ``bench.md`` (see :mod:`experiments.bench.runner`)."""

from __future__ import annotations

import statistics

from experiments.bench.mix import FAMILIES, TRAIN_METHODS, TRAIN_NEGATIVES


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def short(result: dict) -> str:
    if result.get("oom"):
        return "out of memory"
    if "speedup" in result:
        return (
            f"Reranker.score {result['default_pairs_per_s']:.1f} pairs/s (no prefix cache "
            f"{result['batched_pairs_per_s']:.1f}) vs one pair per forward {result['loop_pairs_per_s']:.1f}"
        )
    return f"{result['pairs_per_s']:.1f} pairs/s, peak {result['peak_mib']:.0f} MiB"


def train_summary(train: dict) -> dict:
    def get(method: str, negatives: int, key: str):
        result = train.get(f"{method}/n{negatives}", {})
        return None if result.get("oom") else result.get(key)

    def paired(baseline: str, n: int) -> list[float]:
        """The per-repeat ratios of interleaved runs (runner._measure_training), if any."""
        return train.get(f"rerank-lab/n{n}", {}).get("speedup_repeats", {}).get(baseline, [])

    def speedups(baseline: str) -> dict[int, float | None]:
        return {
            n: statistics.median(paired(baseline, n))
            if paired(baseline, n)
            else ratio(get("rerank-lab", n, "pairs_per_s"), get(baseline, n, "pairs_per_s"))
            for n in TRAIN_NEGATIVES
        }

    def mean(values) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.geometric_mean(known) if known else None

    naive, naive_gc = speedups("naive"), speedups("naive-gc")
    growth = {
        method: ratio(get(method, 16, "peak_mib"), get(method, 4, "peak_mib")) for method in TRAIN_METHODS
    }
    return {
        "train_speedup": mean(naive.values()),
        "train_speedup_n4": naive[4],
        "train_speedup_n16": naive[16],
        "train_speedup_vs_naive_gc": mean(naive_gc.values()),
        "memory_growth_n4_to_n16": growth["rerank-lab"],
        "naive_memory_growth_n4_to_n16": growth["naive"],
        "naive_gc_memory_growth_n4_to_n16": growth["naive-gc"],
        # vs naive, per N: [min, median, max] over the interleaved repeats
        "train_speedup_spread": {
            n: [min(paired("naive", n)), statistics.median(paired("naive", n)), max(paired("naive", n))]
            for n in TRAIN_NEGATIVES
            if paired("naive", n)
        },
    }


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _pct(value: float | None, bound: float | None) -> str:
    return "n/a" if value is None or not bound else f"{100 * value / bound:.0f}%"


def _train_cell(train: dict, family: str, negatives: int) -> str:
    ours = train.get(f"rerank-lab/n{negatives}", {}).get("families", {}).get(family, {})
    naive = train.get(f"naive/n{negatives}", {}).get("families", {}).get(family, {})
    measured = ratio(naive.get("seconds"), ours.get("seconds"))
    return f"{_fmt(measured, 2, 'x')} / {_fmt(ours.get('bound'), 2, 'x')}"


def bound_lines(report: dict) -> list[str]:
    """Per family: the exact-computation bound of each speed-up next to the measured ratio."""
    lines = [
        "",
        "## Measured vs the exact-computation bound",
        "",
        "bound: the work the baseline does ÷ the work that must be done (shared prefix once, each image once, "
        "label rows only), in FLOPs counted on the encoded pairs (experiments/bench/bounds.py). measured: the "
        "baseline's time ÷ rerank-lab's, same family. Training against naive, inference against one pair per "
        "forward.",
        "",
        "| model | family | MRB datasets | train N=4: measured / bound | train N=16: measured / bound | "
        "inference: measured / bound |",
        "|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        train, inference = entry["train"], entry.get("inference", {})
        families = list(train.get("rerank-lab/n4", {}).get("families", {}) or inference.get("families", {}))

        for family in families:
            row = inference.get("families", {}).get(family, {})
            measured = ratio(row.get("default_pairs_per_s"), row.get("loop_pairs_per_s"))
            lines.append(
                f"| {arch} | {family} | {FAMILIES[family][0]} | {_train_cell(train, family, 4)} | {_train_cell(train, family, 16)} | "
                f"{_fmt(measured, 2, 'x')} / {_fmt(row.get('bound'), 2, 'x')} |"
            )
        s = entry["summary"]
        lines.append(
            f"| {arch} | **MRB mix** | 40 | {_fmt(s['train_speedup_n4'], 2, 'x')} / "
            f"{_fmt(train.get('rerank-lab/n4', {}).get('bound'), 2, 'x')} | {_fmt(s['train_speedup_n16'], 2, 'x')} / "
            f"{_fmt(train.get('rerank-lab/n16', {}).get('bound'), 2, 'x')} | "
            f"{_fmt(inference.get('speedup'), 2, 'x')} / {_fmt(inference.get('bound'), 2, 'x')} |"
        )
    return lines


def _spread_lines(report: dict) -> list[str]:
    """The headline speed-up's spread over the interleaved repeats, with the load it was measured at."""
    spread = report.get("train_speedup_spread") or {}
    if not spread:
        return []
    figures = "; ".join(
        f"N = {n}: {mid:.2f}x ({low:.2f}-{high:.2f})" for n, (low, mid, high) in spread.items()
    )
    load = report.get("load_average")
    return [
        "",
        f"Speed-up vs naive, median (min-max) over {report.get('repeats')} interleaved repeats: {figures}"
        + (f"; load average {load[0]:.1f}-{load[1]:.1f} after the runs." if load else "."),
    ]


def _intro_lines(report: dict) -> list[str]:
    """The title, the device and the workload, and the training table's heading and method notes."""
    weights = ", ".join(f"{family} {count}" for family, (count, _, _) in FAMILIES.items())
    return [
        "# rerank-lab benchmark",
        "",
        f"Device: **{report['device']}**, {report['threads']} torch thread(s). Objective CL, LoRA "
        f"r={report['lora_r']} on the language model, AdamW. Reproduce: `python -m experiments.bench`.",
        f"Memory: {report['memory_method']}.",
        f"Workload: one query group per MRB task family, throughput of MRB's 40-dataset mix "
        f"(Σ w·pairs ÷ Σ w·seconds, w = datasets per family: {weights}); per-family figures in bench.json.",
        "",
        "## Training (one optimizer step: forward + backward + AdamW)",
        "",
        "rerank-lab: `RerankerModule.training_step` (label-token rows, the group's shared prefix run once, "
        "images through the frozen vision tower once, checkpointed length-sorted micro-batches). naive: "
        "`model(**inputs).logits` (all positions, full vocabulary), right padding + gather, the whole group "
        "in one forward. naive-gc: naive + Hugging Face gradient checkpointing.",
        "",
    ]


def _train_lines(report: dict) -> list[str]:
    """One row per model, N and training method: throughput, peak memory and MFU (OOM where it ran out)."""
    lines = [
        "| model | N | method | pairs/step | tokens/pair | pairs/s | peak step MiB | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        for key, result in entry["train"].items():
            method, negatives = key.split("/n")
            if result.get("oom"):
                lines.append(f"| {arch} | {negatives} | {method} | | | OOM | OOM | |")
                continue
            mfu = f"{100 * result['mfu']:.1f}%" if "mfu" in result else ""
            lines.append(
                f"| {arch} | {negatives} | {method} | {result['pairs_per_step']} | {result['tokens_per_pair']} | "
                f"{result['pairs_per_s']:.2f} | {result['peak_mib']:.0f} | {mfu} |"
            )
    return lines


def _train_summary_lines(report: dict) -> list[str]:
    """One row per model: the head's FLOP share, the speed-ups and the memory growth from N=4 to N=16."""
    lines = [
        "",
        "| model | head ÷ decoder FLOPs | speed-up vs naive N=4 / N=16 | vs naive-gc | memory growth 4→16: "
        "rerank-lab / naive / naive-gc |",
        "|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        s = entry["summary"]
        lines.append(
            f"| {arch} | {_fmt(entry.get('head_flops_per_decoder_flops'), 2)} | "
            f"{_fmt(s['train_speedup_n4'], 2, 'x')} / {_fmt(s['train_speedup_n16'], 2, 'x')} | "
            f"{_fmt(s['train_speedup_vs_naive_gc'], 2, 'x')} | {_fmt(s['memory_growth_n4_to_n16'], 2, 'x')} / "
            f"{_fmt(s['naive_memory_growth_n4_to_n16'], 2, 'x')} / "
            f"{_fmt(s['naive_gc_memory_growth_n4_to_n16'], 2, 'x')} |"
        )
    return lines


def _inference_lines(report: dict) -> list[str]:
    """The inference section: per model and family, one pair per forward vs Reranker.score, then the mix."""
    lines = [
        "",
        "## Inference (end to end: encoding + scoring, one query's candidates per call)",
        "",
        "one pair per forward: each pair encoded and scored alone (same label-token scorer, so only batching "
        "and sharing differ). Reranker.score: all pairs encoded, length-sorted, batched, with the shared "
        'query prefix\'s KV cache where it pays (`prefix_cache="auto"`, the default); also shown without it.',
        "",
        "| model | family | MRB datasets | pairs | tokens/pair | one pair per forward | Reranker.score, no prefix cache "
        "| Reranker.score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        result = entry.get("inference")
        if not result:
            continue
        for family, row in result["families"].items():
            lines.append(
                f"| {arch} | {family} | {FAMILIES[family][0]} | {row['pairs']} | {row['tokens_per_pair']} | "
                f"{row['loop_pairs_per_s']:.1f} | {row['batched_pairs_per_s']:.1f} | {row['default_pairs_per_s']:.1f} |"
            )
        lines.append(
            f"| {arch} | **MRB mix** | 40 | | {result['tokens_per_pair']} | {result['loop_pairs_per_s']:.1f} | "
            f"{result['batched_pairs_per_s']:.1f} | {result['default_pairs_per_s']:.1f} |"
        )
        lines.append("")
        lines.append(
            f"Largest |score difference| Reranker.score vs one pair per forward: "
            f"{result['max_abs_diff_default_vs_loop']:.1e} (float reduction order only)."
        )
    return lines


def _headline_lines(report: dict) -> list[str]:
    """The headline model's speed-ups and memory growth against their targets and bounds, and the notes."""
    targets = report["targets"]
    return [
        "",
        f"## Headline ({report['headline_model']})",
        "",
        f"- training speed-up over naive (geometric mean of N=4 and N=16): {_fmt(report['train_speedup'], 2)}x "
        f"(target >= 2x: {_met(targets['train_speedup>=2'])}); over naive-gc: "
        f"{_fmt(report['train_speedup_vs_naive_gc'], 2)}x",
        f"- rerank-lab peak step memory N=4 → N=16: {_fmt(report['memory_growth_n4_to_n16'], 2)}x "
        f"(target < 1.3x: {_met(targets['memory_growth<1.3'])}); naive: "
        f"{_fmt(report['naive_memory_growth_n4_to_n16'], 2)}x, naive-gc: "
        f"{_fmt(report['naive_gc_memory_growth_n4_to_n16'], 2)}x",
        f"- exact-computation bounds (MRB mix): training {_fmt(report.get('train_bound'), 2)}x, so the measured "
        f"{_fmt(report['train_speedup'], 2)}x is {_pct(report['train_speedup'], report.get('train_bound'))} of it; "
        f"inference {_fmt(report.get('inference_bound'), 2)}x, measured {_fmt(report['inference_speedup'], 2)}x = "
        f"{_pct(report['inference_speedup'], report.get('inference_bound'))}",
        f"- inference speed-up of Reranker.score over one pair per forward, MRB mix: "
        f"{_fmt(report['inference_speedup'], 2)}x (target >= 5x: {_met(targets['inference_speedup>=5'])}); "
        f"of which the shared-prefix cache: {_fmt(report['prefix_cache_speedup'], 2)}x",
        "",
        "Head ÷ decoder FLOPs is the LM head's share of per-token compute, which is what skipping the",
        "full-vocabulary logits saves. Real checkpoints: Qwen2-VL-2B 0.18, Qwen2.5-VL-7B 0.08. `scaled2b` keeps",
        "the 2B proportions (the honest CPU comparison); `vocab152k` (Qwen's real vocabulary on a hidden-256",
        "decoder) gives the head a far larger share than real models, so its speed-ups overstate.",
        "",
    ]


def markdown(report: dict) -> str:
    """``bench.md``: the device, the training and inference tables, targets and the method notes."""
    lines = _intro_lines(report) + _train_lines(report) + _train_summary_lines(report)
    lines += _spread_lines(report)
    lines += _inference_lines(report)
    lines += bound_lines(report)
    lines += _headline_lines(report)
    return "\n".join(lines)

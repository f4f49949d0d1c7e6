"""The probe report's statistics (experiments/report/): per-seed differences, the paired bootstrap over
queries from TREC files, the computed verdict, report.json and safe writing.

Run folders are built here as ``experiments.cli`` and ``experiments.sweep`` leave them, with TREC runs
whose per-query recall@1 is known: a query scores 1 when its relevant document is ranked first."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules.trec import write_run
from experiments import report
from experiments import sweep as sweep_module
from experiments.report import queries

TASKS = ("alpha", "beta")
N_QUERIES = 60  # per task


def write_eval_root(root: Path) -> Path:
    """An MRB root with two tasks of N_QUERIES queries, one relevant document each (q<i> -> rel<i>)."""
    for task in TASKS:
        folder = root / task
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(
            json.dumps({"family": "T2T", "metric": "recall@1", "instruction": "x"})
        )
        lines = [f"q{i:03d} 0 rel{i} 1\n" for i in range(N_QUERIES)]
        (folder / "qrels.tsv").write_text("".join(lines), encoding="utf-8")
    return root


def write_probe_run(
    sweep_dir: Path,
    weight: str,
    direction: str,
    seed: int,
    hits: dict[str, np.ndarray],
    eval_root: Path,
    env: dict | None = None,
) -> Path:
    """One finished sweep run of the cell whose final validation ranks query i's relevant document first
    exactly when ``hits[task][i]``: per-query recall@1 = hits."""
    key = f"url-W{weight}-D{direction}-s{seed}"
    run = sweep_dir / key / f"{key}-20260101-000000"
    (run / "runs" / "val-step8").mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "model": {"objective": "url", "objective_args": {"weight": weight, "direction": direction}},
        "data": {"eval_root": str(eval_root), "num_negatives": 3},
        "trainer": {"max_steps": 8},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    tasks = {}
    for task, task_hits in hits.items():
        trec = {
            f"q{i:03d}": {f"rel{i}": 1.0 if hit else 0.0, f"other{i}": 0.5} for i, hit in enumerate(task_hits)
        }
        write_run(run / "runs" / "val-step8" / f"{task}.trec", trec)
        tasks[task] = {
            "family": "T2T",
            "metric": "recall@1",
            "value": float(np.mean(task_hits)),
            "n_queries": N_QUERIES,
        }
    average = float(np.mean([t["value"] for t in tasks.values()]))
    record = {"stage": "val", "step": 8, "tasks": tasks, "families": {"T2T": average}, "average": average}
    (run / "eval_history.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    metrics = [{"step": s, "train/weight_pos_mean": 0.5 / s, "train/weight_neg_sum": 1 / s} for s in (2, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    params = {
        "model.objective": "url",
        "model.objective_args.weight": weight,
        "model.objective_args.direction": direction,
        "seed_everything": seed,
    }
    command = [
        "/usr/bin/env",
        sys.executable,
        "-m",
        "experiments.cli",
        "fit",
        *(f"--{k}={v}" for k, v in params.items()),
    ]
    done = {
        "key": key,
        "params": params,
        "command": command,
        "cwd": "/project",
        "env": env or {},
        "returncode": 0,
        "seconds": 12.5,
        "run_dir": run.name,
        "metric": {"val/mrb_avg": average},
    }
    (run.parent / "done.json").write_text(json.dumps(done), encoding="utf-8")
    (run.parent / "run.log").write_text("", encoding="utf-8")
    return run


def hit_vector(rate: float, offset: int = 0) -> np.ndarray:
    """N_QUERIES hits, ``rate`` of them 1, starting at query ``offset`` (wrapping)."""
    hits = np.zeros(N_QUERIES, dtype=bool)
    hits[(offset + np.arange(round(rate * N_QUERIES))) % N_QUERIES] = True
    return hits


def build_probe(tmp_path: Path, rates: dict[tuple[str, str], float], seeds=(0, 1, 2), offsets=None) -> Path:
    """A sweep folder with one run per cell and seed; each seed shifts which queries are hit."""
    eval_root = write_eval_root(tmp_path / "mrb")
    sweep_dir = tmp_path / "sweep"
    for (weight, direction), rate in rates.items():
        for seed in seeds:
            offset = (offsets or {}).get((weight, direction), 0) + seed
            hits = {task: hit_vector(rate, offset) for task in TASKS}
            write_probe_run(sweep_dir, weight, direction, seed, hits, eval_root, env={"OMP_NUM_THREADS": "1"})
    return sweep_dir


def run_report(sweep_dir: Path, out: Path, *extra: str, plots: bool = False) -> dict:
    options = ["--resamples", "2000", *([] if plots else ["--no-plots"]), *extra]
    assert report.main([str(sweep_dir), "--out", str(out), *options]) == 0
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def comparison(data: dict, key: str) -> dict:
    return next(c for c in data["comparisons"] if c["key"] == key)


SFT_BETTER = {("sft", "sft"): 0.9, ("sft", "cl"): 0.85, ("cl", "sft"): 0.4, ("cl", "cl"): 0.35}
EIGHT = tuple(range(8))
NINE = tuple(range(9))


def jittered(rates: dict, seeds, spread: float = 0.05) -> dict:
    """Per-seed rates: each cell's rate moves with the seed (seed noise shared by no two cells)."""
    rng = np.random.default_rng(5)
    return {
        (cell, s): min(1.0, max(0.0, r + rng.uniform(-spread, spread)))
        for cell, r in rates.items()
        for s in seeds
    }


def test_weight_claim_holds_over_eight_seeds(tmp_path):
    data = run_report(build_probe(tmp_path, SFT_BETTER, seeds=EIGHT), tmp_path / "out")
    for key in ("weight_at_dsft", "weight_at_dcl"):
        result = comparison(data, key)
        assert result["verdict"] == "holds" and result["n_seeds"] == 8
        assert result["estimate"] == pytest.approx(0.5)  # 0.9 - 0.4, 0.85 - 0.35
        assert result["interval"]["low"] > 0.3 and result["p_t_holm"] < 0.05
        # every seed on one side: the exact sign-flip p is 2 / 2^8, times 3 claims at Holm's first step
        assert result["sign_flip_p"] == pytest.approx(2 / 256)
    main = comparison(data, "weight_over_direction")
    assert main["estimate"] == pytest.approx(0.45) and main["verdict"] == "holds"
    assert "cannot reach significance" not in data["verdict"]
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "W_SFT − W_CL under D_SFT: holds (+50.00 points over 8 seeds" in data["verdict"]
    # The paper's headline, plain SFT against plain CL, is reported beside the claims, outside Holm's family.
    headline = comparison(data, "sft_over_cl")
    assert headline["claim"] is None and headline["estimate"] == pytest.approx(0.55)  # 0.9 - 0.35
    assert headline["n_seeds"] == 8 and headline["paper"] == pytest.approx(1.69)
    assert "| SFT − CL (W_SFT × D_SFT − W_CL × D_CL) | 8 |" in text and "(not a claim)" in text
    assert "D_rand helps W_CL and hurts W_SFT was not tested (not run: W_CL × D_rand, W_SFT × D_rand)" in text


def test_three_seeds_cannot_reach_significance_and_the_report_says_so_first(tmp_path):
    """The old rule called this 'holds'; at 3 seeds no distribution-free test can get below 0.25."""
    data = run_report(build_probe(tmp_path, SFT_BETTER), tmp_path / "out")
    assert data["verdict"].startswith("This design cannot reach significance: with 3 paired seed(s)")
    assert "At least 7 seeds are needed" in data["verdict"]  # 2/2^7 < 0.05/3
    for result in data["comparisons"]:
        assert result["verdict"] == "inconclusive" and result["min_sign_flip_p"] == 0.25


def test_weight_claim_is_contradicted_when_cl_weight_wins(tmp_path):
    rates = {("sft", "sft"): 0.3, ("sft", "cl"): 0.35, ("cl", "sft"): 0.8, ("cl", "cl"): 0.85}
    data = run_report(build_probe(tmp_path, rates, seeds=EIGHT), tmp_path / "out")
    for key in ("weight_at_dsft", "weight_at_dcl"):
        result = comparison(data, key)
        assert result["verdict"] == "contradicted" and result["interval"]["high"] < 0
        assert result["estimate"] == pytest.approx(-0.5)
    assert "W_SFT − W_CL under D_CL: contradicted (-50.00 points" in data["verdict"]


def test_no_effect_with_seed_noise_is_inconclusive_with_its_mde(tmp_path):
    eval_root = write_eval_root(tmp_path / "mrb")
    rates = jittered({("sft", "sft"): 0.5, ("cl", "sft"): 0.5}, EIGHT, spread=0.15)
    for ((weight, direction), seed), rate in rates.items():
        hits = {task: hit_vector(rate, seed) for task in TASKS}
        write_probe_run(tmp_path / "sweep", weight, direction, seed, hits, eval_root)
    data = run_report(tmp_path / "sweep", tmp_path / "out")
    result = comparison(data, "weight_at_dsft")
    assert result["verdict"] == "inconclusive" and result["interval"]["low"] < 0 < result["interval"]["high"]
    # the MDE of a paired t over 8 seeds at 80% power is about 1.2 seed SDs at alpha 0.05
    assert result["mde"] == pytest.approx(1.2 * result["std"], rel=0.1)
    assert f"MDE {100 * result['mde']:.1f}" in data["verdict"]


def test_table2_and_drand_rows_are_compared_when_run(tmp_path):
    rates = {
        **SFT_BETTER,
        ("tau_mask", "sft"): 0.8,
        ("constant", "sft"): 0.3,
        ("cl", "projection"): 0.5,
        ("sft", "projection"): 0.6,
    }
    data = run_report(build_probe(tmp_path, rates, seeds=NINE), tmp_path / "out")
    assert comparison(data, "tau_over_base")["estimate"] == pytest.approx(0.5)
    assert comparison(data, "sft_over_tau")["estimate"] == pytest.approx(0.1)
    # 7 claims: Holm's first step needs p < 0.05 / 7; nine seeds give 2/512
    for key in ("tau_over_base", "sft_over_tau", "drand_cl", "drand_sft"):
        assert comparison(data, key)["verdict"] == "holds", key
    cells = [row["cell"] for row in data["rows"]]
    assert "W_base+τ-mask × D_SFT" in cells and "W_base × D_SFT" in cells and "W_SFT × D_rand" in cells
    assert "was not tested" not in data["verdict"]


def test_seed_values_means_stds_and_tests_are_exact(tmp_path):
    from scipy import stats as scipy_stats

    eval_root = write_eval_root(tmp_path / "mrb")
    sweep_dir = tmp_path / "sweep"
    # recall@1 of 30/60, 36/60, 42/60 for W_SFT x D_SFT, and 30/60, 33/60, 30/60 for W_CL x D_SFT
    for seed, (a, b) in enumerate([(30, 30), (36, 33), (42, 30)]):
        for weight, count in (("sft", a), ("cl", b)):
            hits = {task: hit_vector(count / N_QUERIES) for task in TASKS}
            write_probe_run(sweep_dir, weight, "sft", seed, hits, eval_root)
    data = run_report(sweep_dir, tmp_path / "out")
    sft = next(r for r in data["rows"] if r["weight"] == "sft")
    assert sft["mrb_avg"]["mean"] == pytest.approx(0.6) and sft["mrb_avg"]["std"] == pytest.approx(0.1)
    result = comparison(data, "weight_at_dsft")
    assert result["values"] == pytest.approx([0.0, 0.05, 0.2])
    assert result["mean"] == pytest.approx(0.25 / 3) and result["std"] == pytest.approx(
        np.std([0, 0.05, 0.2], ddof=1)
    )
    assert result["p_t"] == pytest.approx(scipy_stats.ttest_1samp([0, 0.05, 0.2], 0).pvalue)
    assert result["sign_flip_p"] == pytest.approx(4 / 8)  # patterns with |mean| >= 0.0833: 4 of 8
    assert result["estimate"] == pytest.approx(0.6 - 31 / 60)
    assert result["verdict"] == "inconclusive"
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| url | sft | sft | 3 (0,1,2) | 60.00 ± 10.00 |" in text
    assert "| W_SFT − W_CL under D_SFT | 3 | s0: +0.00, s1: +5.00, s2: +20.00 | +8.33 ± 10.41 |" in text


def test_seeds_that_change_nothing_are_pointed_out(tmp_path):
    eval_root = write_eval_root(tmp_path / "mrb")
    for seed in (0, 1):
        for weight, rate in (("sft", 0.5), ("cl", 0.4)):
            hits = {task: hit_vector(rate) for task in TASKS}
            write_probe_run(tmp_path / "sweep", weight, "sft", seed, hits, eval_root)
    data = run_report(tmp_path / "sweep", tmp_path / "out")
    assert "W_SFT × D_SFT: its 2 seeds gave the same final metric to the last digit" in "\n".join(
        data["notes"]
    )
    assert comparison(data, "weight_at_dsft")["std"] == 0.0


def test_baselines_gates_and_per_query_values(tmp_path):
    """With candidates.trec the report scores the first stage and the random order on the same
    candidates; a cell below the random order fails the gate and no claim is judged."""
    rates = {("sft", "sft"): 0.9, ("cl", "sft"): 0.3}
    sweep_dir = build_probe(tmp_path, rates, seeds=EIGHT)
    for task in TASKS:  # the first stage ranks other<i> above rel<i>: recall@1 0, random order 1/2
        lines = [f"q{i:03d} Q0 other{i} 1 2.0 fs\nq{i:03d} Q0 rel{i} 2 1.0 fs\n" for i in range(N_QUERIES)]
        (tmp_path / "mrb" / task / "candidates.trec").write_text("".join(lines), encoding="utf-8")
        docs = [{"id": f"{k}{i}", "text": "d"} for i in range(N_QUERIES) for k in ("rel", "other")]
        (tmp_path / "mrb" / task / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        queries_ = [{"id": f"q{i:03d}", "text": "q"} for i in range(N_QUERIES)]
        (tmp_path / "mrb" / task / "queries.jsonl").write_text(
            "".join(json.dumps(q) + "\n" for q in queries_)
        )
    data = run_report(sweep_dir, tmp_path / "out")
    assert data["baselines"]["means"] == pytest.approx({"first stage": 0.0, "random order": 0.5})
    versus = {e["cell"]: e["baselines"]["random order"] for e in data["baselines"]["versus"]}
    assert versus["W_SFT × D_SFT"]["estimate"] == pytest.approx(0.4) and versus["W_SFT × D_SFT"]["low"] > 0
    assert versus["W_CL × D_SFT"]["estimate"] == pytest.approx(-0.2) and versus["W_CL × D_SFT"]["high"] < 0
    gate = next(g for g in data["gates"] if "random order" in g["gate"])
    assert gate["passed"] is False and "W=cl" in gate["detail"]
    first = next(g for g in data["gates"] if "first stage" in g["gate"])
    best = next(e for e in data["baselines"]["versus"] if e["cell"] == "W_SFT × D_SFT")["baselines"]
    width = best["first stage"]["estimate"] - best["first stage"]["low"]
    assert first["passed"] is True and first["needed_mean"] == pytest.approx(-0.02 + width)
    assert f"passes from a mean of {100 * (width - 0.02):+.2f}" in first["detail"]
    result = comparison(data, "weight_at_dsft")
    assert result["verdict"].startswith("setting not valid") and result["verdict_before_gates"] == "holds"
    assert "The setting is not valid" in data["verdict"]
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "**not above**" in text and "**FAILED**" in text
    run = data["runs"][0]
    assert sorted(run["per_query"]) == list(TASKS) and len(run["per_query"]["alpha"]) == N_QUERIES


def test_mechanism_table_and_weight_ratio_per_seed(tmp_path):
    data = run_report(build_probe(tmp_path, SFT_BETTER, seeds=(0, 1)), tmp_path / "out")
    mech = data["mechanism"]
    row = next(r for r in mech["rows"] if r["cell"] == "W_SFT × D_SFT")
    # W+ logged 0.25 at step 2 and 0.125 at step 4: three windows over steps 0-4
    assert [w["mean"] for w in row["windows"]["train/weight_pos_mean"]] == [None, 0.25, 0.125]
    ratio = next(r for r in mech["ratios"] if r["direction"] == "sft")
    assert ratio["train/weight_pos_mean"]["per_seed"] == pytest.approx([1.0, 1.0])
    assert "ratio W_CL / W_SFT under D_SFT" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_bootstrap_is_the_stated_procedure_and_deterministic():
    rng = np.random.default_rng(7)
    a = {"t1": rng.random(40), "t2": rng.random(25)}
    b = {"t1": rng.random(40), "t2": rng.random(25)}
    stat = {"d": lambda m: m["A"] - m["B"]}
    first = queries.bootstrap({"A": a, "B": b}, stat, resamples=500, seed=3)
    assert first == queries.bootstrap({"A": a, "B": b}, stat, resamples=500, seed=3)
    assert first != queries.bootstrap({"A": a, "B": b}, stat, resamples=500, seed=4)
    # By hand: per task, draw query indices (same draw for both cells); average task means.
    draw = np.random.default_rng(3)
    diffs = np.zeros(500)
    for task in ("t1", "t2"):
        idx = draw.integers(0, len(a[task]), size=(500, len(a[task])))
        diffs += (a[task][idx] - b[task][idx]).mean(axis=1) / 2
    low, high = np.percentile(diffs, [2.5, 97.5])
    estimate = (a["t1"].mean() + a["t2"].mean()) / 2 - (b["t1"].mean() + b["t2"].mean()) / 2
    assert first["d"] == pytest.approx({"estimate": estimate, "low": low, "high": high}, abs=1e-12)


@pytest.mark.slow  # importing scipy.stats alone takes seconds
def test_bootstrap_agrees_with_scipy_on_one_task():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.5, 0.2, 300), rng.normal(0.45, 0.2, 300)
    ours = queries.bootstrap({"A": {"t": a}, "B": {"t": b}}, {"d": lambda m: m["A"] - m["B"]}, 10_000, 0)["d"]
    theirs = stats.bootstrap(
        (a - b,), np.mean, n_resamples=10_000, method="percentile", random_state=np.random.default_rng(1)
    ).confidence_interval
    width = theirs.high - theirs.low
    assert abs(ours["low"] - theirs.low) < 0.05 * width and abs(ours["high"] - theirs.high) < 0.05 * width


def test_report_json_lists_every_run_with_its_command(tmp_path):
    data = run_report(build_probe(tmp_path, SFT_BETTER, seeds=(0, 1)), tmp_path / "out", plots=True)
    assert data["generator"] == "experiments.report" and len(data["runs"]) == 8
    run = next(r for r in data["runs"] if r["cell"] == "W_CL × D_SFT" and r["seed"] == 1)
    assert set(run) >= {"path", "cell", "seed", "parameters", "final", "command", "command_line", "seconds"}
    assert run["parameters"]["model.objective_args.weight"] == "cl" and run["final"]["step"] == 8
    assert run["final"]["mrb_avg"] == pytest.approx(0.4) and run["final"]["tasks"] == {
        "alpha": 0.4,
        "beta": 0.4,
    }
    # An older record (the machine's interpreter, /usr/bin/env, a cwd) is shown as it runs from any clone.
    assert (
        run["command"][:3] == ["python", "-m", "experiments.cli"] and "--seed_everything=1" in run["command"]
    )
    assert run["command_line"].startswith("OMP_NUM_THREADS=1 python -m experiments.cli fit ")
    assert sys.executable not in json.dumps(data["runs"])
    assert data["statistics"]["resamples"] == 2000 and data["statistics"]["queries"] == {
        "alpha": 60,
        "beta": 60,
    }
    assert "two-level percentile bootstrap" in data["statistics"]["procedure"]
    out = tmp_path / "out"
    for name in ("report.md", "probe_table.md", "probe_bar.png", "weights.png", "intervals.png"):
        assert name in data["outputs"], name
    for name in ("probe_bar.png", "weights.png", "intervals.png"):  # the one test that draws (seconds)
        blob = (out / name).read_bytes()
        assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 10_000, name
    assert run["command_line"] in (out / "report.md").read_text(encoding="utf-8")


def test_outputs_never_overwrite_files_the_report_did_not_write(tmp_path, capsys, monkeypatch):
    for name in ("bars", "weights", "intervals"):  # drawing is tested once, elsewhere
        monkeypatch.setattr(report.plots, name, lambda *args, name=name: name.encode())
    sweep_dir = build_probe(tmp_path, SFT_BETTER, seeds=(0,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    run_report(sweep_dir, out, plots=True)
    run_report(sweep_dir, out)  # its own, unchanged outputs are replaced; the plots stay its own
    assert json.loads((out / "report.json").read_text())["outputs"]["weights.png"]
    run_report(sweep_dir, out, plots=True)
    assert (out / "weights.png").read_bytes() == b"weights"
    assert (out / "notes.txt").read_text() == "mine"
    (out / "report.md").write_text("edited by hand", encoding="utf-8")
    assert report.main([str(sweep_dir), "--out", str(out), "--resamples", "200", "--no-plots"]) == 2
    assert "report.md: exists and is not an unchanged output of an earlier report" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "edited by hand"
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text("{}", encoding="utf-8")
    assert report.main([str(sweep_dir), "--out", str(other), "--no-plots"]) == 2
    assert "was not written by python -m experiments.report" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["report.json"]


def test_missing_trec_files_leave_the_intervals_out_and_say_why(tmp_path):
    sweep_dir = build_probe(tmp_path, SFT_BETTER, seeds=(0,))
    trec = next(sweep_dir.glob("url-Wcl-Dsft-s0/*/runs/val-step8/beta.trec"))
    trec.unlink()
    data = run_report(sweep_dir, tmp_path / "out")
    result = comparison(data, "weight_at_dsft")
    assert result["interval"] is None and f"{trec}: missing" in result["why"]
    assert (
        comparison(data, "direction_at_wsft")["interval"] is not None
    )  # cells with TREC files still compare
    assert f"{trec}: missing" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


FAKE_PROGRAM = textwrap.dedent(
    """
    import json, pathlib, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    run = pathlib.Path(args["runs_dir"]) / (args["run_name"] + "-20260101-000000")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"seed_everything: {args['seed_everything']}\\nmodel:\\n  objective: url\\n"
        f"  objective_args: {{weight: {args['w']}, direction: sft}}\\n"
    )
    record = {"stage": "val", "step": 2, "tasks": {}, "average": 0.5}
    (run / "eval_history.jsonl").write_text(json.dumps(record) + "\\n")
    """
)


def test_a_sweep_records_the_command_folder_and_threads_the_report_prints(tmp_path, monkeypatch):
    program = tmp_path / "fake.py"
    program.write_text(FAKE_PROGRAM, encoding="utf-8")
    config = {
        "name": "fake",
        "method": "grid",
        "command": ["${interpreter}", str(program), "${args}"],
        "parameters": {"w": {"values": ["sft", "cl"]}, "seed_everything": {"values": [0]}},
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(sweep_module.AGENT_TAG_ENV, raising=False)
    assert sweep_module.main([str(path), "--local", "--runs-dir", str(tmp_path / "sweep")]) == 0
    data = run_report(tmp_path / "sweep", tmp_path / "out")
    run = next(r for r in data["runs"] if r["weight"] == "cl")
    assert "cwd" not in run and run["env"] == {"OMP_NUM_THREADS": "1"}
    # Portable: the interpreter as `python`, paths relative to the folder the sweep ran in.
    assert run["command"] == [
        "python",
        "fake.py",
        "--w=cl",
        "--seed_everything=0",
        "--runs_dir=sweep/wcl",
        "--run_name=wcl",
    ]
    assert run["command_line"] == "OMP_NUM_THREADS=1 " + " ".join(run["command"])
    done = json.loads((tmp_path / "sweep" / "wcl" / "done.json").read_text(encoding="utf-8"))
    assert str(tmp_path) not in json.dumps(done["command"])


@pytest.mark.slow
def test_real_demo_sweep_per_query_metrics_match_the_validation(
    tiny_model_dir, demo_dir, tmp_path, monkeypatch
):
    """On run folders the CLI really wrote: the TREC files' per-query metrics average to the recorded
    task values (no mismatch note), and the weight comparison gets an interval."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "sweep"
    settings = {
        "seed_everything": "0",
        "model.objective_args.direction": "sft",
        "trainer.max_steps": "2",
        "trainer.val_check_interval": "2",
        "model.model_name_or_path": str(tiny_model_dir),
        "data.train_root": str(demo_dir / "train"),
        "data.eval_root": str(demo_dir / "mrb"),
        "data.eval_tasks": "[digits-t2i, stdlib-docs]",
        "data.eval_top_k": "8",
    }
    args = ["experiments/sweeps/demo_probe.yaml", "--local", "--runs-dir", str(out)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert sweep_module.main(args) == 0
    data = run_report(out, tmp_path / "report")
    assert len(data["runs"]) == 2 and not [n for n in data["notes"] if "TREC run scores" in n]
    result = comparison(data, "weight_at_dsft")
    assert result["interval"] is not None and data["statistics"]["queries"] == {
        "digits-t2i": 16,
        "stdlib-docs": 16,
    }
    finals = {r["weight"]: r["final"]["mrb_avg"] for r in data["runs"]}
    assert result["estimate"] == pytest.approx(finals["sft"] - finals["cl"], abs=1e-12)
    prefix = "OMP_NUM_THREADS=1 python -m experiments.cli fit "
    assert all(r["command_line"].startswith(prefix) for r in data["runs"])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("config_list", "config.yaml: not a mapping of config keys"),
        ("config_bytes", "config.yaml: not UTF-8 text"),
        ("history_bytes", "eval_history.jsonl: not UTF-8 text"),
        ("average_nan", "'average' is nan, not a finite number"),
        ("average_text", "'average' is 'high', not a finite number"),
        ("tasks_list", "'tasks' is not {task:"),
        ("garbage_last_line", "eval_history.jsonl:2: not a JSON line"),
    ],
)
def test_one_damaged_run_folder_is_left_out_with_its_reason(tmp_path, damage, reason):
    sweep_dir = build_probe(tmp_path, {("sft", "sft"): 0.9, ("cl", "sft"): 0.4}, seeds=(0, 1))
    run = next(sweep_dir.glob("url-Wcl-Dsft-s1/*-000000"))
    history = run / "eval_history.jsonl"
    record = json.loads(history.read_text(encoding="utf-8"))
    if damage == "config_list":
        (run / "config.yaml").write_text("- just\n- a list\n", encoding="utf-8")
    elif damage == "config_bytes":
        (run / "config.yaml").write_bytes(b"seed_everything: 1\nmodel: {objective: \xff}\n")
    elif damage == "history_bytes":
        history.write_bytes(b'{"stage": "val", "average": 0.4, "x": "\xfe"}\n')
    elif damage in ("average_nan", "average_text"):
        record["average"] = float("nan") if damage == "average_nan" else "high"
        history.write_text(json.dumps(record) + "\n", encoding="utf-8")
    elif damage == "tasks_list":
        record["tasks"] = ["alpha", "beta"]
        history.write_text(json.dumps(record) + "\n", encoding="utf-8")
    else:  # a later validation damaged: the earlier one must not pass for the final one
        history.write_text(
            json.dumps(record) + "\n{'stage': 'val', 'step': 16, 'average': 0.9\n", encoding="utf-8"
        )
    data = run_report(sweep_dir, tmp_path / "out")
    left_out = [line for line in data["skipped"] if str(run) in line]
    assert len(left_out) == 1 and reason in left_out[0], data["skipped"]
    assert len(data["runs"]) == 3  # the other three runs are reported
    assert comparison(data, "weight_at_dsft")["n_seeds"] == 1  # seed 1 lost its W_CL run: one pair left

"""The peer benchmark (experiments/bench/peers): both sides get the same tokens, groups, order, initial
weights and loss; peers.json carries the pinned keys. Behaviour only, on a tiny Llama: never timing."""

from __future__ import annotations

import json

import pytest

from experiments.bench.peers import report
from experiments.bench.peers.data import load_groups
from experiments.bench.peers.train import train

INSTRUCTION = "Given a description, find the code."
DOCS = [f"def f{i}(x):\n    return x + {i}  # adds {i}" for i in range(24)]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """A tiny ChatML Llama, 6 training groups (1 positive + 3 negatives) and a 3-query dev task."""
    from tests.tiny_llama import build_llama

    root = tmp_path_factory.mktemp("peers")
    model = build_llama(root / "llama")
    train_dir = root / "train"
    train_dir.mkdir()
    with (train_dir / "groups.jsonl").open("w") as f:
        for g in range(6):
            docs = [{"text": DOCS[(4 * g + i) % len(DOCS)]} for i in range(4)]
            record = {"task": "t", "instruction": INSTRUCTION, "query": {"text": f"add {4 * g}"}}
            f.write(json.dumps(record | {"positives": docs[:1], "hard_negatives": docs[1:]}) + "\n")
    dev = root / "dev"
    dev.mkdir()
    (dev / "task.json").write_text(
        json.dumps({"family": "T2T", "instruction": INSTRUCTION, "metric": "ndcg@10"})
    )
    (dev / "queries.jsonl").write_text(
        "".join(json.dumps({"id": f"q{q}", "text": f"add {q}"}) + "\n" for q in range(3))
    )
    (dev / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(DOCS[:6]))
    )
    (dev / "qrels.tsv").write_text("".join(f"q{q} 0 d{q} 1\n" for q in range(3)))
    (dev / "candidates.trec").write_text(
        "".join(f"q{q} Q0 d{d} {d + 1} {1.0 - d / 10} bm25\n" for q in range(3) for d in range(6))
    )
    settings = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target": r".*\.(q_proj|v_proj)"}
    settings |= {"lr": 1e-2, "warmup_steps": 1, "pairs_per_forward": 0, "weight_decay": 0.0}
    return {
        "model": str(model),
        "train_root": str(train_dir),
        "dev_root": str(dev),
        "settings": settings,
        "max_length": 128,
        "dev_queries": 3,
        "dev_top_k": 4,
        "negatives": 3,
        "steps": 5,
        "seed": 0,
    }


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_both_sides_train_on_the_same_groups_tokens_and_loss(tiny_task, objective):
    ours = train({**tiny_task, "side": "rerank-lab", "objective": objective})
    theirs = train({**tiny_task, "side": "sentence-transformers", "objective": objective})
    # The same groups, in the same order, one per optimizer step, and every pair tokenised alike.
    assert ours["groups"] == theirs["groups"] and len(ours["groups"]) == 5
    assert theirs["token_mismatches"] == 0 and ours["truncated_pairs"] == 0
    # The same initial adapters and the same loss: the first step's losses agree (SFT: a sum over
    # the group on both sides; CL: the group softmax on z_yes). Later steps: the same update rule.
    assert theirs["losses"][0] == pytest.approx(ours["losses"][0], rel=1e-4)
    assert theirs["losses"] == pytest.approx(ours["losses"], rel=2e-2)
    assert ours["steps"] == theirs["steps"] == 5 and ours["dev_queries"] == theirs["dev_queries"] == 3
    assert ours["dev_ndcg10"] == pytest.approx(theirs["dev_ndcg10"], abs=1e-6)


def test_groups_are_cut_to_one_positive_and_n_negatives_in_a_fixed_order(tiny_task):
    first = load_groups(tiny_task["train_root"], 4, 2)
    assert first == load_groups(tiny_task["train_root"], 4, 2)
    assert all(g.size == 3 and g.documents[0].endswith(f"adds {g.query.split()[1]}") for g in first)
    with pytest.raises(ValueError, match="7 needed"):
        load_groups(tiny_task["train_root"], 7, 3)


def _run(pairs_per_s: float, rss: float, dev: float) -> dict:
    return {
        "pairs_per_s": pairs_per_s,
        "peak_rss_mib": rss,
        "dev_ndcg10": dev,
        "load_before": 1.0,
        "load_after": 2.0,
    }


def test_peers_json_has_the_pinned_keys_and_paired_ratios():
    specs, results = [], []
    for objective, n in (("sft", 3), ("sft", 7), ("cl", 3), ("cl", 7)):
        for seed in (0, 1):
            specs += [
                {"kind": "train", "side": s, "objective": objective, "negatives": n, "seed": seed}
                for s in ("rerank-lab", "sentence-transformers")
            ]
            results += [
                _run(2.0 * (seed + 1), 900, 0.5 + seed / 10),
                _run(1.0 * (seed + 1), 1000, 0.52 + seed / 10),
            ]
    for repeat in range(2):
        specs += [
            {"kind": "infer", "side": s, "repeat": repeat} for s in ("rerank-lab", "sentence-transformers")
        ]
        results += [
            _run(3.0, 800, 0) | {"pairs": 2, "scores": [[1.0, 2.0]]},
            _run(2.0, 850, 0) | {"pairs": 2, "scores": [[1.0, 2.0005]]},
        ]
    summary = report.summarize(specs, results, {"device": "cpu: test", "threads": 1, "quick": True})
    assert summary["train_speedup"] == pytest.approx({"n3": 2.0, "n7": 2.0})
    assert summary["memory_ratio"] == pytest.approx(0.9) and summary["inference_speedup"] == pytest.approx(
        1.5
    )
    assert summary["max_abs_score_difference"] == pytest.approx(5e-4)
    assert summary["train"]["cl/n7"]["equal_quality"] and summary["load_average"]["max"] == 2.0
    assert summary["targets"]["train_speedup_n3>=1.5"] and summary["targets"]["train_speedup_n7>=2.0"]
    text = report.markdown(json.loads(json.dumps(summary)))
    assert (
        "| sft/n3 | 3.00 (2.00-4.00) | 1.50 (1.00-2.00) | 2.00x | 900 / 1000 | 0.500, 0.600 / 0.520, 0.620 |"
        in text
    )
    assert "| 2 pairs | 3.00 (3.00-3.00) | 2.00 (2.00-2.00) | 1.50x | 800 / 850 | 5.0e-04 |" in text


def test_profile_counts_fewer_positions_when_the_prefix_runs_once(tiny_task):
    from experiments.bench.peers import profile

    groups = load_groups(tiny_task["train_root"], 3, 3)
    ours = profile._rerank_lab(tiny_task, groups)
    theirs = profile._sentence_transformers(tiny_task, groups)
    assert set(ours["seconds"]) == set(theirs["seconds"]) == set(profile.PHASES)
    # Same pairs, same tokens: sentence-transformers runs each group's shared prefix 4 times, rerank-lab once.
    assert (
        ours["token_positions"]["real"]
        < theirs["token_positions"]["real"]
        <= theirs["token_positions"]["padded"]
    )


def test_padding_counts_the_remainders_as_one_forward_and_as_length_buckets(tiny_task, monkeypatch):
    from experiments.bench.peers import profile

    groups = load_groups(tiny_task["train_root"], 3, 3)
    counts = profile._padding(tiny_task, groups)["remainder_positions"]
    assert counts["real"] <= counts["length_buckets"] <= counts["one_forward"]
    # The counting follows scoring.length_buckets: one forward per pair pads nothing.
    monkeypatch.setitem(profile.__dict__, "_bucketed", lambda suffixes: sum(suffixes))
    assert profile._padding(tiny_task, groups)["remainder_positions"]["length_buckets"] == counts["real"]

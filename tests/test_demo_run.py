"""`make demo` (experiments.demo): before/after tables, then a checkpoint, its export, and a Reranker
ranking read from the exported folder."""

from __future__ import annotations

import json
import shutil

import pytest

from experiments import demo


def test_tables_print_before_and_after(tmp_path, capsys):
    rows = [
        {"step": 0, "tasks": {"t": {"family": "T2T", "metric": "ndcg@10", "value": 0.25}}, "average": 0.25},
        {"step": 120, "tasks": {"t": {"family": "T2T", "metric": "ndcg@10", "value": 0.5}}, "average": 0.5},
        {
            "step": 240,
            "tasks": {"t": {"family": "T2T", "metric": "ndcg@10", "value": 0.75}},
            "average": 0.75,
            "retriever": {"average": 0.4},
        },
    ]
    (tmp_path / "eval_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo.print_tables(tmp_path) == (0.25, 0.75, 0.4)  # before, after, retriever
    out = capsys.readouterr().out
    assert "before (step 0) -> after (step 240)" in out
    assert "0.250 -> 0.750" in out and "first-stage retriever average: 0.400" in out


def test_rankings_come_from_the_given_folder_and_cover_every_candidate(tiny_model_dir, demo_dir, capsys):
    from datamodules.formats import load_task

    rankings = demo.show_rankings(tiny_model_dir, demo_dir / "mrb", top=3)
    out = capsys.readouterr().out
    assert len(rankings) == len(demo.SHOWCASE)
    for (task_name, qid), ranked in zip(demo.SHOWCASE, rankings, strict=True):
        task = load_task(demo_dir / "mrb" / task_name)
        assert sorted(ranked) == sorted(task.candidates[qid])  # a permutation of the candidates
        assert f"{task_name} ({task.meta.family}), query {qid}:" in out
    assert "[image images/" in out  # the text-to-image query ranks image documents
    assert "relevant documents at reranked positions" in out


@pytest.mark.slow
def test_demo_ends_with_a_checkpoint_an_export_and_a_ranking(tiny_model_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "model").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, out / "model", dirs_exist_ok=True)  # skip rebuilding the model
    tasks = "--data.eval_tasks=[stdlib-docs, digits-t2i]"  # fewer tasks to validate: a faster test
    rc = demo.main(["--out", str(out), "--max-steps", "40", tasks, "--data.eval_top_k=10"])
    captured = capsys.readouterr()
    printed = captured.out
    (run,) = (out / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    export = run / "export"
    config = json.loads((export / "rerank_config.json").read_text())
    assert config["lora"]["r"] == 0 and config["parity"]["max_abs_diff"] <= 1e-4
    assert (export / "README.md").is_file() and (export / "model.safetensors").is_file()
    assert "per-task metric, before (step 0) -> after (step 40)" in printed
    assert f"exported {run / 'checkpoints' / 'last.ckpt'} -> {export}" in printed
    assert "stdlib-docs (T2T), query q02:" in printed and "digits-t2i (T2I), query q01:" in printed
    # 40 steps may or may not lift the average; the exit status must say which.
    history = [json.loads(line) for line in (run / "eval_history.jsonl").read_text().splitlines()]
    assert rc == (0 if history[-1]["average"] > history[0]["average"] else 1)


def test_other_key_value_flags_reach_the_training_cli(tmp_path, monkeypatch):
    """`make demo`'s --help promises that other --key=value flags go to `experiments.cli fit`."""
    import experiments.cli

    seen = []

    def stop(args):
        seen.extend(args)
        raise SystemExit(3)

    monkeypatch.setattr(demo, "build_inputs", lambda out: (out / "model", out / "data"))
    monkeypatch.setattr(experiments.cli, "build_cli", stop)
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--max-steps=2", "--data.eval_top_k=10"])
    assert seen[-1] == "--data.eval_top_k=10" and "--trainer.max_steps=2" in seen
    with pytest.raises(SystemExit) as caught:
        demo.main(["--out", str(tmp_path), "stray"])
    assert caught.value.code == 2

"""Validation on 2 CPU processes (DDP, gloo) gives exactly the numbers of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test starts processes (DDP on gloo): minutes on a busy 2-core machine, so they are a tier of
# their own (`make test-distributed`, a separate step of .ci/run), not part of `make test`.
pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).with_name("ddp_validate.py")
ROOT = SCRIPT.parent.parent


def _run(script: str, tiny_model_dir, demo_dir, out: Path, devices: int) -> None:
    """Run a helper script on ``devices`` CPU processes; it writes its result to ``out``."""
    out.parent.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT.with_name(script)),
            str(tiny_model_dir),
            str(demo_dir),
            str(out),
            str(devices),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _validate(tiny_model_dir, demo_dir, tmp_path, devices: int) -> dict:
    out = tmp_path / f"metrics-{devices}" / "metrics.json"
    _run("ddp_validate.py", tiny_model_dir, demo_dir, out, devices)
    return json.loads(out.read_text())


def test_two_process_validation_equals_one_process(tiny_model_dir, demo_dir, tmp_path):
    single = _validate(tiny_model_dir, demo_dir, tmp_path, devices=1)
    double = _validate(tiny_model_dir, demo_dir, tmp_path, devices=2)
    assert "val/mrb_avg" in single and "val/stdlib-docs/ndcg@10" in single
    assert single.keys() == double.keys()
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
    # The float64 record is identical to the last bit: per-query values gathered by torchmetrics,
    # averaged with math.fsum (independent of the order the ranks' values arrive in).
    history = {
        devices: (tmp_path / f"metrics-{devices}" / "eval_history.jsonl").read_text() for devices in (1, 2)
    }
    assert history[1] == history[2] and len(history[1].splitlines()) == 1
    # Each rank wrote nothing twice: the per-task TREC runs hold every judged query exactly once.
    runs = tmp_path / "metrics-2" / "runs" / "val-step0"
    lines = (runs / "stdlib-docs.trec").read_text().splitlines()
    pairs = [(line.split()[0], line.split()[2]) for line in lines]
    assert len(pairs) == len(set(pairs))


def test_two_process_training_equals_one_process_on_the_same_global_batch(tiny_model_dir, demo_dir, tmp_path):
    import torch

    results = {}
    for devices in (1, 2):
        out = tmp_path / f"train-{devices}" / "state.pt"
        _run("ddp_train.py", tiny_model_dir, demo_dir, out, devices)
        results[devices] = torch.load(out)
    single, double = results[1], results[2]
    assert (
        len(single["losses"]) == 2 and single["losses"][1] != single["losses"][0]
    )  # the step changed something
    assert double["losses"] == pytest.approx(single["losses"], abs=1e-5)
    for name, value in single["lora"].items():
        torch.testing.assert_close(double["lora"][name], value, atol=1e-5, rtol=0, msg=name)


def _uneven_states(rank: int | None):
    """Per-rank evaluation states: one rank holds no query of "a", no rank one of "c"; ``rank=None``
    gives one state holding every query."""
    from datamodules.batches import QueryBatch
    from datamodules.formats import TaskMeta
    from lightning_modules.evaluation import EvalState

    metas = {name: TaskMeta(name, "T2T", "", "recall@1") for name in ("a", "b", "c")}
    queries = {
        0: [("a", "q1", 0.1), ("a", "q2", 1 / 3), ("b", "q1", 0.5)],
        1: [("b", "q2", 0.25), ("b", "q3", 0.75)],
    }
    state = EvalState(metas)
    for owner, rows in queries.items():
        if rank is None or owner == rank:
            for task, qid, score in rows:
                batch = QueryBatch(task, qid, ["d1", "d2"], [1.0, 0.0], {"d2": 1}, [])
                state.add(batch, [0.5, score])  # relevant at rank 1 when its score exceeds 0.5
    return metas, state


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of test_runs_gather_over_uneven_ranks (spawned, gloo): the one all_gather_object of
    RerankerModule.gather_over_ranks, then the scoring every rank does."""
    import torch

    from lightning_modules.evaluation import EvalTables, task_results

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metas, state = _uneven_states(rank)
        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, state.tables)
        reranked, _ = task_results(metas, EvalTables().merged(parts))
        Path(out, f"{rank}.json").write_text(json.dumps({r.task: [r.value, r.n_queries] for r in reranked}))
    finally:
        torch.distributed.destroy_process_group()


def test_runs_gather_over_uneven_ranks(tmp_path):
    """Tasks with no query on a rank (or on any) still score every query exactly, on every rank."""
    import socket

    import torch.multiprocessing as mp

    from lightning_modules.evaluation import task_results

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    metas, whole = _uneven_states(None)
    expected = {r.task: [r.value, r.n_queries] for r in task_results(metas, whole.tables)[0]}
    assert expected == {"a": [0.0, 2], "b": [2 / 3, 3]}  # "c" has no query: left out
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected

"""The evaluation dataset tells its length per rank: a progress bar shows the total and an ETA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import datamodules.datamodule as datamodule
from datamodules.datamodule import EvalQueries


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (3, 2), (2, 3)])
def test_eval_queries_length_is_what_each_rank_scores(monkeypatch, world, workers):
    dataset = EvalQueries([], rank=0, world_size=world, workers=workers)
    dataset.items = list(range(23))  # 23 queries: uneven over ranks and workers
    scored = []
    for rank in range(world):
        dataset.rank = rank
        mine = []
        for worker in range(max(1, workers)):  # what each DataLoader worker of this rank iterates
            info = SimpleNamespace(num_workers=workers, id=worker) if workers else None
            monkeypatch.setattr(datamodule, "get_worker_info", lambda info=info: info)
            mine += list(dataset)
        assert len(dataset) == len(mine)
        scored += mine
    assert sorted(scored) == list(range(23))  # every query once

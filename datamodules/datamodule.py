"""The Lightning DataModule: training query groups and MRB evaluation tasks, encoded for the backbone.

Training batches hold B groups of 1 + N documents, flattened into B·(1+N) pairs; evaluation
batches hold one query with its top-K first-stage candidates, sorted by length and cut into
micro-batches so that padding stays small.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import lightning as L
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.batches import QueryBatch, StreamBatch, TrainBatch, encode_query, encode_train
from datamodules.encoding import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, PairEncoder
from datamodules.formats import (
    MRB_FILES,
    FormatError,
    MRBTask,
    Problems,
    TaskMeta,
    list_tasks,
    load_task,
)
from datamodules.ranking import ranked
from datamodules.stream import BAD_RECORD_POLICIES, TrainStream
from datamodules.trec import regular_file_problem

log = logging.getLogger("rerank_lab.data")
_MAX_EVAL_WARNINGS = 20  # per process; the per-task counts hold the totals


@dataclass
class EvalQuery:
    """One query of one task with its candidates (already cut to the evaluation depth)."""

    task: str
    qid: str
    doc_ids: list[str]
    first_stage: list[float]
    relevance: dict[str, int] = field(default_factory=dict)


def eval_queries(tasks: list[MRBTask], top_k: int) -> list[EvalQuery]:
    """Every query of ``tasks`` (judged or with candidates), task by task and in sorted id order,
    with its top-``top_k`` first-stage candidates in trec_eval order: what validation scores, and
    what ``experiments.evaluate --model`` iterates."""
    items = []
    for task in tasks:
        for qid in sorted(set(task.qrels) | set(task.candidates)):
            top = ranked(task.candidates.get(qid, {}), top_k)
            items.append(
                EvalQuery(
                    task=task.name,
                    qid=qid,
                    doc_ids=[d for d, _ in top],
                    first_stage=[s for _, s in top],
                    relevance=dict(task.qrels.get(qid, {})),
                )
            )
    return items


class EvalQueries(IterableDataset):
    """Every judged query of the selected tasks, sharded over ranks and workers without padding.

    Sharding by query (never by pair) keeps each query's candidates on one rank so per-query
    metrics are exact, and no query is duplicated to even out ranks (that would bias the means).
    """

    def __init__(
        self, tasks: list[MRBTask], top_k: int = 100, rank: int = 0, world_size: int = 1, workers: int = 0
    ) -> None:
        self.items = eval_queries(tasks, top_k)
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, workers)  # the DataLoader's num_workers (0: the main process)

    def shard(self) -> list[EvalQuery]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.items[self.rank * workers + worker :: self.world_size * workers]

    def __iter__(self) -> Iterator[EvalQuery]:
        return iter(self.shard())

    def __len__(self) -> int:
        """The queries this rank scores, all its workers together (a progress bar's total and ETA)."""
        step = self.world_size * self.workers
        return sum(len(self.items[self.rank * self.workers + w :: step]) for w in range(self.workers))


# The training stream's and the evaluation queries' __len__ are exact per rank (batches are formed inside it, equal on every
# rank), so Lightning's generic caution about IterableDataset lengths does not apply.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def _scorable(task: MRBTask) -> bool:
    """Whether some query has a relevant judgement and a candidate (what a task's score needs)."""
    return any(
        task.candidates.get(qid) and any(grade > 0 for grade in task.qrels.get(qid, {}).values())
        for qid in task.queries
    )


class RerankDataModule(L.LightningDataModule):
    """Training groups + MRB evaluation tasks for one backbone.

    Args:
        model_name_or_path: the backbone whose tokenizer/processor encodes pairs (linked from the
            model config by the CLI).
        train_root: folder (or file) of training JSONL / JSONL.gz groups.
        eval_root: MRB root with one folder per test set.
        eval_tasks: only these tasks (default: all under ``eval_root``).
        num_negatives: N negatives per group (group size 1 + N).
        hard_negative_ratio: share of negatives taken from the record's hard negatives.
        batch_size: groups per training step.
        eval_top_k: rerank depth: the top-K first-stage candidates of each query.
        max_length: token cap per pair (image tokens included).
        min_pixels: per-image lower bound on pixels.
        max_pixels: per-image upper bound on pixels.
        num_workers: DataLoader worker processes.
        seed: seed of the negative sampling and shuffling; ``None`` (the default) means 0 here, and
            the run's ``seed_everything`` under ``experiments.cli``, so one seed sets both the
            initialisation and the data order.
        shuffle_buffer: records held by the bounded shuffle buffer of the training stream.
        on_bad_record: ``error`` (stop with file:line) or ``skip`` (drop the record, count and log it).
            Evaluation follows it too: with ``skip`` a bad line of an MRB task is left out when the
            task loads and a candidate whose image cannot be used is left out of its query's
            ranking (it counts as not retrieved); both are counted and reported per task. A task
            folder that cannot be read as a whole (no task.json, a missing file, no relevant
            judgement) is an error either way: a task never leaves the average silently.
        trust_remote_code: let the tokenizer/processor run code shipped with the checkpoint.
    """

    def __init__(
        self,
        model_name_or_path: str = "",
        train_root: str | None = None,
        eval_root: str | None = None,
        eval_tasks: list[str] | None = None,
        num_negatives: int = 4,
        hard_negative_ratio: float = 0.5,
        batch_size: int = 1,
        eval_top_k: int = 100,
        max_length: int = 3200,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_workers: int = 0,
        seed: int | None = None,
        shuffle_buffer: int = 1024,
        on_bad_record: str = "error",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if on_bad_record not in BAD_RECORD_POLICIES:
            raise ValueError(
                f"data.on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}"
            )
        self.save_hyperparameters()
        self._encoder: PairEncoder | None = None
        self.eval_load_problems: dict[str, list[str]] = {}  # task -> records left out when loading (skip)
        self._eval_warnings = 0
        self.train_stream: TrainStream | None = None
        self.eval_tasks_loaded: list[MRBTask] | None = None
        self._tasks_by_name: dict[str, MRBTask] = {}

    @property
    def encoder(self) -> PairEncoder:
        if self._encoder is None:
            hp = self.hparams
            if not hp.model_name_or_path:
                raise ValueError("data.model_name_or_path is empty; set model.model_name_or_path")
            self._encoder = PairEncoder.from_pretrained(
                hp.model_name_or_path,
                trust_remote_code=hp.trust_remote_code,
                max_length=hp.max_length,
                min_pixels=hp.min_pixels,
                max_pixels=hp.max_pixels,
            )
        return self._encoder

    def reuse_processors(self, loaded: PairEncoder) -> None:
        """Build this DataModule's encoder from an already loaded encoder's tokenizer and image
        processor (the CLI hands it the module's, so that a run loads them once); the token and pixel
        budgets stay this DataModule's."""
        hp = self.hparams
        self._encoder = PairEncoder(
            loaded.tokenizer,
            loaded.image_processor,
            max_length=hp.max_length,
            min_pixels=hp.min_pixels,
            max_pixels=hp.max_pixels,
        )

    @property
    def task_metas(self) -> list[TaskMeta]:
        """Metadata of the evaluation tasks (read once, cheap)."""
        return [task.meta for task in self._eval_tasks()]

    def _eval_tasks(self) -> list[MRBTask]:
        if self.eval_tasks_loaded is None:
            if not self.hparams.eval_root:
                raise ValueError("data.eval_root is not set; point it at an MRB folder to validate or test")
            folders = list_tasks(self.hparams.eval_root, self.hparams.eval_tasks)
            self.eval_tasks_loaded = [self._load_eval_task(folder) for folder in folders]
            self._tasks_by_name = {task.name: task for task in self.eval_tasks_loaded}
        return self.eval_tasks_loaded

    def _load_eval_task(self, folder) -> MRBTask:
        """One MRB task, strictly (``on_bad_record=error``) or leaving bad records out (``skip``)."""
        if self.hparams.on_bad_record == "error":
            return load_task(folder)
        for name in MRB_FILES:  # a task that cannot be read as a whole is never skipped
            if (problem := regular_file_problem(folder / name)) is not None:
                raise FormatError(f"{folder / name}:1: {problem}")
        problems = Problems()
        task = load_task(folder, problems)
        if task is None or not _scorable(task):  # left out, the task would vanish from the average
            first = (problems.messages or [f"{folder / 'qrels.tsv'}:1: no query can be scored"])[0]
            raise FormatError(
                first
                if task is None
                else f"{first} (no query of task {task.name} is left to score, and a task is never left out of "
                "the average: fix it, or leave it out of data.eval_root / data.eval_tasks)"
            )
        if problems.messages:
            self.eval_load_problems[task.name] = problems.messages
            log.warning(
                "task %s: %d bad record(s) left out (data.on_bad_record=skip), first: %s",
                task.name,
                len(problems.messages),
                problems.messages[0],
            )
        return task

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.train_stream is None:
            if not hp.train_root:
                raise ValueError("data.train_root is not set; point it at a folder of training JSONL files")
            instructions = {t.name: t.meta.instruction for t in self._eval_tasks()} if hp.eval_root else {}
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.train_stream = TrainStream(
                hp.train_root,
                batch_size=hp.batch_size,
                rank=rank,
                world_size=world,
                num_negatives=hp.num_negatives,
                hard_negative_ratio=hp.hard_negative_ratio,
                task_instructions=instructions,
                seed=0 if hp.seed is None else hp.seed,
                shuffle_buffer=hp.shuffle_buffer,
                on_bad_record=hp.on_bad_record,
            )

    # ---- encoding (runs in DataLoader workers; the module collates, once) -------------------
    def encode_train(self, batch: StreamBatch) -> TrainBatch:
        return encode_train(self.encoder, batch)

    def encode_eval(self, items: list[EvalQuery]) -> QueryBatch:
        (item,) = items  # one query per batch
        self._eval_tasks()
        task = self._tasks_by_name[item.task]
        return encode_query(
            self.encoder, task, item.qid, item.doc_ids, item.first_stage, self._bad_eval_record
        )

    def _bad_eval_record(self, message: str) -> None:
        """A candidate (or query) that cannot be encoded: stop (``on_bad_record=error``) or warn."""
        if self.hparams.on_bad_record == "error":
            raise FormatError(message) from None
        if self._eval_warnings < _MAX_EVAL_WARNINGS:
            self._eval_warnings += 1
            log.warning("skipping bad evaluation record: %s", message)

    # ---- loaders ---------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        overfit = self.trainer.overfit_batches if self.trainer is not None else 0
        if overfit:
            # Overfitting replays the same first batches every epoch, while the stream would move
            # on to new data; they are collated once and are no stream progress (``stream`` is None).
            count = int(overfit) if overfit >= 1 else 1
            loader = self.train_stream.dataloader(collate_fn=self.encode_train, num_workers=0)
            batches = list(itertools.islice(iter(loader), count))
            for batch in batches:
                batch.stream = None
            return DataLoader(batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]  # a list is a map-style dataset
        return self.train_stream.dataloader(
            collate_fn=self.encode_train, num_workers=self.hparams.num_workers
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Count a training batch as consumed only when a step really receives it (not when a
        # worker prefetched it): the checkpointed stream position is then exact.
        if self.train_stream is not None:
            self.train_stream.mark_consumed(batch)  # ignores evaluation batches
        return batch

    def state_dict(self) -> dict:
        return {"train_stream": self.train_stream.state_dict()} if self.train_stream is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "train_stream" in state and self.train_stream is not None:
            self.train_stream.load_state_dict(state["train_stream"])

    def _eval_loader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        dataset = EvalQueries(
            self._eval_tasks(), self.hparams.eval_top_k, rank, world, workers=self.hparams.num_workers
        )
        return DataLoader(
            dataset, batch_size=1, collate_fn=self.encode_eval, num_workers=self.hparams.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()

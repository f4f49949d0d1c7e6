"""One measured training run, in its own process: rerank-lab or sentence-transformers, then the same
dev evaluation of what it learned.

Both sides get (see :mod:`experiments.bench.peers.data`) the same model folder, the same LoRA (rank,
alpha, dropout, target regex; the adapters' A matrices re-initialised from the run's seed in one
canonical order by :func:`init_lora`, so both sides start from the same weights), the same groups in
the same order (one group per optimizer step), torch AdamW with the same learning rate and weight
decay, :func:`lightning_modules.reranker.warmup_linear_decay` as the schedule, no gradient clipping,
float32, one thread, and the same number of steps. The losses are equal too:

- ``sft`` = sentence-transformers' ``BinaryCrossEntropyLoss`` (``reduction="sum"``: a group's pairs
  are one batch, so the sum over the group equals rerank-lab's "sum over the group, mean over
  groups") on ``LogitScore(yes, no)`` = z_yes - z_no;
- ``cl`` = ``MultipleNegativesRankingLoss`` (``scale=1``, no activation; a batch of one query and
  columns positive, negative_1..N, so no in-batch negatives) on ``LogitScore(yes)`` = z_yes, i.e.
  the InfoNCE over the group on the yes logit, rerank-lab's ``cl`` at temperature 1.

Each side runs in its own trainer (Lightning's for rerank-lab, ``CrossEncoderTrainer`` for
sentence-transformers) and times the interval between consecutive optimizer-step ends: data
collation and tokenisation, forward, backward and the optimizer step all count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from datamodules.batches import QueryBatch, TrainBatch
from experiments.bench.peers.data import Group, check_same_tokens, load_dev, load_groups, pair_template
from experiments.bench.peers.memory import rss_mib

WARMUP_STEPS = 2  # step intervals left out of pairs/s (first-step allocations, lazy imports)


def init_lora(model: torch.nn.Module, seed: int) -> int:
    """Re-draw every LoRA A matrix (peft's kaiming-uniform init) and zero every B from ``seed``, in
    the order of the parameter names from ``layers.`` on: the same start on any wrapper of the same
    backbone. Returns how many adapters were set."""
    generator = torch.Generator().manual_seed(seed)
    named = [(n[n.index("layers.") :], p) for n, p in model.named_parameters() if ".lora_" in n]
    with torch.no_grad():
        for _, param in sorted(named, key=lambda item: item[0]):
            if ".lora_A." in _:
                torch.nn.init.kaiming_uniform_(param, a=math.sqrt(5), generator=generator)
            else:
                param.zero_()
    return sum(".lora_A." in name for name, _ in named)


def group_digest(query: str, documents) -> str:
    """A short fingerprint of one group as a loss received it (query, then documents in order)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps([query, list(documents)]).encode()).hexdigest()[:12]


def pairs_per_second(step_ends: list[float], group_size: int, warmup: int = WARMUP_STEPS) -> float:
    """Pairs/s over the steps after the first ``warmup`` (each step is one group)."""
    ends = step_ends[warmup:]
    if len(ends) < 2:
        raise ValueError(f"need more than {warmup + 1} steps to time, got {len(step_ends)}")
    return (len(ends) - 1) * group_size / (ends[-1] - ends[0])


def dev_ndcg(score_list, dev_root: str, queries: int, top_k: int) -> tuple[float, list[float]]:
    """Mean metric of the dev task (nDCG@10) with ``score_list(instruction, query, documents)``."""
    from datamodules.metrics import query_metric

    instruction, metric, lists = load_dev(dev_root, queries, top_k)
    values = [
        query_metric(
            metric, item.doc_ids, score_list(instruction, item.query, item.documents), item.relevance
        )
        for item in lists
    ]
    return sum(values) / len(values), values


def train(spec: dict) -> dict:
    """Run one training configuration (``spec["side"]``: ``rerank-lab`` or ``sentence-transformers``)."""
    torch.set_num_threads(1)
    groups = load_groups(spec["train_root"], spec["steps"], spec["negatives"])
    run = _train_rerank_lab if spec["side"] == "rerank-lab" else _train_sentence_transformers
    started = time.perf_counter()
    result = run(spec, groups)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _settings(spec: dict) -> dict:
    """The model config's LoRA and optimiser settings (experiments/configs/model/smollm2_135m.yaml),
    or ``spec["settings"]`` where given (tests, other backbones)."""
    import yaml

    if "settings" in spec:
        return spec["settings"]
    model = yaml.safe_load(Path(spec["model_config"]).read_text())["model"]
    keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "lr", "warmup_steps", "pairs_per_forward")
    return {key: model[key] for key in keys} | {"weight_decay": model.get("weight_decay", 0.0)}


@dataclass
class _Digested(TrainBatch):
    """A training batch that also names its group (the check that both sides saw the same groups)."""

    digest: str = ""


class _Encoded(torch.utils.data.Dataset):
    """The groups, encoded when the loader asks (tokenisation is part of the timed step on both sides)."""

    def __init__(self, encoder, groups: list[Group]) -> None:
        self.encoder, self.groups = encoder, groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> _Digested:
        from datamodules.formats import Doc

        group = self.groups[index]
        pairs = self.encoder.encode_group(
            group.instruction, Doc(text=group.query), [Doc(text=d) for d in group.documents]
        )
        positives = torch.tensor([[True] + [False] * (group.size - 1)])
        batch = TrainBatch.of_groups([pairs], positives)  # what RerankDataModule yields for one group
        return _Digested(**vars(batch), digest=group_digest(group.query, group.documents))


def _train_rerank_lab(spec: dict, groups: list[Group]) -> dict:
    import lightning as L

    from datamodules.encoding import PairEncoder
    from lightning_modules.reranker import RerankerModule

    settings = _settings(spec)
    L.seed_everything(spec["seed"], verbose=False)
    module = RerankerModule(
        spec["model"],
        objective=spec["objective"],
        **{k: settings[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "lr")},
        warmup_steps=settings["warmup_steps"],
        weight_decay=settings["weight_decay"],
        pairs_per_forward=settings["pairs_per_forward"],
    )
    init_lora(module.scorer.model, spec["seed"])
    encoder = PairEncoder.from_pretrained(spec["model"], max_length=spec["max_length"])
    data = _Encoded(encoder, groups)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=0)
    clock = _lightning_clock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(groups),
        max_epochs=1,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loaded = rss_mib()
    trainer.fit(module, train_dataloaders=loader)
    trained = _trained_figures(clock.ends, groups, loaded)
    trained["truncated_pairs"] = sum(data[i].truncated for i in range(len(data)))
    module.eval()

    def score_list(instruction: str, query: str, documents) -> list[float]:
        from datamodules.formats import Doc

        pairs = [encoder.encode(instruction, Doc(text=query), Doc(text=d)) for d in documents]
        ids = [str(i) for i in range(len(pairs))]
        query_batch = QueryBatch("dev", "q", ids, [0.0] * len(ids), {}, pairs)
        return module.rerank_query(query_batch)

    return trained | _dev_figures(score_list, spec) | {"losses": clock.losses, "groups": clock.digests}


def _trained_figures(ends: list[float], groups: list[Group], loaded_mib: float) -> dict:
    from experiments.bench.peers.memory import peak_rss_mib

    return {
        "pairs_per_s": pairs_per_second(ends, groups[0].size),
        "steps": len(ends),
        "step_seconds": [round(b - a, 4) for a, b in zip(ends, ends[1:], strict=False)],
        "rss_loaded_mib": round(loaded_mib, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),  # read before evaluation: training's peak
    }


def _dev_figures(score_list, spec: dict) -> dict:
    started = time.perf_counter()
    with torch.no_grad():
        mean, values = dev_ndcg(score_list, spec["dev_root"], spec["dev_queries"], spec["dev_top_k"])
    return {
        "dev_ndcg10": mean,
        "dev_queries": len(values),
        "dev_seconds": round(time.perf_counter() - started, 1),
    }


def _lightning_clock():
    """A Lightning callback recording wall-clock time and loss at each optimizer-step end."""
    import lightning as L

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []
            self.digests: list[str] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))
            self.digests.append(batch.digest)

    return Clock()


def cross_encoder(model: str, objective: str, max_length: int, instruction: str):
    """sentence-transformers' ``CrossEncoder`` on the causal LM, scoring as ``objective`` does
    (z_yes - z_no for ``sft``, z_yes for ``cl``) with rerank-lab's prompt (:func:`pair_template`)."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore

    from datamodules.encoding import PairEncoder
    from lightning_modules.backbone import label_token_id

    model_ce = CrossEncoder(
        model,
        max_length=max_length,
        local_files_only=True,
        activation_fn=torch.nn.Identity(),  # raw scores, as rerank-lab returns them
        model_kwargs={"dtype": torch.float32},
    )
    encoder = PairEncoder.from_pretrained(model, max_length=max_length)
    model_ce[0].processor.chat_template = pair_template(encoder, instruction)
    yes, no = (label_token_id(encoder.tokenizer, word) for word in ("yes", "no"))  # rerank-lab's ids
    model_ce[1] = LogitScore(true_token_id=yes, false_token_id=no if objective == "sft" else None)
    return model_ce, encoder


def st_dataset(groups: list[Group], objective: str):
    """The groups as sentence-transformers' loss inputs, one group per batch: ``sft`` as 1 + N
    labelled (query, document) rows, ``cl`` as one row (query, positive, negative_1..N)."""
    from datasets import Dataset

    if objective == "sft":
        rows = [(g.query, d, float(i == 0)) for g in groups for i, d in enumerate(g.documents)]
        return Dataset.from_dict(
            {"query": [r[0] for r in rows], "document": [r[1] for r in rows], "label": [r[2] for r in rows]}
        )
    columns = {"query": [g.query for g in groups], "positive": [g.documents[0] for g in groups]}
    for i in range(1, groups[0].size):
        columns[f"negative_{i}"] = [g.documents[i] for g in groups]
    return Dataset.from_dict(columns)


def st_loss(model_ce, objective: str):
    from sentence_transformers.cross_encoder import losses

    if objective == "sft":
        return losses.BinaryCrossEntropyLoss(model_ce, reduction="sum")
    return losses.MultipleNegativesRankingLoss(  # scale is annotated int there; a float is what it uses
        model_ce,
        num_negatives=None,
        scale=1.0,  # type: ignore[arg-type]
        activation_fn=None,
    )


def _sequential_batches(dataset, batch_size: int, drop_last: bool, **kwargs):
    """The datasets' rows in order (sentence-transformers' default sampler shuffles)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(
        SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last, **kwargs
    )


def _st_clock():
    """A transformers TrainerCallback recording wall-clock time at each optimizer-step end."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.ends.append(time.perf_counter())

    return Clock()


def _loss_recorder(loss, objective: str) -> dict[str, list]:
    """Record each call's loss and the group it received (a forward hook on the loss module)."""
    seen: dict[str, list] = {"losses": [], "groups": []}

    def record(module, inputs, output) -> None:
        columns = inputs[0]
        if objective == "sft":  # (queries, documents): one group's rows
            query, documents = columns[0][0], columns[1]
        else:  # (queries, positives, negative_1..N): one row
            query, documents = columns[0][0], [column[0] for column in columns[1:]]
        seen["losses"].append(float(output.detach()))
        seen["groups"].append(group_digest(query, documents))

    loss.register_forward_hook(record)
    return seen


def st_trainer(spec: dict, groups: list[Group], out: str):
    """sentence-transformers' trainer for the run, the model, and what its loss records."""
    from peft import LoraConfig
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import set_seed

    from lightning_modules.reranker import warmup_linear_decay

    settings = _settings(spec)
    set_seed(spec["seed"])
    model_ce, encoder = cross_encoder(
        spec["model"], spec["objective"], spec["max_length"], groups[0].instruction
    )
    lora = {k: settings[k] for k in ("lora_alpha", "lora_dropout")}
    model_ce.add_adapter(LoraConfig(r=settings["lora_r"], target_modules=settings["lora_target"], **lora))
    init_lora(model_ce, spec["seed"])
    params = [p for p in model_ce.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    scheduler = warmup_linear_decay(optimizer, settings["warmup_steps"], len(groups))
    args = CrossEncoderTrainingArguments(
        output_dir=out,
        max_steps=len(groups),
        per_device_train_batch_size=groups[0].size if spec["objective"] == "sft" else 1,
        batch_sampler=_sequential_batches,
        max_grad_norm=0.0,  # rerank-lab's configs clip nothing
        seed=spec["seed"],
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    loss = st_loss(model_ce, spec["objective"])
    seen = _loss_recorder(loss, spec["objective"])
    trainer = CrossEncoderTrainer(
        model=model_ce,
        args=args,
        train_dataset=st_dataset(groups, spec["objective"]),
        loss=loss,
        optimizers=(optimizer, scheduler),
        callbacks=[_st_clock()],
    )
    return trainer, model_ce, encoder, seen


def _train_sentence_transformers(spec: dict, groups: list[Group]) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="peers-st-") as out:
        trainer, model_ce, encoder, seen = st_trainer(spec, groups, out)
        clock = next(c for c in trainer.callback_handler.callbacks if hasattr(c, "ends"))
        loaded = rss_mib()
        trainer.train()
    trained = _trained_figures(clock.ends, groups, loaded)
    model_ce.eval()

    def score_list(instruction: str, query: str, documents) -> list[float]:
        return model_ce.predict([(query, d) for d in documents], batch_size=len(documents)).tolist()

    pairs = [(g.query, d) for g in groups for d in g.documents]
    mismatches = check_same_tokens(model_ce, encoder, groups[0].instruction, pairs)
    return trained | _dev_figures(score_list, spec) | seen | {"token_mismatches": mismatches}

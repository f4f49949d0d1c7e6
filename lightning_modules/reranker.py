"""The reranker LightningModule: one objective-driven core for SFT, CL and every URL probe.

A training step, top to bottom: score the B·(1+N) pairs of the batch (label-token logits at the
answer position), reshape to [B, 1+N], hand them to the objective (objectives/), log its loss and
weight statistics. Validation reranks each query's first-stage candidates with the objective's
score and reports the task's own metric next to the retriever's: the module computes and logs
(``val/<task>/<metric>``, ``val/family/<F>``, ``val/mrb_avg``, ``val/retriever_avg``) and leaves
an :class:`~lightning_modules.evaluation.EvalResult` in ``eval_result``; tables, ``eval_history.jsonl``, TREC files and the W&B
table are written by a callback (experiments/eval_writer.py), so a bare Trainer writes no files.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn

import objectives
from datamodules.batches import QueryBatch, TrainBatch
from datamodules.encoding import EncodedPair, PairEncoder, collate_pairs
from datamodules.metrics import summarize
from datamodules.ranking import fuse
from lightning_modules.backbone import (
    LANGUAGE_MODEL_LORA_TARGET,
    MERGER_NAMES,
    VISION_LORA_TARGET,
    LabelScorer,
    TrainableSpec,
    backbone_config,
    label_token_id,
    label_words,
    load_backbone,
    set_trainable,
    text_hidden_size,
    upcast_trainables,
)
from lightning_modules.checkpoint_io import (
    base_fingerprint,
    check_trainable,
    config_sha256,
    restore_rng,
    trim_to_trainable,
)
from lightning_modules.evaluation import EvalResult, EvalState, EvalTables, task_results
from lightning_modules.prefix import (
    ImageFeatureCache,
    pairs_features,
    prefix_usable,
    query_prefix,
    shared_prefix,
    vision_frozen,
)
from lightning_modules.scoring import objective_inputs, rank_scores, score_pairs

log = logging.getLogger(__name__)

# Checkpoints hold trainable weights only; Lightning's notice about the (frozen) rest is expected.
warnings.filterwarnings(
    "ignore", message="Found keys that are in the model state dict but not in the checkpoint"
)

DEFAULT_LORA_TARGET = LANGUAGE_MODEL_LORA_TARGET
__all__ = ["DEFAULT_LORA_TARGET", "MERGER_NAMES", "VISION_LORA_TARGET", "RerankerModule", "build_objective"]


def build_objective(
    model_name_or_path: str,
    objective: str,
    objective_args: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> objectives.Objective:
    """The configured objective, sized for the backbone from its ``config.json`` (no weights read):
    what ``RerankerModule`` builds first, and what the CLI checks a config with.

    Raises:
        ValueError: one line naming ``model.objective`` / ``model.objective_args`` and the problem.
    """
    args = dict(objective_args or {})
    hidden_size = text_hidden_size(backbone_config(model_name_or_path, trust_remote_code))
    try:
        return objectives.build(objective, hidden_size=hidden_size, **args)
    except (ValueError, TypeError) as error:
        raise ValueError(f"model.objective={objective!r} with model.objective_args={args}: {error}") from None


def reset_objective_parameters(objective: nn.Module, hidden_size: int) -> None:
    """Redraw the objective's own layers (a projection direction's), as its constructor did, and
    check they read the backbone's real hidden size."""
    for module in objective.modules():
        if isinstance(module, nn.Linear):
            if module.in_features != hidden_size:
                raise ValueError(
                    f"model.objective: the backbone's LM head reads {hidden_size} features but its config "
                    f"says {module.in_features}"
                )
            module.reset_parameters()


class RerankerModule(L.LightningModule):
    """LLM reranker trained with any objective of the registry.

    Args:
        model_name_or_path: hub id or local folder of the backbone.
        objective: registry name (``sft``, ``cl``, ``url``, ``mix``, ``listwise``, ...).
        objective_args: keyword arguments of the objective (e.g. ``{weight: sft, direction: cl}``).
        dtype: backbone dtype (``float32`` on CPU, ``bfloat16`` on GPUs); scores are fp32 anyway.
        trust_remote_code: allow code shipped with the checkpoint (off unless you trust it).
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        lora_r: LoRA rank; 0 trains the full backbone.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target: regex of module names that get LoRA (default: the language model's linears).
        lora_vision: also put LoRA on the vision tower's attention and MLP linears.
        train_merger: train the vision-language merger (patch merger / projector) in full.
        quantization: ``null`` or ``4bit`` (QLoRA).
        lm_head: ``frozen`` (default), ``label_rows`` or ``full`` (the paper's unfreezing probe).
        pairs_per_forward: training micro-batch in pairs (0: a whole group per forward). Bounds
            activation memory independently of the group size, with exact gradients.
        eval_pairs_per_forward: evaluation micro-batch in pairs (validation, test, predict).
        share_prefix: run the tokens a group's pairs share (system prompt, instruction, query and
            its image) once per training group, and once per evaluated query where it pays,
            instead of once per pair (exact; off by itself in training under
            ``gradient_checkpointing``, which drops KV caches in transformers).
        eval_image_cache_mb: in evaluation, keep the vision-tower features of up to this many MiB
            of images (on the CPU) so that an image shared by many queries' candidate lists is
            encoded once per evaluation (frozen vision tower only; 0 turns it off).
        fusion_alpha: if set, rank by α·reranker + (1−α)·retriever (each min-max normalised per
            query) in validation, test and predict.
        gradient_checkpointing: recompute decoder layers in backward (non-reentrant, so it works
            with LoRA on a frozen base).
        optimizer: ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes 8-bit states, less memory).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then linear decay to 0 at the last step.
        write_runs: keep each evaluation's reranked runs in :attr:`eval_result`, which the evaluation
            writer (experiments/eval_writer.py) saves as one TREC file per task.
    """

    def __init__(
        self,
        model_name_or_path: str,
        objective: str = "sft",
        objective_args: dict[str, Any] | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target: str = DEFAULT_LORA_TARGET,
        lora_vision: bool = False,
        train_merger: bool = False,
        quantization: str | None = None,
        lm_head: str = "frozen",
        pairs_per_forward: int = 0,
        eval_pairs_per_forward: int = 32,
        share_prefix: bool = True,
        eval_image_cache_mb: int = 2048,
        fusion_alpha: float | None = None,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        write_runs: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"model.optimizer {optimizer!r} is not one of ['adamw', 'adamw8bit']")
        # The objective is built (and its arguments checked) before any weight is read; its own
        # initialisation (a projection direction's layer) is redrawn below, after the adapters',
        # so that the random streams are those of building it after the backbone.
        with torch.random.fork_rng(devices=[]):
            self.objective = build_objective(model_name_or_path, objective, objective_args, trust_remote_code)
        model = self._load_model(
            TrainableSpec(lora_r, lora_alpha, lora_dropout, lora_target, lora_vision, train_merger)
        )
        self._read_conventions(
            model, PairEncoder.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        )
        # This rank's scores, per-query metric values and skipped candidates of the running
        # evaluation (lightning_modules/evaluation.py), created at each evaluation's start.
        self._eval: EvalState | None = None
        self.eval_result: EvalResult | None = None  # the last evaluation's, for the writer callback
        self.strict_loading = False  # checkpoints hold trainable weights only (on_save_checkpoint)
        self._weights_seen: dict[str, list[torch.Tensor]] = {"pos": [], "neg": []}
        self._resume_rng: dict | None = None  # generator states of a checkpoint being resumed
        self._told_no_prefix = False
        # Fixed once the model is built (train mode, checkpointing set): not re-derived every step.
        self._prefix_in_training = prefix_usable(self.scorer)
        self._vision_frozen = vision_frozen(self.scorer)
        self._image_cache = ImageFeatureCache(eval_image_cache_mb * 2**20)

    def _load_model(self, trainable: TrainableSpec) -> nn.Module:
        """The backbone in train mode with its trainable parameters set (adapters initialised, then
        the objective's own parameters redrawn), and the identity of its base weights."""
        hp = self.hparams
        model = load_backbone(
            hp.model_name_or_path, hp.dtype, hp.trust_remote_code, hp.attn_implementation, hp.quantization
        )
        # Identity of the base weights, stored in checkpoints: export refuses to merge the adapters
        # into a different base (a silent accuracy loss otherwise).
        self._base_ids = {
            "base_fingerprint": base_fingerprint(model),
            "base_config_sha256": config_sha256(model.config),
        }
        model.train()  # from_pretrained returns eval mode; LoRA/backbone dropout belongs to training
        if hp.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        set_trainable(model, trainable, hp.model_name_or_path)
        reset_objective_parameters(self.objective, model.get_output_embeddings().weight.shape[1])
        return model

    def _read_conventions(self, model: nn.Module, encoder: PairEncoder) -> None:
        """The scorer (label words' ids from the checkpoint's tokenizer) and what collating and
        splitting pairs needs (pad id, image token id, merge size): the encoder's conventions, the
        ones the pairs were encoded with, not re-derived here (inference.Reranker does the same).
        This is the module's one tokenizer load; the CLI builds the DataModule's encoder from it."""
        self.pair_encoder = encoder
        positive_words, negative_words = self.objective.label_tokens
        self.token_words = label_words(self.objective)
        self.scorer = LabelScorer(
            model, [label_token_id(encoder.tokenizer, w) for w in self.token_words], self.hparams.lm_head
        )
        self._token_columns = [self.token_words.index(w) for w in (*positive_words, *negative_words)]

    # ---- scoring (lightning_modules/scoring.py is the one path) ----------------------------
    def _collate(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = collate_pairs(pairs, self.pair_encoder.pad_token_id, self.pair_encoder.image_token_id)
        return {key: value.to(self.device) for key, value in batch.items()}

    def _features(self, cache: ImageFeatureCache | None = None):
        """pairs -> their images' features through the frozen vision tower (and ``cache``), or a
        function giving ``None`` when the tower trains (pixels then go through the decoder)."""
        if not self._vision_frozen:
            return lambda pairs: None
        return lambda pairs: pairs_features(self.scorer, pairs, cache)

    def rank_pairs(self, pairs: list[EncodedPair]) -> torch.Tensor:
        """The objective's ranking scores of one query's ``pairs``, scored whole in one forward (no
        shared prefix): the reference the exported model is checked against."""
        logits, hidden = score_pairs(
            self.scorer, pairs, collate=self._collate, features=self._features(), size=len(pairs)
        )
        return rank_scores(self.objective, logits, hidden, self._token_columns)

    def score_groups(self, groups: list[list[EncodedPair]]) -> tuple[torch.Tensor, dict]:
        """Label logits [n, 2] and the objective's extras of a training batch's groups, in order.

        Group by group through :func:`~lightning_modules.scoring.score_pairs`: the tokens a
        group's pairs share run once (``share_prefix``), images go through a frozen vision tower
        once, and with ``pairs_per_forward`` set a group's pairs run in micro-batches of that many
        under activation checkpointing, except the batch's last micro-batch.
        """
        group_size, rows = len(groups[0]), sum(len(group) for group in groups)
        per_forward = self.hparams.pairs_per_forward
        checkpointed = torch.is_grad_enabled() and 0 < per_forward < rows
        size = per_forward if per_forward > 0 else group_size
        share = self.hparams.share_prefix and group_size > 1 and self._prefix_in_training
        if self.hparams.share_prefix and group_size > 1 and not share and not self._told_no_prefix:
            self._told_no_prefix = True
            log.info(
                "model.share_prefix: off for training (%s); every pair runs whole",
                "gradient_checkpointing drops KV caches in transformers"
                if self.hparams.gradient_checkpointing
                else "this backbone has no multimodal RoPE helper",
            )
        features, parts = self._features(), []
        for number, group in enumerate(groups):
            prefix = (
                shared_prefix(group, self.pair_encoder.image_token_id, self.pair_encoder.merge_size)
                if share
                else (0, 0)
            )
            parts.append(
                score_pairs(
                    self.scorer,
                    group,
                    collate=self._collate,
                    features=features,
                    size=size,
                    prefix=prefix,
                    checkpointed=checkpointed,
                    checkpoint_last=number < len(groups) - 1,
                )
            )
        label_logits = torch.cat([logits for logits, _ in parts])
        hidden = torch.cat([hidden for _, hidden in parts])
        return objective_inputs(label_logits, hidden, self.objective.needs, self._token_columns)

    # ---- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only what training changed (lightning_modules/checkpoint_io.py): a checkpoint of a
        7B LoRA run is megabytes; the frozen backbone is re-read from ``model_name_or_path``."""
        trim_to_trainable(self, checkpoint, {"base_model": self.hparams.model_name_or_path, **self._base_ids})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_rng = check_trainable(checkpoint)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restored here rather than at load time: creating the resumed run's DataLoader iterator
        # draws from the global generator, which the uninterrupted run did long before this step.
        info, self._resume_rng = self._resume_rng, None
        if info is not None:
            restore_rng(info)

    # ---- training --------------------------------------------------------------------------
    def loss_step(self, batch: TrainBatch) -> objectives.ObjectiveOutput:
        """The objective's output (loss, weights W, statistics) on a training batch, with nothing
        logged: :meth:`training_step` is this plus logging, and tests and benchmarks call it without
        a Trainer. A batch whose every group was skipped gives a zero loss that still touches every
        trainable parameter (DDP's gradient all-reduce would hang on a step without them)."""
        batch = _as_train_batch(batch)
        positives = batch.positives
        groups, group_size = positives.shape
        if groups == 0:
            start = torch.zeros((), device=positives.device)
            zero = sum((p.sum() for p in self.parameters() if p.requires_grad), start) * 0.0
            return objectives.ObjectiveOutput(zero, positives.float(), {})
        logits, extra = self.score_groups(batch.groups)
        extra = {k: v.view(groups, group_size, *v.shape[1:]) for k, v in extra.items()}
        return self.objective(logits.view(groups, group_size, 2), positives, **extra)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        batch = _as_train_batch(batch)
        groups = batch.positives.shape[0]
        out = self.loss_step(batch)
        if groups == 0:
            return out.loss
        self._remember_weights(out.weights.detach(), batch.positives)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=groups)
        for key, value in out.stats.items():
            self.log(f"train/{key}", value, batch_size=groups)
        pairs = batch.pairs
        tokens = max(len(pair.input_ids) for pair in pairs)  # a batch's padded width
        counters = {
            "filled_hard_negatives": batch.filled_hard,
            # train/skipped_records: a running total (experiments.callbacks.TrainingRecords)
            "other_task_negatives": (batch.stream or {}).get("other_task", 0),
            "truncated_pairs": batch.truncated,
        }
        for key, count in counters.items():
            self.log(f"train/{key}", float(count), reduce_fx="sum", batch_size=groups)
        self.log("train/visual_tokens_per_pair", batch.visual_tokens / len(pairs), batch_size=groups)
        self.log("train/padded_tokens_per_pair", float(tokens), batch_size=groups)
        return out.loss

    def _remember_weights(self, weights: torch.Tensor, positives: torch.Tensor, cap: int = 100_000) -> None:
        """Keep a bounded uniform sample of the W+ and W- since the last histograms."""
        for side, mask in (("pos", positives), ("neg", ~positives)):
            parts = self._weights_seen[side]
            parts.append(weights[mask].float().cpu())
            if sum(p.numel() for p in parts) > 2 * cap:
                values = torch.cat(parts)
                self._weights_seen[side] = [values[torch.randperm(values.numel())[:cap]]]

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm())

    def on_train_epoch_end(self) -> None:
        self._log_weight_histograms()

    def _log_weight_histograms(self) -> None:
        """Histograms of the W+ and W- seen since the last ones (the paper's weight comparison), at
        every validation during training and at each epoch end: a one-epoch run gets one slice per
        validation, not one in all."""
        seen = {side: torch.cat(parts) for side, parts in self._weights_seen.items() if parts}
        self._weights_seen = {"pos": [], "neg": []}
        if not seen or not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log(
                    {
                        # wandb annotates Sequence; it takes any array_like (np.histogram).
                        f"train/weight_{side}_hist": wandb.Histogram(values.numpy())  # type: ignore[arg-type]
                        for side, values in seen.items()
                    }
                    | {"trainer/global_step": self.global_step}
                )

    def float32_trainables(self) -> None:
        """With LoRA, keep trainable weights float32 (as set in ``__init__``) even where the
        precision plugin cast the whole module to bf16/fp16 (``precision: bf16-true``, before
        :meth:`configure_optimizers`): the frozen backbone computes in half precision and the
        adapters' AdamW updates are not rounded away."""
        if self.hparams.lora_r > 0:
            upcast_trainables(self)

    def configure_optimizers(self):
        self.float32_trainables()
        params = [p for p in self.parameters() if p.requires_grad]
        if self.hparams.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(
                params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1
        scheduler = warmup_linear_decay(optimizer, self.hparams.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._image_cache.clear()  # training may have changed the vision tower (lora_vision, merger)
        metas = {meta.name: meta for meta in self.trainer.datamodule.task_metas}
        self._eval = EvalState(metas)
        self.eval_result = None

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    @property
    def eval_state(self) -> EvalState:
        """The running evaluation's state (set at each evaluation's start)."""
        if self._eval is None:
            raise RuntimeError(
                "no evaluation is running: on_validation_epoch_start (or test/predict) sets it"
            )
        return self._eval

    @torch.no_grad()
    def rerank_query(self, batch: QueryBatch) -> list[float]:
        """Scores of a query's candidates (``batch.pairs``, in ``batch.doc_ids`` order).

        The query's shared prefix runs once when it pays (``prefix.pays``, as in ``Reranker``); the
        candidates run in micro-batches of ``eval_pairs_per_forward``; with a frozen vision tower
        each distinct image is encoded once per evaluation (``eval_image_cache_mb``). With
        ``fusion_alpha`` set the scores are fused with the first stage's
        (:func:`datamodules.ranking.fuse`).
        """
        pairs = batch.pairs
        if not pairs:
            return []
        cache = self._image_cache if self.hparams.eval_image_cache_mb > 0 else None
        prefix = (
            query_prefix(self.scorer, pairs, self.pair_encoder.image_token_id, self.pair_encoder.merge_size)
            if self.hparams.share_prefix
            else (0, 0)
        )
        logits, hidden = score_pairs(
            self.scorer,
            pairs,
            collate=self._collate,
            features=self._features(cache),
            size=self.hparams.eval_pairs_per_forward,
            prefix=prefix,
        )
        reranked = rank_scores(self.objective, logits, hidden, self._token_columns).double().tolist()
        alpha = self.hparams.fusion_alpha
        return reranked if alpha is None else fuse(reranked, batch.first_stage, alpha)

    def validation_step(self, batch: QueryBatch, batch_idx: int) -> None:
        self.eval_state.add(batch, self.rerank_query(batch))

    test_step = validation_step
    predict_step = validation_step

    def gather_over_ranks(self, tables: EvalTables) -> EvalTables:
        """Every rank's tables merged (each query lives on exactly one rank): the one collective of
        an evaluation, which every rank calls. Python objects (ids with their scores), hence
        ``all_gather_object``."""
        if self.trainer.world_size == 1:
            return tables
        gathered: list[EvalTables | None] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, tables)
        return EvalTables().merged([part for part in gathered if part is not None])

    def _finish_eval(self, stage: str) -> None:
        """Score the merged runs (:func:`~lightning_modules.evaluation.task_results`), identically
        on every rank, log the metrics and leave the result in :attr:`eval_result` for the writer
        callback. ``predict`` logs nothing and leaves the runs only."""
        tables = self.gather_over_ranks(self.eval_state.tables)
        skipped = self._report_skipped(stage, tables.skipped)
        runs = tables.runs if self.hparams.write_runs or stage == "predict" else None
        if stage == "predict":
            self.eval_result = EvalResult(stage, self.global_step, runs=runs)
            return
        self.eval_result = None
        reranked, retriever = task_results(self.eval_state.metas, tables)
        for result in reranked:
            self.log(f"{stage}/{result.task}/{result.metric}", result.value)
        if not reranked:
            return
        summary, base_summary = summarize(reranked), summarize(retriever)
        for family, value in summary.families.items():
            self.log(f"{stage}/family/{family}", value)
        self.log(f"{stage}/mrb_avg", summary.average, prog_bar=True)
        self.log(f"{stage}/retriever_avg", base_summary.average)
        self.eval_result = EvalResult(stage, self.global_step, summary, base_summary, runs, skipped)

    def _report_skipped(self, stage: str, skipped: dict[str, dict[str, int]]) -> dict[str, int]:
        """Bad evaluation records left out with ``data.on_bad_record=skip``, per task: candidates
        whose image could not be used (they count as not retrieved) and lines left out when the
        task was loaded. Logged as ``<stage>/<task>/skipped_candidates`` and printed; never silent.
        Returns the logged counts (``{task: candidates}``) for the evaluation's record."""
        loaded = getattr(self.trainer.datamodule, "eval_load_problems", {}) or {}
        counts: dict[str, int] = {}
        for name in self.eval_state.metas:
            candidates, lines = sum(skipped.get(name, {}).values()), len(loaded.get(name, ()))
            if not candidates and not lines:
                continue
            counts[name] = candidates
            if stage != "predict":  # Lightning does not log in predict
                self.log(f"{stage}/{name}/skipped_candidates", float(candidates))
            if self.trainer.is_global_zero and not self.trainer.sanity_checking:
                print(
                    f"{stage}: task {name}: {candidates} candidate(s) left out as bad records in "
                    f"{len(skipped.get(name, {}))} query(ies), {lines} bad line(s) left out when loading "
                    "(data.on_bad_record=skip; the warnings above name them)",
                    flush=True,
                )
        return counts

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")
        if not self.trainer.sanity_checking:
            self._log_weight_histograms()

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def on_predict_epoch_end(self) -> None:
        self._finish_eval("predict")


def _as_train_batch(batch: TrainBatch) -> TrainBatch:
    """``batch``, checked: a training step takes a :class:`~datamodules.batches.TrainBatch`."""
    if not isinstance(batch, TrainBatch):
        raise TypeError(f"a training step takes a datamodules.batches.TrainBatch, got {type(batch).__name__}")
    return batch


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The training schedule: linear warm-up over ``warmup_steps`` (the first step already at
    1/(warmup+1) of the peak, never 0), then linear decay to 0 at ``total_steps``."""
    total = max(1, total_steps)
    warmup = min(warmup_steps, total - 1) if total > 1 else 0

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total

"""rerank-lab against the tool a user would otherwise pick: sentence-transformers 6 on the real model.

Command line (what ``make bench-peers`` runs)::

    python -m experiments.bench.peers [--quick] --out DIR [--model DIR] [--data DIR] [--steps S]
        [--objectives sft,cl] [--negatives 3,7]

Writes ``DIR/peers.json`` and ``DIR/peers.md`` (docs/peers.md §1 places this benchmark among the
neighbouring tools). The model is SmolLM2-135M-Instruct
(``python -m lightning_modules.fetch smollm2-135m``), the data the real task of ``make real``'s v2
setting (stdlib code search: training groups of 1 positive + 8 mined negatives, the dev split's
first-stage candidates).

Training (:mod:`~experiments.bench.peers.train`). For N in {3, 7} and each objective, rerank-lab
(``RerankerModule`` in a Lightning ``Trainer``: the group's shared prefix run once, label-token rows
only, the model config ``experiments/configs/model/smollm2_135m.yaml``) and sentence-transformers
(``CrossEncoder`` with a ``LogitScore`` head, LoRA through its PEFT support, ``CrossEncoderTrainer``)
train the same model with the same LoRA and initial adapter weights, on the same groups in the same
order, with the same optimiser, learning rate, schedule and number of steps: SFT against
``BinaryCrossEntropyLoss``, CL against ``MultipleNegativesRankingLoss`` (the group softmax). Figures:
pairs/s after two warm-up steps, peak RSS of the training process, dev nDCG@10 after the same steps,
for every seed.

Inference (:mod:`~experiments.bench.peers.infer`): ``Reranker.score`` against ``CrossEncoder.predict``
on the same dev candidate lists (pairs/s, peak RSS, the largest score difference on any pair).

Conditions (:mod:`~experiments.bench.peers.runner`): every run a fresh process with one torch thread,
one run at a time, the two sides alternating over the repeats; speed-ups are the median of the ratios
of runs made back to back, with the spread and the load average in ``peers.json``
(:mod:`~experiments.bench.peers.report`). ``peers.json`` keys: ``train_speedup`` (per N: the geometric
mean over the objectives), ``memory_ratio`` (rerank-lab's peak RSS / sentence-transformers', the worst
configuration), ``inference_speedup``, ``max_abs_score_difference``, ``equal_quality``, ``targets``,
and the raw figures of every run under ``train`` and ``inference``.
"""

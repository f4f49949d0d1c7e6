"""Speed benchmarks: rerank-lab's model path against the way peers write it, and its data tools.

Command line (what ``make bench`` runs)::

    python -m experiments.bench [--out runs/bench] [--quick] [--threads 1] [--models a,b]
    python -m experiments.bench.data [--json runs/bench/data.json]   # the training data stream
    python -m experiments.bench.eval [--json runs/bench/eval.json]   # the evaluator (trec_eval metrics)
    python -m experiments.bench.gpu_check                            # one table for a lent H100/H200

Writes ``bench.json`` and ``bench.md`` into ``--out``. In one run, on the same models and data:

(a) Training. One optimizer step = ``RerankerModule.training_step`` + backward + AdamW step
    (CL objective, LoRA r=16 on the language model, ``pairs_per_forward=4``: the group's shared
    prefix run once, images through the frozen vision tower once, length-sorted micro-batches
    under checkpointing, label-token rows only) against NAIVE peer-style code:
    ``model(**inputs).logits`` (full-vocabulary logits at every position), right padding + gather
    at the last real token, the whole group in one forward, same LoRA, objective and AdamW; and
    ``naive-gc``, the same with Hugging Face activation checkpointing (what peer trainers turn on
    by default for LLM rerankers). ``naive`` is given its fastest form (no checkpointing,
    ``use_cache=False``). For N = 4 and N = 16 negatives: pairs/s and peak step memory.
(b) Inference, end to end from raw query/documents: ``Reranker.score`` (all pairs encoded,
    length-sorted, batched, the shared-prefix cache where it pays; its cross-call image cache is
    cleared before each call, so a figure is one query's cost) and the same without the prefix
    cache, against a loop that encodes and scores one pair per forward with the same label-token
    scorer (so only batching and sharing differ).

Data (:mod:`experiments.bench.mix`): one query group per MRB task family, at MRB's shapes; every
figure is the throughput of MRB's 40-dataset mix (families weighted by their dataset counts).

Models (:mod:`experiments.bench.models`). CPU (1 thread by default): ``scaled2b``, Qwen2-VL-2B's
proportions scaled down, is the headline; ``vocab152k`` (Qwen's real vocabulary on a small
decoder) shows what full-vocabulary logits cost in memory, and overstates the speed-up. CUDA
(``torch.cuda.is_available()``): real-size Qwen2-VL-2B, Qwen2.5-VL-3B and Qwen2.5-VL-7B
architectures (random weights, bf16, SDPA), real MRB lengths, plus model-FLOPs utilisation:
MFU = 6·P·tokens/s (training) or 2·P·tokens/s (inference) ÷ the device's peak dense bf16 FLOP/s
(H100 SXM 989e12), P = parameters of the decoder and vision tower (embedding table and LM head
left out, the same P for every method, so MFU compares useful work).

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps minus the memory allocated
before them, one fresh subprocess per configuration. CPU (tracemalloc does not see torch's
allocations): a second fresh forked process per configuration, with glibc's mmap threshold fixed
at 64 KiB (``mallopt(M_MMAP_THRESHOLD)``, i.e. ``MALLOC_MMAP_THRESHOLD_``: every tensor buffer is its
own mapping, returned to the OS when freed, so RSS follows live tensors); after a warm-up step the
process's peak-RSS mark is reset (``/proc/self/clear_refs`` <- 5) and the peak (``VmHWM``) over one
step per family minus the RSS before them is reported. Timings come from the first process, with
the normal allocator (a mapping per buffer costs page faults, and not equally for every method).
Both are the step's transient memory (inputs, activations, logits, gradients) above the resident
model and optimizer state. ``--quick`` (the smoke test) runs its configurations in-process.

Timing: after one warm-up step (call), the fastest of ``Workload.repeats`` timings of each family's
step (inference call), so that one busy moment of the machine does not decide a ratio. On a CPU the
training measurements run ``--repeats`` times (default 3) in interleaved order (rerank-lab, naive,
naive-gc, rerank-lab, ...): a neighbour that slows the machine for a while slows the runs of one
repeat alike, each speed-up is the median of the per-repeat ratios, and ``train_speedup_spread``
(min, median, max per N) and ``load_average`` go into ``bench.json``.
Modules: :mod:`~experiments.bench.mix` (the workload), :mod:`~experiments.bench.models` (the
architectures), :mod:`~experiments.bench.workers` (one measured configuration),
:mod:`~experiments.bench.runner` (orchestration, ``bench.json``), :mod:`~experiments.bench.bounds`
(the exact-computation bounds), :mod:`~experiments.bench.report` (``bench.md``),
:mod:`~experiments.bench.data`, :mod:`~experiments.bench.eval`, :mod:`~experiments.bench.gpu_check`.
"""

"""The bundled demo benchmark: training groups + MRB-format test tasks built from real, offline data.

``python -m datamodules.demo --out DIR [--seed 0]`` writes::

    DIR/README.md                     what each task is: source, relevance, first stage, metric
    DIR/train/<task>.jsonl            training groups (docs/formats.md §2), one file per task
    DIR/train/images/<source>/*.png   their images, shared between the files
    DIR/mrb/<task>/...                one MRB test set per task (task.json, queries.jsonl, corpus.jsonl,
                                      qrels.tsv, candidates.trec, images/)

Everything comes from data that ships inside installed packages (scikit-learn's handwritten
digits, scikit-image's LFW subset and sample pictures, the docstrings of Python's standard library),
so the build needs no network and takes a few seconds on one CPU core.

The demo trains a tiny, randomly initialised VLM for a few minutes on CPU, so relevance rests on
binary properties such a model can pick up quickly. Each test query is judged against its own
pool of ``DEPTH`` candidates with three kinds of documents:

* 3 to 5 *relevant* ones: same kind of item, and the class the query asks for (the digit 0 for
  "a handwritten zero");
* *near misses*: same kind of item, the other class (a handwritten 1) -- telling them apart needs
  the query;
* *off-topic* ones from another source (a crop of a sample photograph) -- a property of the
  document alone, which a tiny model learns within a few hundred steps.

A random reordering of the candidates therefore scores far below a perfect one (about 0.25 vs
1.0 recall@5), a model that only learned what is on-topic lands in between (about 0.5), and one
that also matches the query reaches the top. Training groups are drawn the same way from the
other half of every source (disjoint images, docstrings, captions and answers).

The output is a pure function of the seed: building twice gives byte-identical files. An existing
non-empty folder is only ever replaced when it carries this builder's marker file.

Modules, in the order the build uses them: ``spec`` (constants and records), ``images`` and
``texts`` (the source items), ``tasks`` (the seven task definitions), ``retrieval`` (first stage
and pools), ``write`` (files on disk), ``build`` (``build_demo`` and the command line).
"""

from datamodules.demo.build import build_demo, main
from datamodules.demo.spec import (
    DEPTH,
    IMAGE_SIZE,
    MARKER,
    MAX_POSITIVES,
    N_HARD_NEGATIVES,
    N_NEAR_MISSES,
    N_TEST_QUERIES,
    N_TRAIN_GROUPS,
    OFF_TOPIC,
)

__all__ = [
    "DEPTH",
    "IMAGE_SIZE",
    "MARKER",
    "MAX_POSITIVES",
    "N_HARD_NEGATIVES",
    "N_NEAR_MISSES",
    "N_TEST_QUERIES",
    "N_TRAIN_GROUPS",
    "OFF_TOPIC",
    "build_demo",
    "main",
]

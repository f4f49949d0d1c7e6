"""The core install trains and evaluates without the tools' extras ([data], [real], [report]); a tool whose
extra is missing stops with one line naming the extra, its packages and the install command (exit 2).

A package counts as missing when ``sys.modules`` maps it to None (``import`` then raises ImportError)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.extras import EXTRAS, missing_message, require

REPO = Path(__file__).resolve().parents[1]
EXTRA_MODULES = sorted({m for modules in EXTRAS.values() for m in modules})


def _retrieve_task(tmp_path: Path) -> list[str]:
    return ["--task", str(tmp_path / "task")]  # checked before the task is read


def _hub_parquet(tmp_path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "hub"
    tables = {
        "corpus": [{"_id": "d1", "text": "capital of France"}],
        "queries": [{"_id": "q1", "text": "French capital"}],
        "qrels": [{"query-id": "q1", "corpus-id": "d1", "score": 1}],
    }
    for name, rows in tables.items():
        (src / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), src / name / "test-00000-of-00001.parquet")
    out = tmp_path / "out"
    return [str(src), "--out", str(out), "--family", "T2T", "--metric", "ndcg@10", "--instruction", "x"]


def _main(module: str):
    import importlib

    return importlib.import_module(module).main


# (tool module, its argv, the package made missing, the extra and the packages the line names)
TOOLS = [
    ("datamodules.convert.cli", _hub_parquet, "pyarrow", "data", ("datasets", "pyarrow")),
    ("datamodules.retrieve", _retrieve_task, "bm25s", "data", ("bm25s",)),
    (
        "datamodules.retrieve",
        lambda p: [*_retrieve_task(p), "--method", "dense"],
        "sentence_transformers",
        "data",
        ("sentence_transformers",),
    ),
    ("lightning_modules.fetch", lambda p: ["smollm2-135m", "--out", str(p / "m")], "gguf", "real", ("gguf",)),
    ("experiments.real", lambda p: ["--out", str(p / "real")], "gguf", "real", ("gguf",)),
    (
        "experiments.real",
        lambda p: ["--out", str(p / "real")],
        "bm25s",
        "data",
        ("bm25s", "sentence_transformers"),
    ),
    (
        "experiments.bench.peers.runner",
        lambda p: ["--out", str(p / "peers")],
        "datasets",
        "data",
        ("sentence_transformers", "datasets"),
    ),
    (
        "experiments.bench.serve_check",
        lambda p: ["--vllm-python", "python3", "--out", str(p / "serve")],
        "sentence_transformers",
        "data",
        ("sentence_transformers",),
    ),
]


@pytest.mark.parametrize(
    ("module", "argv", "blocked", "extra", "named"), TOOLS, ids=[f"{t[0]}-{t[2]}" for t in TOOLS]
)
def test_a_tool_without_its_extra_stops_with_one_line(
    module, argv, blocked, extra, named, tmp_path, monkeypatch, capsys
):
    args = argv(tmp_path)
    main = _main(module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # experiments.real sets both when unset
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    tool = "python -m " + module.removesuffix(".cli").removesuffix(".runner")
    assert err.splitlines() == [f"error: {missing_message(tool, extra, named)}"]
    assert err.startswith(f"error: {tool} needs the [{extra}] extra (")
    assert f"pip install -e '.[{extra}]'" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hub") == []


def test_the_line_names_distributions_and_the_fix(capsys):
    assert "error: " + missing_message(
        "python -m datamodules.convert", "data", ("datasets", "sentence_transformers")
    ) == (
        "error: python -m datamodules.convert needs the [data] extra (datasets, sentence-transformers): "
        "pip install -e '.[data]'"
    )
    require("x", "data", "datasets")  # installed here: nothing happens
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="not in the \\[real\\] extra"):
        require("x", "real", "datasets")


def test_a_jsonl_hub_folder_converts_without_the_data_extra(tmp_path, monkeypatch):
    from datamodules.convert import convert

    src = tmp_path / "hub"
    tables = {
        "corpus": [{"_id": "d1", "text": "capital of France"}, {"_id": "d2", "text": "Berlin"}],
        "queries": [{"_id": "q1", "text": "French capital"}],
        "qrels": [{"query-id": "q1", "corpus-id": "d1", "score": 1}],
    }
    for name, rows in tables.items():
        (src / name).mkdir(parents=True)
        (src / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for module in ("datasets", "pyarrow"):
        monkeypatch.setitem(sys.modules, module, None)
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    counts = convert(src, run, tmp_path / "out", family="T2T", metric="ndcg@10", instruction="Find")
    assert counts["kind"] == "mteb" and counts["queries"] == 1


def test_export_writes_the_crossencoder_files_without_sentence_transformers(monkeypatch):
    from lightning_modules.export_serve import st_files

    with_st = st_files("yes_minus_no", [5, 6], "Find", False, False, 64)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    without = st_files("yes_minus_no", [5, 6], "Find", False, False, 64)
    versions = without["config_sentence_transformers.json"].pop("__version__")
    assert "sentence_transformers" not in versions and "transformers" in versions
    assert list(with_st["config_sentence_transformers.json"].pop("__version__"))[0] == "sentence_transformers"
    assert without == with_st


def test_the_core_packages_import_none_of_the_extras():
    """One fresh process: the core packages (and the training command line) import no extra package.

    torchmetrics imports matplotlib by itself when it is installed (plots are optional there), so what the
    third-party core dependencies import on their own is the baseline."""
    code = (
        "import sys\n"
        f"extras = {EXTRA_MODULES!r}\n"
        "loaded = lambda: {m for m in extras if m in sys.modules}\n"
        "import lightning, peft, torchmetrics, transformers\n"
        "before = loaded()\n"
        "import objectives, datamodules, lightning_modules, experiments.cli\n"
        "import datamodules.datamodule, lightning_modules.reranker, lightning_modules.export\n"
        "import experiments.evaluate\n"
        "import json\n"
        "print(json.dumps([sorted(before), sorted(loaded() - before)]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    before, added = json.loads(result.stdout.strip().splitlines()[-1])
    assert added == [], f"the core packages import extras: {added}"
    assert set(before) <= {"matplotlib"}, before

"""``rerank-lab <subcommand>``: one dispatcher (experiments/commands.py) over every tool's ``main``,
one exit-code convention (0 ok, 1 the run failed, 2 bad usage or input, 130 interrupted)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

from experiments import commands
from experiments.commands import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_resolves_to_a_main_and_a_python_m_module(name):
    command = COMMANDS[name]
    assert callable(commands.resolve(name)), command.target
    # The pinned `python -m <module>` entry point exists (a module, or a package with __main__.py).
    spec = importlib.util.find_spec(command.module)
    assert spec is not None, command.module
    if spec.submodule_search_locations:
        assert importlib.util.find_spec(f"{command.module}.__main__") is not None, command.module
    assert commands.summary(name), f"{name}: no --help line (module docstring or summary)"


def test_the_console_script_is_the_dispatcher():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"rerank-lab": "experiments.commands:main"}


def test_help_lists_every_subcommand_with_its_docstring_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.M), name
    assert re.search(r"^  validate-data +Check a training root or an MRB root", out, re.M)
    assert re.search(r"^  export +Export a trained reranker checkpoint", out, re.M)
    assert "exit codes: 0 success, 1 the run failed" in out


def test_no_subcommand_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: rerank-lab <subcommand>" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["validate-data", "export", "evaluate", "sweep", "bench-eval", "mine"])
def test_a_subcommand_s_help_is_its_own_tool_s_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rerank-lab {name} ") and "-h, --help" in out, out[:80]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_tool_names_itself_as_it_was_run(name, capsys, monkeypatch):
    """Under the dispatcher a usage line reads ``rerank-lab <name>``; from ``python -m`` it names the module."""
    command = COMMANDS[name]
    if command.stage:
        return  # LightningCLI's stages keep sys.argv (its DDP launcher restarts ranks from it)
    assert main([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: rerank-lab {name}")
    module, function = command.target.split(":")
    monkeypatch.setattr(sys, "argv", [f"/anywhere/{module.replace('.', '/')}/__main__.py"])
    with pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: python -m {command.module}"), usage[:80]


def test_fit_help_is_lightning_cli_s(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--trainer.max_steps" in out and "--data.test_root" in out


def test_an_unknown_subcommand_exits_2_naming_the_known_ones(capsys):
    assert main(["vaildate-data", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: unknown subcommand 'vaildate-data'")
    assert "did you mean validate-data?" in err
    assert all(name in err for name in COMMANDS)


def test_an_input_error_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert main(["validate-data", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {tmp_path / 'missing'}: no such file or folder\n"
    assert "Traceback" not in captured.err + captured.out


def test_a_bad_argument_is_argparse_s_exit_2(capsys):
    assert main(["evaluate", "--data", "x"]) == 2  # neither --run nor --model
    assert "give exactly one of --run" in capsys.readouterr().err


def test_a_lightning_cli_input_error_keeps_its_exit_2(tmp_path, capsys):
    missing = f"{tmp_path}/no/model"
    args = ["validate", "--config", "experiments/configs/demo.yaml", f"--model.model_name_or_path={missing}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"model.model_name_or_path='{missing}': no such model folder" in err and "Traceback" not in err


def test_ctrl_c_exits_130_and_sys_exit_codes_pass_through(monkeypatch, capsys):
    module = importlib.import_module("experiments.bench.eval")

    def interrupted(argv):
        raise KeyboardInterrupt

    def stage_failed(argv):
        raise SystemExit("stage failed (exit 3)")  # Python's convention: the message, exit 1

    monkeypatch.setattr(module, "main", interrupted)
    assert main(["bench-eval"]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(module, "main", lambda argv: None)
    assert main(["bench-eval"]) == 0
    monkeypatch.setattr(module, "main", stage_failed)
    assert main(["bench-eval"]) == 1
    assert "stage failed (exit 3)" in capsys.readouterr().err


def test_sys_argv_is_restored_after_a_subcommand(monkeypatch):
    monkeypatch.setattr("sys.argv", ["rerank-lab", "bench-eval"])
    module = importlib.import_module("experiments.bench.eval")
    seen = []
    monkeypatch.setattr(module, "main", lambda argv: seen.append(sys.argv[0]))
    assert main(["bench-eval"]) == 0
    assert seen == ["rerank-lab bench-eval"] and sys.argv == ["rerank-lab", "bench-eval"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "--models", "nosuch"], "error: --models: unknown ['nosuch']; choose from"),
        (["bench", "--families", "T2X"], "error: --families: unknown ['T2X']; choose from"),
        (["bench", "--tiny-dir", "{tmp}/none"], "error: {tmp}/none: --tiny-dir is not a model folder"),
        (["bench-peers", "--model", "{tmp}/none", "--out", "{tmp}/o"], "error: {tmp}/none is missing:"),
    ],
)
def test_the_benchmarks_report_bad_input_as_one_line(argv, expected, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected.replace("{tmp}", str(tmp_path))), err
    assert list(tmp_path.iterdir()) == []  # nothing written for a run that never started

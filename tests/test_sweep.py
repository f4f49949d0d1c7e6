"""The sweep YAMLs and the local sweep runner (experiments/sweep/).

Fast tests run the runner on a stand-in command (a tiny script that writes what the CLI writes);
the `slow` test runs the real demo_probe sweep with 2 training steps per run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

import objectives
from experiments import sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
DEMO_COMMAND = [
    "/usr/bin/env",
    sys.executable,
    "-m",
    "experiments.cli",
    "fit",
    *("--config", "experiments/configs/base.yaml", "--config", "experiments/configs/model/tiny.yaml"),
    *("--config", "experiments/configs/data/demo.yaml", "--config", "experiments/configs/trainer/cpu.yaml"),
]


# ---- the shipped sweep YAMLs ------------------------------------------------------------------
def test_the_shipped_sweeps_are_there():
    assert {p.stem for p in SWEEPS} >= {"demo_probe", "probe_grid", "negatives", "temperature", "lr"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_yaml_is_a_wandb_sweep_of_the_cli(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert raw["metric"] == {"name": "val/mrb_avg", "goal": "maximize"}
    assert raw["method"] in ("grid", "random")
    assert raw["name"] == path.stem
    command = raw["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "experiments.cli"]
    assert command[4] == "fit" and command[-1] == "${args}"
    assert path.read_text(encoding="utf-8").startswith("# "), "each sweep opens with what it runs"
    for name, spec in raw["parameters"].items():
        values = [spec["value"]] if "value" in spec else spec.get("values", [])
        for value in values:  # PyYAML reads 1e-4 as a string: write 1.0e-4
            assert not (isinstance(value, str) and value.replace(".", "").replace("e-", "").isdigit()), name
    sweep.load_sweep(path)  # no bare null, no list index, valid names


def covering_runs(config: dict) -> list[sweep.Run]:
    """A few runs that together use every value of every parameter (parsing all is slow)."""
    if config["method"] == "random":
        return sweep.plan_runs(config, count=3)
    runs, seen = [], set()
    for run in sweep.plan_runs(config):
        pairs = {(k, json.dumps(v)) for k, v in run.params.items()}
        if not pairs <= seen:
            runs.append(run)
            seen |= pairs
    return runs


class Parsed(Exception):
    pass


def parse_with_cli(args: list[str], monkeypatch) -> dict:
    """Parse (never instantiate) a command line with the real RerankCLI parser."""
    from experiments import cli

    def stop(self):
        raise Parsed(self.config[self.subcommand].as_dict())

    monkeypatch.setattr(cli.RerankCLI, "before_instantiate_classes", stop)
    monkeypatch.setattr(sys, "argv", ["rerank-lab"])  # LightningCLI warns when pytest's argv is there too
    with pytest.raises(Parsed) as caught:
        cli.build_cli(args)
    return caught.value.args[0]


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_parameter_is_a_cli_key(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    config = sweep.load_sweep(path)
    for run in covering_runs(config):
        command = sweep.build_command(config, sweep.run_args(run, tmp_path))
        parsed = parse_with_cli(command[command.index("experiments.cli") + 1 :], monkeypatch)
        for key, value in run.params.items():
            got = lookup(parsed, key)
            # A str here means the CLI typed the key as a bare dict (declare dict[str, Any]).
            assert type(got) is type(value), f"{key}: the CLI parsed {value!r} as {got!r}"
            assert got == (pytest.approx(value) if isinstance(value, float) else value), key
        assert parsed["runs_dir"] == str(tmp_path / run.key) and parsed["run_name"] == run.key
        model = parsed["model"]  # objective_args is a free dict: the registry checks its names
        objectives.build(model["objective"], hidden_size=8, **(model["objective_args"] or {}))


# ---- plans and command lines ------------------------------------------------------------------
def test_demo_probe_expands_to_the_2x2_grid_with_exact_command_lines(tmp_path):
    config = sweep.load_sweep(ROOT / "experiments" / "sweeps" / "demo_probe.yaml")
    runs = sweep.plan_runs(config)
    assert [r.key for r in runs] == ["url-Wsft-Dsft", "url-Wsft-Dcl", "url-Wcl-Dsft", "url-Wcl-Dcl"]
    assert sweep.build_command(config, sweep.run_args(runs[1], tmp_path)) == [
        *DEMO_COMMAND,
        "--model.objective=url",
        "--model.objective_args.weight=sft",
        "--model.objective_args.direction=cl",
        "--seed_everything=0",
        "--data.num_negatives=7",
        "--trainer.max_steps=200",
        "--trainer.val_check_interval=200",
        f"--runs_dir={tmp_path / 'url-Wsft-Dcl'}",
        "--run_name=url-Wsft-Dcl",
    ]


def test_full_scale_grids_have_the_expected_runs():
    def plan(name, **kwargs):
        return sweep.plan_runs(sweep.load_sweep(ROOT / "experiments" / "sweeps" / f"{name}.yaml"), **kwargs)

    probe = plan("probe_grid")
    assert len(probe) == 12
    assert [r.key for r in probe[:4]] == [
        "url-Wsft-Dsft-s0",
        "url-Wsft-Dcl-s0",
        "url-Wcl-Dsft-s0",
        "url-Wcl-Dcl-s0",
    ]
    assert [r.params["seed_everything"] for r in probe] == [0] * 4 + [1] * 4 + [2] * 4
    negatives = plan("negatives")
    assert [r.key for r in negatives] == [f"{o}-n{n}" for o in ("sft", "cl") for n in (2, 4, 8, 16)]
    assert len(plan("temperature")) == 10
    assert [r.key for r in plan("probe_grid", count=2)] == ["url-Wsft-Dsft-s0", "url-Wsft-Dcl-s0"]


def test_sweep_folders_and_cli_run_names_are_one_naming_scheme():
    from experiments.keys import run_name

    parameters = {
        "model.objective": {"value": "cl"},
        "model.objective_args.temperature": {"values": [0.5, 2.0]},
        "data.num_negatives": {"values": [4, 8]},
        "seed_everything": {"values": [1, 2]},
    }
    runs = sweep.plan_runs({"method": "grid", "parameters": parameters})
    assert runs[0].key == "cl-T0.5-n4-s1"
    config = {
        "model": {"objective": "cl", "objective_args": {"temperature": 0.5}, "lm_head": "frozen"},
        "data": {"num_negatives": 4},
        "seed_everything": 1,
    }
    assert run_name(config) == runs[0].key  # the CLI names the same run the same way


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _validation(step, average, **extra):
    """An eval_history.jsonl line as experiments.eval_writer writes it."""
    tasks = {"t": {"family": "T2T", "metric": "ndcg@10", "value": average, "n_queries": 2}}
    record = {"stage": "val", "step": step, "tasks": tasks, "families": {"T2T": average}}
    return {**record, "average": average, "retriever": {"average": 0.2}, **extra}


def test_the_run_metric_is_the_best_validation_as_in_the_wandb_summary(tmp_path):
    _write_jsonl(
        tmp_path / "metrics.jsonl", [{"step": 5, "train/loss": 0.9}, {"step": 15, "train/loss": 0.7}]
    )
    history = [_validation(0, 0.3), _validation(10, 0.5), _validation(20, 0.4)]
    _write_jsonl(tmp_path / "eval_history.jsonl", history)
    assert sweep.final_metric(tmp_path, "val/mrb_avg") == 0.5
    assert sweep.final_metric(tmp_path, "train/loss") == 0.7  # other keys: the last value
    # Any key the module logs for a validation is read from its record, as the last value.
    assert sweep.final_metric(tmp_path, "val/t/ndcg@10") == 0.4
    assert sweep.final_metric(tmp_path, "val/family/T2T") == 0.4
    assert sweep.final_metric(tmp_path, "val/retriever_avg") == 0.2
    assert sweep.final_metric(tmp_path, "val/t/recall@5") is None
    # A test's record is not a validation.
    _write_jsonl(tmp_path / "eval_history.jsonl", [*history, {**_validation(20, 0.99), "stage": "test"}])
    assert sweep.final_metric(tmp_path, "val/mrb_avg") == 0.5
    assert sweep.final_metric(tmp_path, "test/mrb_avg") == 0.99
    # The untrained step-0 validation is a baseline, never the run's best (no checkpoint holds it).
    history[0] = _validation(0, 0.9)
    _write_jsonl(tmp_path / "eval_history.jsonl", history)
    assert sweep.final_metric(tmp_path, "val/mrb_avg") == 0.5
    _write_jsonl(tmp_path / "eval_history.jsonl", history[:1])
    assert sweep.final_metric(tmp_path, "val/mrb_avg") == 0.9  # nothing else: the baseline it is


def test_validation_keys_are_never_read_from_metrics_jsonl(tmp_path):
    """metrics.jsonl holds training scalars; a val/ key there (as runs wrote before) is not a result."""
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 10, "val/mrb_avg": 0.8, "train/loss": 0.5}])
    assert sweep.final_metric(tmp_path, "val/mrb_avg") is None
    _write_jsonl(tmp_path / "eval_history.jsonl", [_validation(10, 0.6, skipped_candidates={"t": 3})])
    assert sweep.final_metric(tmp_path, "val/mrb_avg") == 0.6
    assert sweep.final_metric(tmp_path, "val/t/skipped_candidates") == 3.0


def test_random_plan_is_seeded_capped_and_in_range():
    config = sweep.load_sweep(ROOT / "experiments" / "sweeps" / "lr.yaml")
    runs = sweep.plan_runs(config)
    assert len(runs) == config["run_cap"] == 12
    assert [r.params for r in runs] == [r.params for r in sweep.plan_runs(config)]
    assert [r.params for r in runs[:5]] == [r.params for r in sweep.plan_runs(config, count=5)]
    assert [r.params for r in runs] != [r.params for r in sweep.plan_runs(config, seed=1)]
    assert all(1e-5 <= r.params["model.lr"] <= 5e-4 for r in runs)
    assert {r.params["model.objective"] for r in runs} == {"sft", "cl"}
    assert runs[0].key.startswith("r000-") and len({r.key for r in runs}) == 12
    config["run_cap"] = None
    with pytest.raises(sweep.SweepError, match="--count"):
        sweep.plan_runs(config)


def test_argument_macros_match_the_wandb_agent(tmp_path, monkeypatch):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = {"a.b": 1, "flag": True, "off": False, "lr": 0.0001, "name": "x y", "none": "null"}
    ours = sweep.command_args(args)
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in args.items()}})
    for macro in ours:
        assert ours[macro] == theirs[macro], macro
    monkeypatch.setenv("SWEEP_TEST_ROOT", "/data")
    config = {
        "program": "train.py",
        "command": [
            "${env}",
            "${interpreter}",
            "${program}",
            "--root=${envvar:SWEEP_TEST_ROOT}/x",
            "${args_no_hyphens}",
            "${nope}",
        ],
    }
    assert sweep.build_command(config, {"a": 1}) == [
        "/usr/bin/env",
        sys.executable,
        "train.py",
        "--root=/data/x",
        "a=1",
    ]
    assert sweep.build_command({"program": "t.py"}, {"a": 1}) == [
        "/usr/bin/env",
        sys.executable,
        "t.py",
        "--a=1",
    ]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"trainer.callbacks.0.patience": {"value": 3}}, "list element by index"),
        ({"model.quantization": {"values": [None, "4bit"]}}, 'write "null"'),
        ({"model.lr": {"bogus": 1}}, "needs 'value'"),
        ({}, "non-empty"),
    ],
)
def test_sweep_yaml_pitfalls_are_refused_with_the_file_and_key(tmp_path, parameters, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": parameters}), encoding="utf-8")
    with pytest.raises(sweep.SweepError, match=message) as caught:
        sweep.load_sweep(path)
    assert str(path) in str(caught.value)


# ---- the local runner on a stand-in command ---------------------------------------------------
FAKE_CLI = textwrap.dedent(
    """
    import json, os, pathlib, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    with open(os.environ["FAKE_CALLS"], "a") as calls:
        calls.write(args["run_name"] + "\\n")
    print("training", args["run_name"])
    if os.environ.get("FAKE_FAIL") == args["x"]:
        print("boom: x is cursed", file=sys.stderr)
        sys.exit(3)
    run = pathlib.Path(args["runs_dir"]) / (args["run_name"] + "-20260101-000000")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 0\\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "train/loss": 1.0}) + "\\n")
    record = {"stage": "val", "step": 2, "tasks": {}, "families": {}, "average": int(args["x"]) / 10}
    (run / "eval_history.jsonl").write_text(json.dumps(record) + "\\n")
    """
)


@pytest.fixture
def fake_sweep(tmp_path, monkeypatch):
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI, encoding="utf-8")
    config = {
        "name": "fake",
        "method": "grid",
        "metric": {"name": "val/mrb_avg", "goal": "maximize"},
        "command": ["${interpreter}", str(script), "${args}"],
        "parameters": {"x": {"values": [1, 2, 3]}, "tag": {"value": "t"}},
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv(sweep.AGENT_TAG_ENV, raising=False)

    def run(*extra: str) -> tuple[int, list[str]]:
        code = sweep.main([str(path), "--local", "--runs-dir", str(tmp_path / "sweep"), *extra])
        called = calls.read_text().split() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return code, called

    return types.SimpleNamespace(run=run, dir=tmp_path / "sweep", path=path)


def test_runner_reports_failures_and_resumes_only_what_is_missing(fake_sweep, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL", "2")
    code, called = fake_sweep.run()
    out = capsys.readouterr().out
    assert code == 1
    assert called == ["x1", "x2", "x3"]
    log = fake_sweep.dir / "x2" / "run.log"
    assert "[1/3] x1 ... done in" in out and "val/mrb_avg=0.1000" in out
    assert "[2/3] x2 ... FAILED (exit 3) after" in out and f"log: {log}" in out
    assert "    | boom: x is cursed" in out
    assert "2 ran, 0 skipped (finished), 1 failed" in out and "best val/mrb_avg=0.3000 (x3)" in out
    assert "training x2" in log.read_text() and "boom" in log.read_text()
    assert log.read_text().startswith(f"$ {sys.executable} ")
    done = json.loads((fake_sweep.dir / "x1" / "done.json").read_text())
    assert done["params"] == {"x": 1, "tag": "t"} and done["returncode"] == 0
    assert done["metric"] == {"val/mrb_avg": 0.1} and done["run_dir"] == "x1-20260101-000000"
    assert done["command"][-4:] == [
        "--x=1",
        "--tag=t",
        f"--runs_dir={fake_sweep.dir / 'x1'}",
        "--run_name=x1",
    ]
    assert not (fake_sweep.dir / "x2" / "done.json").exists()
    assert not (fake_sweep.dir / "x1" / "running.lock").exists()

    monkeypatch.delenv("FAKE_FAIL")
    code, called = fake_sweep.run()
    out = capsys.readouterr().out
    assert code == 0 and called == ["x2"]
    assert "[1/3] x1 ... skipped (finished)  val/mrb_avg=0.1000" in out
    assert "[2/3] x2 ... done in" in out and "earlier attempt moved to x2/.attempts/1" in out
    assert "boom" in (fake_sweep.dir / "x2" / ".attempts" / "1" / "run.log").read_text()
    assert "1 ran, 2 skipped (finished), 0 failed" in out

    code, called = fake_sweep.run()
    assert code == 0 and called == []
    assert capsys.readouterr().out.count(" ... skipped (finished)") == 3


def test_changed_parameters_rerun_and_count_limits_the_plan(fake_sweep, capsys):
    assert fake_sweep.run("--count", "2")[1] == ["x1", "x2"]
    assert "[2/2] x2" in capsys.readouterr().out
    code, called = fake_sweep.run("--set", "tag=u")
    assert code == 0 and called == ["x1", "x2", "x3"]  # same folders, new parameters: not finished
    assert json.loads((fake_sweep.dir / "x1" / "done.json").read_text())["params"]["tag"] == "u"


def test_a_changed_command_makes_finished_runs_outdated(fake_sweep, capsys):
    assert fake_sweep.run("--count", "1")[1] == ["x1"]
    config = yaml.safe_load(fake_sweep.path.read_text())
    config["command"].insert(2, "--extra=1")
    fake_sweep.path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert fake_sweep.run("--count", "1")[1] == ["x1"]
    assert "earlier attempt moved to x1/.attempts/1" in capsys.readouterr().out


def test_demo_assets_are_built_only_when_the_demo_configs_point_at_missing_folders(tmp_path, monkeypatch):
    import datamodules.demo
    import lightning_modules.tiny

    built = []
    monkeypatch.setattr(
        lightning_modules.tiny, "build_tiny", lambda out, family, seed: built.append(("model", out))
    )
    monkeypatch.setattr(datamodules.demo, "build_demo", lambda out, seed: built.append(("data", out)))
    (tmp_path / "tiny.yaml").write_text(f"model:\n  model_name_or_path: {tmp_path / 'm'}\n")
    data = {"data": {"train_root": str(tmp_path / "d" / "train"), "eval_root": str(tmp_path / "d" / "mrb")}}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    command = [
        "${interpreter}",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--config",
        str(tmp_path / "demo.yaml"),
    ]
    config = {"command": [*command, "${args}"], "parameters": {"x": {"value": 1}}}
    sweep.prepare_demo(config)
    assert built == [("model", tmp_path / "m"), ("data", tmp_path / "d")]
    built.clear()
    config["parameters"] = {
        "model.model_name_or_path": {"value": "elsewhere"},
        "data.train_root": {"value": "x"},
    }
    sweep.prepare_demo(config)
    assert built == []


def test_a_run_locked_by_a_live_runner_is_left_alone_and_a_stale_lock_is_taken(fake_sweep, capsys):
    host = socket.gethostname()
    (fake_sweep.dir / "x1").mkdir(parents=True)
    (fake_sweep.dir / "x1" / "running.lock").write_text(json.dumps({"pid": os.getpid(), "host": host}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (fake_sweep.dir / "x2").mkdir()
    (fake_sweep.dir / "x2" / "running.lock").write_text(json.dumps({"pid": dead.pid, "host": host}))
    code, called = fake_sweep.run()
    out = capsys.readouterr().out
    assert code == 0 and called == ["x2", "x3"]
    assert f"[1/3] x1 ... skipped (running elsewhere: pid {os.getpid()} on {host})" in out


@pytest.mark.parametrize("agents", [("--gpus", "0,1"), ("--agents", "2")])
def test_agents_share_the_sweep_folder_without_running_a_run_twice(fake_sweep, agents, capsys):
    code, called = fake_sweep.run(*agents)
    assert code == 0 and sorted(called) == ["x1", "x2", "x3"]
    assert all((fake_sweep.dir / key / "done.json").is_file() for key in ("x1", "x2", "x3"))


@pytest.mark.parametrize("bad", [("--agents", "0"), ("--gpus", "0", "--agents", "2")])
def test_bad_agent_counts_exit_2_with_a_message(fake_sweep, bad, capsys):
    assert fake_sweep.run(*bad)[0] == 2
    assert "--agents" in capsys.readouterr().err


def test_dry_run_prints_commands_and_runs_nothing(fake_sweep, capsys):
    code, called = fake_sweep.run("--dry-run")
    out = capsys.readouterr().out
    assert code == 0 and called == [] and not fake_sweep.dir.exists()
    assert f"[3/3] x3: {sys.executable} " in out and "--x=3 --tag=t" in out


def test_a_command_that_cannot_start_is_a_failed_run(fake_sweep, tmp_path, capsys):
    config = yaml.safe_load(fake_sweep.path.read_text())
    config["command"] = [str(tmp_path / "no-such-program"), "${args}"]
    fake_sweep.path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert fake_sweep.run("--count", "1")[0] == 1
    assert "[1/1] x1 ... FAILED (cannot start:" in capsys.readouterr().out


def test_bad_yaml_exits_2_with_a_message(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("method: bayes\nparameters:\n  x:\n    values: [1, 2]\n", encoding="utf-8")
    assert sweep.main([str(path), "--local"]) == 2
    assert "bayes needs W&B" in capsys.readouterr().err


def test_online_mode_creates_the_sweep_and_runs_an_agent(fake_sweep, monkeypatch, tmp_path):
    calls = {}

    def fake_sweep_create(config, project, entity):
        calls["sweep"] = (config, project)
        return "abc123"

    def fake_agent(sweep_id, project, entity, count):
        calls["agent"] = (sweep_id, count)

    fake_wandb = types.SimpleNamespace(sweep=fake_sweep_create, agent=fake_agent)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setattr(sweep, "use_wandb", lambda: (True, ""))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # restored after the test
    code = sweep.main([str(fake_sweep.path), "--count", "2", "--runs-dir", str(tmp_path / "online")])
    assert code == 0
    config, project = calls["sweep"]
    assert project == "rerank-lab" and calls["agent"] == ("abc123", 2)
    assert config["command"][-2:] == [f"--runs_dir={tmp_path / 'online'}", "${args}"]
    assert os.environ["PATH"].startswith(os.path.dirname(sys.executable))  # W&B's `python` = this one


@pytest.mark.slow
def test_demo_probe_sweep_end_to_end(tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "demo_probe"
    args = [
        str(ROOT / "experiments" / "sweeps" / "demo_probe.yaml"),
        "--local",
        "--runs-dir",
        str(out),
        "--set",
        "trainer.max_steps=2",
        "--set",
        "trainer.val_check_interval=2",
        "--set",
        f"model.model_name_or_path={tiny_model_dir}",
        "--set",
        f"data.train_root={demo_dir / 'train'}",
        "--set",
        f"data.eval_root={demo_dir / 'mrb'}",
        "--set",
        "data.eval_tasks=[digits-t2i, stdlib-docs]",
        "--set",
        "data.eval_top_k=8",
    ]
    assert sweep.main(args) == 0
    assert capsys.readouterr().out.count(" ... done in ") == 4
    for key in ("url-Wsft-Dsft", "url-Wsft-Dcl", "url-Wcl-Dsft", "url-Wcl-Dcl"):
        done = json.loads((out / key / "done.json").read_text())
        history = (out / key / done["run_dir"] / "eval_history.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in history] == [0, 2]
        best = max(json.loads(line)["average"] for line in history)  # the best, as W&B's summary
        assert done["metric"]["val/mrb_avg"] == pytest.approx(best)
    assert sweep.main(args) == 0
    assert capsys.readouterr().out.count(" ... skipped (finished)") == 4

    from experiments import report

    assert report.main([str(out)]) == 0
    table = (out / "probe_table.md").read_text()
    assert table.count("| url | ") == 4 and "| T2T | T2I |" in table

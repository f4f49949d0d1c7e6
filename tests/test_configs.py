"""The shipped configs under ``experiments/configs`` are tested artifacts.

Every YAML (found by glob, so a new file is covered without touching this test) opens with a comment
that names its launch command, parses against the current code composed the documented way (base +
tiny model + demo data, then the file), and lands every key it sets in the resolved config. The
launch commands written in the headers parse too. Parsing uses the CLI's own parser and never
instantiates a class, so configs naming hub checkpoints or deepspeed need neither. The compositions
that fit a CPU (tiny model + demo data + a probe) go through the real entry point and train one step
and validate one query with ``fast_dev_run``: a few representative probes in the fast tier, all of
them under ``slow``.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

import experiments.cli
from experiments.cli import RerankCLI, build_cli

# build_cli(args=...) warns that pytest's own argv is also present; it reads only args.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "experiments" / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
BASE = CONFIG_DIR / "base.yaml"
TINY = CONFIG_DIR / "model" / "tiny.yaml"
DEMO_DATA = CONFIG_DIR / "data" / "demo.yaml"
CPU = CONFIG_DIR / "trainer" / "cpu.yaml"
GPU = CONFIG_DIR / "trainer" / "gpu.yaml"
FAST_DEV_RUN = CONFIG_DIR / "debug" / "fast_dev_run.yaml"
STANDALONE = {"demo.yaml"}  # complete on its own: `make demo` launches it alone
PROBES = sorted((CONFIG_DIR / "probes").glob("*.yaml"))
RUNNABLE = PROBES + sorted((CONFIG_DIR / "experiment").glob("*.yaml"))
# Fast tier: the projection direction (hidden states), 16 label tokens, plain CL with the LM head trained.
FAST_PROBES = ["drand_cl", "label_tokens_16", "lm_head_cl"]


def url(weight: str, direction: str, **extra) -> dict:
    return {"objective": "url", "objective_args": {"weight": weight, "direction": direction, **extra}}


SFT = {"objective": "sft", "objective_args": None}
CL = {"objective": "cl", "objective_args": {"temperature": 1.0}}
# The paper's probe grid (docs/science.md §4): file -> (model settings, data.num_negatives or None, row cited).
PAPER_GRID = {
    "t1_wsft_dsft": (url("sft", "sft"), None, "Table 1 row 1"),
    "t1_wsft_dcl": (url("sft", "cl"), None, "Table 1 row 2"),
    "t1_wcl_dsft": (url("cl", "sft"), None, "Table 1 row 3"),
    "t1_wcl_dcl": (url("cl", "cl"), None, "Table 1 row 4"),
    "t2_wbase": (url("constant", "sft"), None, "Table 2 row 1"),
    "t2_tau_mask": (url("tau_mask", "sft", tau=0.1), None, "Table 2 row 2"),
    "t2_wsft": (url("sft", "sft"), None, "Table 2 row 3"),
    "drand_sft": (url("sft", "projection"), None, "D_rand"),
    "drand_cl": (url("cl", "projection"), None, "D_rand"),
    **{
        f"label_tokens_{k}": (url("sft", "multi_token", label_token_count=k), None, "label-token")
        for k in (2, 4, 8, 16)
    },
    **{f"negatives_sft_{n}": (SFT, n, "negatives") for n in (2, 4, 8, 16)},
    **{f"negatives_cl_{n}": (CL, n, "negatives") for n in (2, 4, 8, 16)},
    "lm_head_sft": ({**SFT, "lm_head": "full"}, None, "LM-head"),
    "lm_head_cl": ({**CL, "lm_head": "full"}, None, "LM-head"),
}


def rel(path: Path) -> str:
    return path.relative_to(CONFIG_DIR).as_posix()


def composition(path: Path) -> list[Path]:
    """The documented stack a file is checked in: base + tiny model + demo data, then the file itself."""
    if rel(path) in STANDALONE:
        return [path]
    stack = [BASE, TINY, DEMO_DATA]
    return stack if path in stack else [*stack, path]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def without(tree: dict, later: dict) -> dict:
    """``tree`` less the keys a later file sets again (those are the later file's to decide)."""
    kept = {}
    for key, value in tree.items():
        if key not in later:
            kept[key] = value
        elif isinstance(value, dict) and isinstance(later[key], dict) and "class_path" not in value:
            kept[key] = without(value, later[key])
    return kept


def config_args(files: list[Path]) -> list[str]:
    return [arg for path in files for arg in ("--config", str(path))]


class _ParserBuilt(Exception):
    pass


@functools.cache
def cli_parser():
    """The parser ``build_cli`` builds (same classes, links, defaults and parser mode), built once.

    ``build_cli(args + ["--print_config"])`` would check the same thing, but it rebuilds the whole
    parser from the class signatures on every call (~3x slower over ~90 parses).
    """

    class KeepParser(RerankCLI):
        def parse_arguments(self, parser, args):
            raise _ParserBuilt(parser)

    with mock.patch.object(experiments.cli, "RerankCLI", KeepParser), pytest.raises(_ParserBuilt) as built:
        build_cli([])
    return built.value.args[0]


def resolved_config(capsys, args: list[str]) -> dict:
    """The config the CLI would run for ``args`` (``fit ...``), parsed but never instantiated."""
    capsys.readouterr()
    try:
        namespace = cli_parser().parse_args(args)
    except SystemExit:
        error = capsys.readouterr().err.strip().split("error:")[-1]
        pytest.fail(f"`python -m experiments.cli {shlex.join(args)}` does not parse: {error}")
    return namespace[args[0]].as_dict()


def plain(value):
    """A parsed value as a config file writes it: enums by name, classes by import path."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def assert_contains(expected, actual, key: str = "") -> None:
    """Every value set in ``expected`` (a config file's tree) is what the resolved config holds."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{key}: expected a mapping, resolved {actual!r}"
        for name, value in expected.items():
            assert name in actual, f"{key}.{name} missing from the resolved config"
            assert_contains(value, actual[name], f"{key}.{name}".lstrip("."))
    elif isinstance(expected, list) and isinstance(actual, set | frozenset):  # e.g. auto_wrap_policy
        assert {plain(item) for item in actual} == set(expected), f"{key}: {expected!r} != {actual!r}"
    elif isinstance(expected, list):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), (
            f"{key}: {expected!r} != {actual!r}"
        )
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert_contains(want, got, f"{key}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected), f"{key}: {expected!r} != {actual!r}"
    else:
        assert plain(actual) == expected, f"{key}: {expected!r} != {actual!r}"


def header(path: Path) -> str:
    """The comment block a file opens with."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def launch_commands(path: Path) -> list[list[str]]:
    """The ``python -m experiments.cli ...`` commands written in a file's header, as argv lists."""
    commands, current = [], None
    for line in header(path).splitlines():
        text = line.lstrip("#").strip()
        if current is None and text.startswith("python -m experiments.cli "):
            current = text
        elif current is not None:
            current += " " + text
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1]
        else:
            commands.append(shlex.split(current)[3:])
            current = None
    return commands


# ---- every shipped file --------------------------------------------------------------------------


def test_the_tree_has_the_documented_presets():
    names = {rel(path) for path in ALL_CONFIGS}
    for preset in ("base.yaml", "model/tiny.yaml", "data/demo.yaml", "data/mrb.yaml", "trainer/cpu.yaml"):
        assert preset in names
    assert {f"probes/{name}.yaml" for name in PAPER_GRID} <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=rel)
def test_opens_with_what_it_is_and_its_launch_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# \w", first), f"{rel(path)}: the first line must be a comment saying what the file is"
    commands = launch_commands(path)
    assert commands, f"{rel(path)}: the opening comment must give the `python -m experiments.cli ...` command"
    assert any(f"experiments/configs/{rel(path)}" in command for command in commands), (
        f"{rel(path)}: no launch command in its header uses the file itself"
    )


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=rel)
def test_parses_and_patches_exactly_what_it_sets(path, capsys):
    files = composition(path)
    expected = load(path)
    for later in files[files.index(path) + 1 :]:
        expected = without(expected, load(later))
    assert_contains(expected, resolved_config(capsys, ["fit", *config_args(files)]))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=rel)
def test_the_launch_commands_in_its_header_parse(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # commands are written from the project root
    for command in launch_commands(path):
        assert command[0] == "fit"
        config = resolved_config(capsys, command)
        assert config["seed_everything"] == 0


# ---- the paper's probe grid ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAPER_GRID))
def test_probe_sets_the_papers_setting_and_cites_its_row(name, capsys):
    model, num_negatives, row = PAPER_GRID[name]
    path = CONFIG_DIR / "probes" / f"{name}.yaml"
    assert "paper" in header(path) and row in header(path), f"{rel(path)} must cite the paper's {row} probe"
    # Composed after a probe with other objective arguments: a probe replaces them, never merges.
    other = CONFIG_DIR / "probes" / "t2_tau_mask.yaml"
    config = resolved_config(capsys, ["fit", *config_args([BASE, TINY, DEMO_DATA, other, path])])
    assert {key: config["model"][key] for key in model} == model
    demo_negatives = load(DEMO_DATA)["data"]["num_negatives"]
    assert config["data"]["num_negatives"] == (num_negatives or demo_negatives)
    if "lm_head" not in model:
        assert config["model"]["lm_head"] == "frozen"


@pytest.mark.parametrize("path", PROBES, ids=rel)
def test_every_probe_cites_a_paper_row(path):
    text = header(path)
    assert "paper" in text and ("Table" in text or "§4" in text), (
        f"{rel(path)} must say which paper row it reproduces"
    )


def test_hardware_presets_resolve_to_their_strategies(capsys):
    def trainer(name: str) -> dict:
        return resolved_config(
            capsys, ["fit", *config_args([BASE, TINY, DEMO_DATA, CONFIG_DIR / "trainer" / name])]
        )["trainer"]

    ddp = trainer("ddp.yaml")
    assert (ddp["strategy"], ddp["devices"], ddp["precision"]) == ("ddp", 8, "bf16-mixed")
    deepspeed = trainer("deepspeed.yaml")  # parses although deepspeed is not installed
    assert deepspeed["strategy"] == "deepspeed_stage_2"
    fsdp = trainer("fsdp.yaml")
    assert fsdp["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    assert fsdp["strategy"]["init_args"]["auto_wrap_policy"]


# ---- CPU runs ------------------------------------------------------------------------------------


def fast_dev_run(
    path: Path, tiny_model_dir: Path, demo_dir: Path, runs_dir: Path, hardware: Path = CPU
) -> None:
    """Runs base + tiny + demo data + ``hardware`` + ``path`` + fast_dev_run on the session fixtures.

    One step trains with a finite loss, one query validates, the run folder holds the local records,
    and the module and datamodule received the file's settings.
    """
    cli = build_cli(
        [
            "fit",
            *config_args([BASE, TINY, DEMO_DATA, hardware, path, FAST_DEV_RUN]),
            f"--model.model_name_or_path={tiny_model_dir}",
            f"--data.train_root={demo_dir / 'train'}",
            f"--data.eval_root={demo_dir / 'mrb'}",
            f"--runs_dir={runs_dir}",
        ]
    )
    patch = load(path)
    assert_contains(patch.get("model", {}), dict(cli.model.hparams))
    assert_contains(patch.get("data", {}), dict(cli.datamodule.hparams))
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert 0.0 <= float(metrics["val/mrb_avg"]) <= 1.0
    assert cli.run_dir.parent == runs_dir
    assert (cli.run_dir / "metrics.jsonl").is_file() and (cli.run_dir / "eval_history.jsonl").is_file()
    head = cli.model.scorer.lm_head.weight
    assert head.requires_grad == (cli.model.hparams.lm_head == "full")


@pytest.mark.parametrize("name", FAST_PROBES)
def test_representative_probes_train_one_step_on_cpu(name, tiny_model_dir, demo_dir, tmp_path):
    fast_dev_run(CONFIG_DIR / "probes" / f"{name}.yaml", tiny_model_dir, demo_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=rel)
def test_every_probe_and_experiment_trains_one_step_on_cpu(path, tiny_model_dir, demo_dir, tmp_path):
    fast_dev_run(path, tiny_model_dir, demo_dir, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_preset_trains_one_step(tiny_model_dir, demo_dir, tmp_path):
    fast_dev_run(CONFIG_DIR / "probes" / "t1_wsft_dcl.yaml", tiny_model_dir, demo_dir, tmp_path, hardware=GPU)


@pytest.mark.slow
def test_overfit_preset_drives_the_training_loss_down(tiny_model_dir, demo_dir, tmp_path):
    build_cli(
        [
            "fit",
            *config_args([BASE, TINY, DEMO_DATA, CPU, CONFIG_DIR / "debug" / "overfit.yaml"]),
            f"--model.model_name_or_path={tiny_model_dir}",
            f"--data.train_root={demo_dir / 'train'}",
            f"--data.eval_root={demo_dir / 'mrb'}",
            f"--runs_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    (metrics,) = tmp_path.glob("*/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) == 50  # one row per pass over the 4 batches
    assert losses[-1] < 0.6 * losses[0]  # tiny model, seed 0: 2.34 -> 1.09

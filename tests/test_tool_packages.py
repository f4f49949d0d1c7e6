"""The tools split into sub-packages (``datamodules.demo``, ``lightning_modules.tiny``) keep their
``python -m`` entry points, and each of their modules is of readable size and says what it is for."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("datamodules/demo", "lightning_modules/tiny", "experiments/sweep")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_small_and_opens_with_its_purpose(package: str) -> None:
    modules = sorted((REPO / package).glob("*.py"))
    assert {"__init__.py", "__main__.py"} <= {path.name for path in modules}
    for path in modules:
        source = path.read_text(encoding="utf-8")
        assert len(source.splitlines()) <= 500, f"{path}: over 500 lines"
        docstring = ast.get_docstring(ast.parse(source))
        assert docstring and docstring.splitlines()[0].strip(), f"{path}: no one-line purpose at the top"


def _run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "usage"),
    [
        ("datamodules.demo", "usage: python -m datamodules.demo [-h] --out OUT"),
        ("lightning_modules.tiny", "usage: python -m lightning_modules.tiny [-h] --out OUT"),
        ("experiments.sweep", "usage: python -m experiments.sweep [-h] [--count COUNT] [--local]"),
    ],
)
def test_python_dash_m_reaches_the_command_line(module: str, usage: str) -> None:
    result = _run_module(module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)


@pytest.mark.slow
def test_demo_command_in_a_fresh_process_builds_what_build_demo_builds(
    demo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    result = _run_module("datamodules.demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "digits-t2i" in result.stdout
    # Another process (other hash seeds, other imported modules) must give the same bytes.
    assert _hashes(out) == _hashes(demo_dir)

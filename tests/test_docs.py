"""Every reference to the project's docs names a file that exists, and every cited section heading exists.

Scanned: Python sources, YAML configs and sweeps, TOML, the Makefile and Markdown files of the
repository. A reference is ``docs/<name>.md``, optionally followed by section marks ``§N`` or
``§N-M`` (and further ``§N`` in the same parenthesis or clause), which must match a heading
``## N. ...`` of that file. Markdown links between the docs (``[x](formats.md)``) must resolve too.
The design notes the code used to cite by bare name (the names in ``_LEGACY``) live outside the
repository, so such a citation is an error: cite the matching page under ``docs/`` instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SKIPPED_DIRS = {"runs", "build", "dist", "node_modules", "__pycache__", "wandb"}
SCANNED_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".md"}

_REFERENCE = re.compile(r"docs/([\w./-]+?\.md)")
_SECTION = re.compile(r"§\s*(\d+)(?:\s*[-–]\s*(\d+))?")
LEGACY_EXAMPLE = "paper" + ".md"
_LEGACY = re.compile(r"(?<![\w/.-])(paper|design|peers)\.md\b")
_MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def scanned_files(root: Path) -> list[Path]:
    """Source, config and Markdown files under ``root``; hidden folders (.venv, .git) and outputs pruned."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix in SCANNED_SUFFIXES or name == "Makefile":
                found.append(path)
    return found


def section_numbers(markdown: str) -> set[int]:
    """Numbers of the numbered headings (``## 3. Title``) of a Markdown text."""
    return {int(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(\d+)\.\s", markdown, re.MULTILINE)}


def _cited_sections(segment: str) -> list[int]:
    numbers = []
    for match in _SECTION.finditer(segment):
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        numbers += list(range(first, last + 1))
    return numbers


def reference_problems(text: str, where: str, repo: Path, base: Path | None = None) -> list[str]:
    """``where:line: reason`` for every reference in ``text`` that names a missing file or section.

    Args:
        text: file content.
        where: the file's name in messages.
        repo: repository root that ``docs/...`` is relative to.
        base: folder that relative Markdown links resolve against (None: no link check).
    """
    problems = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        refs = list(_REFERENCE.finditer(line))
        for index, ref in enumerate(refs):
            target = repo / "docs" / ref.group(1)
            if not target.is_file():
                problems.append(f"{where}:{lineno}: docs/{ref.group(1)} does not exist")
                continue
            # Section marks belong to this reference up to the next reference or the end of its clause.
            end = refs[index + 1].start() if index + 1 < len(refs) else len(line)
            segment = re.split(r"[)\n]", line[ref.end() : end], maxsplit=1)[0]
            headings = section_numbers(target.read_text(encoding="utf-8"))
            for number in _cited_sections(segment):
                if number not in headings:
                    problems.append(f"{where}:{lineno}: docs/{ref.group(1)} has no section {number}")
        for legacy in _LEGACY.finditer(line):
            if not (repo / "docs" / f"{legacy.group(1)}.md").is_file():
                problems.append(
                    f"{where}:{lineno}: cites {legacy.group(0)}, which is not in the repository; "
                    "cite docs/science.md, docs/formats.md or docs/architecture.md"
                )
        if base is not None:
            for link in _MD_LINK.finditer(line):
                if "://" not in link.group(1) and not (base / link.group(1)).is_file():
                    problems.append(f"{where}:{lineno}: link to {link.group(1)}, which does not exist")
    return problems


def test_every_docs_reference_names_an_existing_file_and_section() -> None:
    files = scanned_files(REPO)
    assert any(path.name == "test_docs.py" for path in files)  # the scan reaches the tree
    problems = []
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this file's docstring shows the legacy names on purpose
        text = path.read_text(encoding="utf-8", errors="replace")
        base = path.parent if path.suffix == ".md" else None
        problems += reference_problems(text, str(path.relative_to(REPO)), REPO, base)
    assert not problems, "\n".join(problems)


def test_the_three_docs_exist_with_numbered_sections() -> None:
    for name, least in (("science.md", 6), ("formats.md", 6), ("architecture.md", 7)):
        headings = section_numbers((DOCS / name).read_text(encoding="utf-8"))
        assert set(range(1, least + 1)) <= headings, name
    assert "docs/" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/science.md §3", []),
        ("(docs/science.md §3-4, Table 1)", []),
        ("(docs/science.md §3 table; §4 Table 1 rows W_SFT)", []),
        ("see docs/nowhere.md", ["x:1: docs/nowhere.md does not exist"]),
        ("(docs/science.md §19)", ["x:1: docs/science.md has no section 19"]),
        ("(docs/science.md §7-11)", [f"x:1: docs/science.md has no section {n}" for n in (9, 10, 11)]),
        ("(docs/formats.md §2, docs/science.md §18)", ["x:1: docs/science.md has no section 18"]),
        # built from parts so that this file does not itself cite a note outside the repository
        ("the layout of " + LEGACY_EXAMPLE + " §1", ["x:1: cites " + LEGACY_EXAMPLE]),
        ("[formats](formats.md) and [gone](gone.md)", ["x:1: link to gone.md, which does not exist"]),
    ],
)
def test_the_checker_reports_missing_files_sections_and_legacy_names(text: str, expected: list[str]) -> None:
    problems = reference_problems(text, "x", REPO, base=DOCS)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users|tmp|private|mnt)/[\w.-]")


def absolute_path_problems(root: Path) -> list[str]:
    """``file:line`` of every machine folder (``/work/...``, ``/root/...``, ``/home/...``) in text under
    ``root``: committed results must rerun from any clone."""
    problems = []
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in (".md", ".json", ".jsonl", ".yaml", ".txt")
    ):
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _ABSOLUTE.search(line):
                problems.append(f"{path.relative_to(root)}:{lineno}: {_ABSOLUTE.search(line).group(0)}...")
                break
    return problems


def test_nothing_committed_under_docs_names_a_machine_folder(tmp_path) -> None:
    assert absolute_path_problems(DOCS) == []
    (tmp_path / "r.json").write_text('{"a": 1,\n "command": "cd /work/probe && x"}\n', encoding="utf-8")
    (tmp_path / "ok.md").write_text("python -m experiments.cli fit --data.eval_root=runs/real_v2/data/mrb\n")
    assert absolute_path_problems(tmp_path) == ["r.json:2: /work/p..."]


def test_committed_results_are_not_git_ignored() -> None:
    """Archived sweep runs (docs/results/*/runs/..., with their runs/val-step*/ TREC folders) must be
    committable: only the root runs/ folder is ignored."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [
        "docs/results/real_probe/runs/sweep/key/key-1/runs/val-step100/task.trec",
        "docs/results/real_probe/runs/sweep/key/done.json",
    ]
    for path in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
        assert ignored.returncode == 1, f"{path} is git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/demo/x"], cwd=REPO, check=False).returncode == 0


def readme_probe_headline() -> str:
    """The README's paragraph on what the real probe can say (from its first line to 'How it works')."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("What the real-model probe can say")
    return text[start : text.index("How it works", start)]


def test_the_readme_headline_says_what_the_committed_probe_report_computed() -> None:
    """The headline is rewritten from docs/results/real_probe/probe/report.json: the same number of
    finished runs, a failed validity gate named as such, and no claim called holding or contradicted
    (or 'reproduced') unless a comparison's computed verdict says so."""
    import json

    report = json.loads((DOCS / "results/real_probe/probe/report.json").read_text(encoding="utf-8"))
    headline = " ".join(readme_probe_headline().split())
    counted = re.search(r"(\d+) of (?:its )?(\d+) runs", headline)
    assert counted, "the headline must say how many of the planned runs the report covers"
    assert int(counted.group(1)) == len(report["runs"]), (counted.group(0), len(report["runs"]))
    failed = [g for g in report["gates"] if not g["passed"] and not g.get("informational")]
    if failed:
        assert "no claim is judged" in headline and "gate" in headline, headline
    verdicts = {c["verdict"] for c in report["comparisons"]}
    for word in ("holds", "contradicted", "reproduced"):
        if word not in verdicts and not (word == "reproduced" and "holds" in verdicts):
            assert word not in headline.replace("cannot be reproduced", ""), (word, headline)

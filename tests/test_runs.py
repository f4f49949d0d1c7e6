"""Run folders, atomic files, checkpoint IO and the W&B mode (experiments/runs.py), without a model.

Full disks and kills are simulated by monkeypatching the writes, never with real disks.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from experiments import runs
from experiments.runs import AtomicCheckpointIO, CheckpointError, RunError


def _enospc_after(half: int):
    """A ``write`` that stores ``half`` bytes, then fails like a full disk."""

    def write(handle, data: bytes):
        handle.write(data[:half])
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


# ---- run folders --------------------------------------------------------------------------------
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    folders: list[Path] = []

    def start() -> None:
        folders.append(runs.create_run_dir(tmp_path / "runs", "sft-n4-s0", stamp="20260101-000000"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(folders)) == 8 and all(f.is_dir() and f.parent == tmp_path / "runs" for f in folders)
    assert sorted(f.name for f in folders)[0] == "sft-n4-s0-20260101-000000"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x\\y", "/abs"])
def test_a_run_name_that_is_a_path_is_refused(tmp_path, name):
    with pytest.raises(RunError, match="run_name"):
        runs.create_run_dir(tmp_path / "runs", name)
    assert not any(p.name.startswith("x") for p in tmp_path.rglob("*"))


# ---- atomic appends -----------------------------------------------------------------------------
@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_run_per_shared_run_folder_its_ranks_join_it(tmp_path, no_launcher):
    """Issue 23 item 10: RERANK_LAB_RUN_DIR is shared by the ranks of one run, never by two runs."""
    shared = tmp_path / "shared" / "run"
    run_id = runs.claim_run_dir(shared)
    assert len(run_id) == 32 and (shared / "run_id").read_text() == run_id + "\n"
    (shared / "metrics.jsonl").write_text('{"step": 1}\n')
    no_launcher.setenv("NODE_RANK", "1")  # another node of the same run: joins, claims nothing
    assert runs.claim_run_dir(shared) == ""
    no_launcher.delenv("NODE_RANK")
    with pytest.raises(RunError, match=r"RERANK_LAB_RUN_DIR=.*already holds another run .* export a new"):
        runs.claim_run_dir(shared)  # a second run started with the same folder
    assert runs.claim_run_dir(shared, str(shared / "checkpoints" / "last.ckpt")) == run_id  # resuming it
    with pytest.raises(RunError, match="already holds another run"):
        runs.claim_run_dir(shared, str(tmp_path / "elsewhere.ckpt"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "config.yaml").write_text("model: {}\n")  # a run folder of an older version: no run_id
    with pytest.raises(RunError, match="already holds another run"):
        runs.claim_run_dir(used)
    assert (shared / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_full_disk_leaves_no_half_line_in_a_jsonl_record(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    runs.append_line(path, {"step": 1, "train/loss": 0.5})
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "write", half_then_full)
    with pytest.raises(OSError):
        runs.append_line(path, {"step": 2, "train/loss": 0.25})
    monkeypatch.undo()
    assert path.read_bytes() == before
    runs.append_line(path, {"step": 3})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


# ---- checkpoints --------------------------------------------------------------------------------
def test_checkpoints_are_written_next_to_the_target_even_with_tmpdir_elsewhere(tmp_path, monkeypatch):
    elsewhere = tmp_path / "local-tmp"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        runs.os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst))
    )
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, target)
    ((source, destination),) = renames
    assert Path(source).parent == target.parent and Path(destination) == target
    assert list(elsewhere.iterdir()) == []
    assert torch.load(target, weights_only=True)["step"] == 3


@pytest.mark.parametrize("failure", ["full disk", "kill"])
def test_a_failed_checkpoint_write_keeps_the_previous_file_and_leaves_no_partial_one(
    tmp_path, monkeypatch, failure
):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)
    good = target.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        if failure == "kill":
            raise KeyboardInterrupt  # what SIGINT / a dying process looks like from Python
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.torch, "save", broken_save)
    expected = KeyboardInterrupt if failure == "kill" else CheckpointError
    with pytest.raises(expected) as caught:
        io.save_checkpoint({"step": 2}, target)
    if failure == "full disk":
        assert "the disk is full" in str(caught.value) and str(target) in str(caught.value)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_new_checkpoint_on_a_full_disk_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(
        runs.torch, "save", lambda obj, handle, *a, **k: _enospc_after(10)(handle, b"x" * 100)
    )
    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "best-step2.ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resuming_from_a_damaged_checkpoint_names_the_last_good_one(tmp_path, damage):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, tmp_path / "best-step2.ckpt")
    io.save_checkpoint({"step": 4, "w": torch.zeros(1000)}, tmp_path / "last.ckpt")
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as caught:
        io.load_checkpoint(tmp_path / "last.ckpt")
    message = str(caught.value)
    assert "last.ckpt" in message and "truncated or corrupt" in message
    assert f"--ckpt_path={tmp_path / 'best-step2.ckpt'}" in message
    assert io.load_checkpoint(tmp_path / "best-step2.ckpt")["step"] == 2


def test_a_damaged_checkpoint_alone_says_none_is_left(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="no readable checkpoint is left"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")


# ---- W&B mode -----------------------------------------------------------------------------------
def test_a_wandb_key_without_network_goes_offline_at_once_with_one_line(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert runs.choose_wandb_mode() == "http://127.0.0.1:9 is not reachable"
    assert os.environ["WANDB_MODE"] == "offline"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logging offline" in err[0] and "wandb sync" in err[0]


def test_a_server_that_accepts_and_never_answers_is_not_reachable(monkeypatch):
    import socket
    import time

    with socket.socket() as server:  # accepts connections (the kernel's backlog), never replies
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        started = time.monotonic()
        assert runs.wandb_reachable(timeout=0.5) is False
        assert time.monotonic() - started < 3.0


def _http_server(body: bytes, content_type: str):
    """A local server answering every request with ``body`` (status 200), in a thread."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_portal_that_answers_everything_is_not_taken_for_wandb(monkeypatch, capsys):
    """A proxy or captive portal answers every HTTP request: the check needs a W&B GraphQL answer."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    portal = _http_server(b"<html><body>Sign in to the hotel wifi</body></html>", "text/html")
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{portal.server_port}")
        assert "answered, but not as a W&B server" in runs.choose_wandb_mode()
        assert os.environ["WANDB_MODE"] == "offline"
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    finally:
        portal.shutdown()
    graphql = _http_server(json.dumps({"data": {"viewer": None}}).encode(), "application/json")
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{graphql.server_port}")
        monkeypatch.delenv("WANDB_MODE", raising=False)
        assert runs.choose_wandb_mode() is None and "WANDB_MODE" not in os.environ
    finally:
        graphql.shutdown()


def test_a_chosen_wandb_mode_is_left_alone(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(runs, "wandb_server_problem", lambda timeout=3.0: pytest.fail("must not probe"))
    assert runs.choose_wandb_mode() is None and os.environ["WANDB_MODE"] == "disabled"
    assert capsys.readouterr().err == ""


def test_staged_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    from datamodules.files import staged_folder

    out = tmp_path / "out"
    with staged_folder(out) as staging:
        (staging / "a.txt").write_text("a", encoding="utf-8")
        assert not out.exists() and staging.parent == tmp_path and staging.name.startswith(".out.")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a.txt").read_text() == "a"

    failed = tmp_path / "failed"
    with pytest.raises(KeyboardInterrupt), staged_folder(failed) as staging:
        (staging / "half.txt").write_text("h", encoding="utf-8")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty) as staging:  # an empty folder is replaced
        (staging / "b.txt").write_text("b", encoding="utf-8")
    assert (empty / "b.txt").read_text() == "b"


def test_staged_folder_never_replaces_what_is_there(tmp_path: Path) -> None:
    from datamodules.files import staged_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "user.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="refusing to overwrite"), staged_folder(out):
        pass
    late = tmp_path / "late"
    with pytest.raises(FileExistsError, match="appeared while"), staged_folder(late) as staging:
        (staging / "new.txt").write_text("new", encoding="utf-8")
        late.mkdir()  # someone else writes the name meanwhile
        (late / "theirs.txt").write_text("theirs", encoding="utf-8")
    assert [p.name for p in late.iterdir()] == ["theirs.txt"] and (out / "user.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late", "out"]

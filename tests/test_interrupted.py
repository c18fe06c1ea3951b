"""A training run that is interrupted (SIGINT, SIGKILL, killed in the middle of writing its checkpoint) resumes
from its last finished epoch when the same command runs again, and ends with the weights of a run that was never
interrupted: bit for bit on the CPU with one thread, because ``last.pt`` holds every random stream of the run.

The runs are real processes. Most train the tiny detector of ``test_engine`` with ``fit`` (what every recipe trains
with, through ``engine.shipping.train_detector``), so a kill lands between steps of a run that lasts seconds; the
slow test interrupts ``compresskit train`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EPOCHS = 5

RUN_SCRIPT = """
import os, runpy
runpy.run_path(os.environ["COMPRESSKIT_TEST_WARNING_POLICY"])  # the suite's deprecation policy (conftest.py)
import signal, sys, time
from pathlib import Path
import torch
from compresskit.data import load_split
from compresskit.engine import TrainConfig, fit
from compresskit.models import build_detector
from compresskit.settings import seed_everything
sys.path.insert(0, {tests!r})
from test_engine import TINY_SPEC

data, out, workers, die_at_write = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
if die_at_write:  # SIGKILL this process in checkpoint write number die_at_write: written, not yet renamed
    real_replace, writes = os.replace, []

    def replace_or_die(source, target):
        if Path(target).name == "last.pt":
            writes.append(target)
            if len(writes) == die_at_write:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(source, target)

    os.replace = replace_or_die


def log(message):
    print(message, flush=True)
    time.sleep(0.2)  # paces the run, so the test's signal lands while it still trains


seed_everything(0)
model = build_detector(TINY_SPEC)
config = TrainConfig(epochs={epochs}, batch_size=2, warmup_iters=2, workers=workers)
fit(model, load_split("train", data), None, config, out, max_iters_per_epoch=3, progress=False, log=log)
torch.save(model.state_dict(), Path(out) / "final.pt")
"""


def _command(script: Path, data: Path, out: Path, workers: int, die_at_write: int = 0) -> list[str]:
    return [sys.executable, str(script), str(data), str(out), str(workers), str(die_at_write)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COMPRESSKIT_THREADS": "1"}


@pytest.fixture(scope="module")
def run_script(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("interrupted") / "train_tiny.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), epochs=EPOCHS))
    return script


def _run(command: list[str]) -> subprocess.CompletedProcess:
    finished = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def _uninterrupted(run_script: Path, data: Path, out: Path, workers: int) -> dict:
    _run(_command(run_script, data, out, workers))
    return torch.load(out / "final.pt", weights_only=True)


def _interrupt_after_first_checkpoint(command: list[str], checkpoint: Path, sig: int) -> subprocess.CompletedProcess:
    """Start ``command``, send ``sig`` as soon as ``checkpoint`` exists, and wait for the process to end."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before the test could interrupt it"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _assert_identical(resumed: dict, reference: dict) -> None:
    assert resumed.keys() == reference.keys()
    differing = [name for name in reference if not torch.equal(resumed[name], reference[name])]
    assert not differing, f"{len(differing)} tensors differ from the uninterrupted run, e.g. {differing[:3]}"


def _resumed_epoch(stdout: str) -> int:
    lines = [line for line in stdout.splitlines() if line.startswith("resumed from")]
    assert len(lines) == 1, stdout
    return int(lines[0].rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def reference_one_worker(run_script, tiny_embedded, tmp_path_factory) -> dict:
    """The final weights of an uninterrupted run whose loader augments in one worker process (as the recipes do)."""
    return _uninterrupted(run_script, tiny_embedded, tmp_path_factory.mktemp("reference1"), workers=1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(sig, run_script, tiny_embedded,
                                                                      reference_one_worker, tmp_path):
    command = _command(run_script, tiny_embedded, tmp_path, workers=1)
    killed = _interrupt_after_first_checkpoint(command, tmp_path / "last.pt", sig)
    assert killed.returncode != 0
    if sig == signal.SIGINT:  # fit turns the interrupt into one line saying how to resume
        assert "KeyboardInterrupt: rerun the same command to resume after epoch" in killed.stderr
    saved_epoch = torch.load(tmp_path / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= saved_epoch < EPOCHS
    resumed = _run(command)
    assert _resumed_epoch(resumed.stdout) == saved_epoch
    history = torch.load(tmp_path / "last.pt", weights_only=True)["state"]["history"]
    assert [entry["epoch"] for entry in history] == list(range(1, EPOCHS + 1))
    _assert_identical(torch.load(tmp_path / "final.pt", weights_only=True), reference_one_worker)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_killed_while_writing_its_checkpoint_keeps_the_previous_one_and_resumes(workers, run_script,
                                                                                     tiny_embedded, tmp_path,
                                                                                     tmp_path_factory):
    reference = _uninterrupted(run_script, tiny_embedded, tmp_path_factory.mktemp("reference"), workers)
    out = tmp_path / "run"
    killed = subprocess.run(_command(run_script, tiny_embedded, out, workers, die_at_write=3), env=_env(),
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL
    # Epoch 3's checkpoint was written in full beside last.pt but never renamed over it: epoch 2's stays loadable.
    assert len(list(out.glob(".last.pt.*.tmp"))) == 1
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 2
    resumed = _run(_command(run_script, tiny_embedded, out, workers))
    assert _resumed_epoch(resumed.stdout) == 2
    assert not list(out.glob(".last.pt.*.tmp"))  # the unfinished write is cleared away
    _assert_identical(torch.load(out / "final.pt", weights_only=True), reference)


# Enough one-step epochs that the interrupt, sent once the first checkpoint exists, lands while training still runs
# on a loaded machine (with 3, a busy worker could finish training first and be interrupted while shipping).
TRAIN_EPOCHS = 6


def _train_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "compresskit", "train", "--preset", "student", "--data", str(data), "--out",
            str(out), "--epochs", str(TRAIN_EPOCHS), "--max-iters", "1"]


@pytest.mark.slow
def test_compresskit_train_interrupted_says_how_to_resume_and_resumes_to_the_same_checkpoint(tiny_embedded,
                                                                                            tmp_path):
    reference = tmp_path / "reference"
    _run(_train_command(tiny_embedded, reference))
    out = tmp_path / "interrupted"
    killed = _interrupt_after_first_checkpoint(_train_command(tiny_embedded, out), out / "student-run" / "last.pt",
                                               signal.SIGINT)
    assert killed.returncode == 130, killed.stderr[-3000:]
    assert "KeyboardInterrupt" not in killed.stderr  # no traceback of the interrupted command
    last_line = killed.stderr.replace("\r", "\n").strip().splitlines()[-1]  # past the progress bar's \r
    # (an unfinished progress bar may share the line: tqdm ends it with no newline)
    assert "compresskit: interrupted; rerun the same command to resume after epoch " in last_line, last_line
    resumed = _run(_train_command(tiny_embedded, out))
    assert "resumed from" in resumed.stdout
    meta = json.loads((out / "student.json").read_text())
    assert [entry["epoch"] for entry in meta["history"]] == list(range(1, TRAIN_EPOCHS + 1))
    assert len(meta["resumed_after_epochs"]) == 1 and 1 <= meta["resumed_after_epochs"][0] < TRAIN_EPOCHS
    assert not (out / "student-run" / "last.pt").exists()  # shipped: the resume checkpoint is spent
    # The shipped weights (fp16, the same rounding in both runs) match those of the uninterrupted run.
    shipped, expected = (torch.load(folder / "student.pt", weights_only=True) for folder in (out, reference))
    weights = next(key for key in expected if isinstance(expected[key], dict) and expected[key]
                   and all(torch.is_tensor(value) for value in expected[key].values()))
    _assert_identical(shipped[weights], expected[weights])

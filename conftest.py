"""Test-run environment for unit tests and notebooks alike (nbval's kernels inherit this process's environment).

Results go to a temporary reports folder, so a test run never writes into the working tree, and the lessons find
the small real COCO fixture, when it is available, as a local COCO install. The lessons' kernels start with the
suite's warning policy (pyproject's ``filterwarnings``: deprecations from the taught libraries are errors), so a
lesson's own call of a deprecated API fails its notebook test as it would a unit test; a script a test runs in a
fresh interpreter runs the same file first (``COMPRESSKIT_TEST_WARNING_POLICY``). The kernels and the commands
run in subprocesses keep their scratch files (fine-tune checkpoints, exports: hundreds of MB on the coco profile)
in the run's folder too, which a passing run removes at the end; a failing run keeps it for a look and says where.
A run of several files goes to two pytest-xdist workers that split the cores between them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# pytest-xdist names each worker process in this variable. The controller prepares the run's environment once;
# the workers it starts inherit it (one reports folder, one gzip-size cache, one warning policy for every kernel).
_XDIST_WORKER = "PYTEST_XDIST_WORKER"
_RUN_DIR = None if os.environ.get(_XDIST_WORKER) else Path(tempfile.mkdtemp(prefix="compresskit-tests-"))


def pytest_xdist_auto_num_workers(config):
    """Workers for ``-n auto`` (pyproject's addopts): two for a run of several files, none for a run of one file (a
    lesson run on its own keeps every core, in this process, as a learner runs it)."""
    paths = [Path(arg.split("::")[0]) for arg in config.args]
    if len(paths) == 1 and paths[0].is_file():
        return 0
    return 2 if _usable_cores() >= 2 else 0


def _usable_cores() -> int:
    # The cores this process may run on (a container or `taskset` can allow fewer than the machine has).
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_configure(config):
    if _RUN_DIR is None:
        return
    workers = getattr(config.option, "numprocesses", None) or 0
    if workers > 1:
        # Split the cores between the workers: two processes each running two threads on two cores would fight
        # for them (and time their latencies while fighting). The records say how many threads timed them.
        threads = str(max(1, _usable_cores() // workers))
        os.environ.setdefault("COMPRESSKIT_THREADS", threads)
        os.environ.setdefault("OMP_NUM_THREADS", os.environ["COMPRESSKIT_THREADS"])  # torch's default in each worker
    os.environ.setdefault("COMPRESSKIT_REPORTS", str(_RUN_DIR / "reports"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people; logs stay readable
    # The lessons' speed asserts ask one-sided questions of a paired interval (is int8 faster at all? do zeros
    # buy no speed?), which 10 interleaved pairs answer: fewer pairs widen the interval rather than move it.
    # Reported numbers (the committed outputs, `compresskit reproduce`) keep the default 30.
    os.environ.setdefault("COMPRESSKIT_LATENCY_RUNS", "10")
    scratch = _RUN_DIR / "tmp"
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)  # for child processes; this process resolved its temp folder already
    # Every kernel and command of the run shares the gzip sizes it measured (the fp32 teacher is in every lesson);
    # unless you name your own file, it starts empty with each run, so no run's timing leans on an earlier one.
    os.environ.setdefault("COMPRESSKIT_SIZE_CACHE", str(_RUN_DIR / "gzip-sizes.txt"))
    policy = write_warning_policy(config.getini("filterwarnings"), _RUN_DIR / "ipython")
    os.environ["IPYTHONDIR"] = str(_RUN_DIR / "ipython")  # every kernel runs the policy file as it starts
    # A script a test runs in a fresh interpreter (the DDP workers) starts with `runpy.run_path` of the same file.
    os.environ["COMPRESSKIT_TEST_WARNING_POLICY"] = str(policy)
    fixture = coco_tiny_path()
    if fixture is not None:  # tests serve it over HTTP; the lessons read it as a local COCO install
        os.environ.setdefault("COMPRESSKIT_COCO_TINY", str(fixture))
        os.environ.setdefault("COMPRESSKIT_COCO_ROOT", str(fixture))


def pytest_sessionfinish(session, exitstatus):
    if _RUN_DIR is None:  # a worker: the controller keeps or removes the run's folder
        return
    if exitstatus == 0:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)
    else:
        print(f"\nthis run's reports and scratch files are kept in {_RUN_DIR}")


def pytest_collection_modifyitems(config, items):
    # Every notebook run is an end-to-end check: `pytest -m "not slow"` is the quick loop without them.
    import pytest

    for item in items:
        if item.fspath.ext == ".ipynb":
            item.add_marker(pytest.mark.slow)
    # The notebooks first (a stable sort: each keeps its cells' order): they are the longest files, and the workers
    # take files in this order, so the many short test files fill the gaps at the end instead of one lesson
    # running alone while the other worker waits.
    items.sort(key=lambda item: item.fspath.ext != ".ipynb")


def write_warning_policy(filters: list[str], ipython_dir: Path) -> Path:
    """Write a Python file installing ``filters`` (pytest's ``action:message:category:module`` syntax, module a
    regular expression) as the startup file of the IPython profile in ``ipython_dir``, so every kernel started with
    ``IPYTHONDIR=ipython_dir`` runs it, and return the file."""
    lines = ["import warnings"]
    for entry in filters:
        action, message, category, module = (entry.split(":", 4) + [""] * 4)[:4]
        lines.append(f"warnings.filterwarnings({action!r}, message={message!r}, category={category or 'Warning'}, "
                     f"module={module!r})")
    policy = ipython_dir / "profile_default" / "startup" / "00-warning-policy.py"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text("\n".join(lines) + "\n")
    return policy


def coco_tiny_path() -> Path | None:
    """16 real COCO train2017 images with their annotations: ``COMPRESSKIT_COCO_TINY``, or ``shared/coco-tiny``
    beside the checkout when present. Never copied into the repository."""
    env = os.environ.get("COMPRESSKIT_COCO_TINY")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "shared" / "coco-tiny"
    return path if (path / "annotations" / "instances_train2017.json").exists() else None

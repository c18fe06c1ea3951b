"""Test-run environment for unit tests and notebooks alike (nbval's kernels inherit this process's environment).

Results go to a temporary reports folder, so a test run never writes into the working tree, and the lessons find
the small real COCO fixture, when it is available, as a local COCO install. The lessons' kernels start with the
suite's warning policy (pyproject's ``filterwarnings``: deprecations from the taught libraries are errors), so a
lesson's own call of a deprecated API fails its notebook test as it would a unit test; a script a test runs in a
fresh interpreter runs the same file first (``COMPRESSKIT_TEST_WARNING_POLICY``). The kernels and the commands
run in subprocesses keep their scratch files (fine-tune checkpoints, exports: hundreds of MB on the coco profile)
in the run's folder too, which a passing run removes at the end; a failing run keeps it for a look and says where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_RUN_DIR = Path(tempfile.mkdtemp(prefix="compresskit-tests-"))
WARNING_POLICY_ENV = "COMPRESSKIT_TEST_WARNING_POLICY"
POLICY_FILE = "00-warning-policy.py"


def pytest_configure(config):
    os.environ.setdefault("COMPRESSKIT_REPORTS", str(_RUN_DIR / "reports"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people; logs stay readable
    # The lessons' speed asserts ask one-sided questions of a paired interval (is int8 faster at all? do zeros
    # buy no speed?), which 10 interleaved pairs answer; fewer pairs only widen the interval. Reported numbers
    # (the committed outputs, `compresskit reproduce`) keep the default 30.
    os.environ.setdefault("COMPRESSKIT_LATENCY_RUNS", "10")
    scratch = _RUN_DIR / "tmp"
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)  # for child processes; this process resolved its temp folder already
    # Every kernel and command of the run shares the gzip sizes it measured (the fp32 teacher is in every lesson);
    # unless you name your own file, it starts empty with each run, so no run's timing leans on an earlier one.
    os.environ.setdefault("COMPRESSKIT_SIZE_CACHE", str(_RUN_DIR / "gzip-sizes.txt"))
    os.environ["IPYTHONDIR"] = str(kernel_profile(config.getini("filterwarnings"), _RUN_DIR / "ipython"))
    # A script a test runs in a fresh interpreter (the DDP workers) starts with `runpy.run_path` of this file.
    os.environ[WARNING_POLICY_ENV] = str(_RUN_DIR / "ipython" / "profile_default" / "startup" / POLICY_FILE)
    fixture = coco_tiny_path()
    if fixture is not None:  # tests serve it over HTTP; the lessons read it as a local COCO install
        os.environ.setdefault("COMPRESSKIT_COCO_TINY", str(fixture))
        os.environ.setdefault("COMPRESSKIT_COCO_ROOT", str(fixture))


def pytest_sessionfinish(session, exitstatus):
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


def kernel_profile(filters: list[str], folder: Path) -> Path:
    """An IPython profile whose startup file installs ``filters`` (pytest's ``action:message:category:module``
    syntax, module a regular expression) in every kernel started with ``IPYTHONDIR=folder``."""
    lines = ["import warnings"]
    for entry in filters:
        action, message, category, module = (entry.split(":", 4) + [""] * 4)[:4]
        lines.append(f"warnings.filterwarnings({action!r}, message={message!r}, category={category or 'Warning'}, "
                     f"module={module!r})")
    startup = folder / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / POLICY_FILE).write_text("\n".join(lines) + "\n")
    return folder


def coco_tiny_path() -> Path | None:
    """16 real COCO train2017 images with their annotations: ``COMPRESSKIT_COCO_TINY``, or ``shared/coco-tiny``
    beside the checkout when present. Never copied into the repository."""
    env = os.environ.get("COMPRESSKIT_COCO_TINY")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "shared" / "coco-tiny"
    return path if (path / "annotations" / "instances_train2017.json").exists() else None

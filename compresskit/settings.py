"""Where the kit reads and writes, chosen by environment variables with offline-friendly defaults.

`COMPRESSKIT_PROFILE` (contract) picks the data profile: ``embedded`` (default, offline) or ``coco``.
`COMPRESSKIT_REPORTS` (contract) is the folder lessons and commands write ``results.json`` into.
`COMPRESSKIT_DATA` is where generated and downloaded datasets are cached.
The coco profile also reads `COMPRESSKIT_COCO_ROOT` (a local COCO install), `COMPRESSKIT_COCO_RECIPES` (your own
subset recipes) and `COMPRESSKIT_COCO_IMAGE_SIZE` (the detectors' input size); `COMPRESSKIT_LATENCY_RUNS` sets
the timed runs of every study that is not given its own; `COMPRESSKIT_THREADS` the CPU threads torch and ONNX
Runtime compute and time with when a call names none (2 otherwise); `COMPRESSKIT_SIZE_CACHE` names a file where
processes share the gzip sizes they measured (each distinct artifact is then compressed once across lessons).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from compresskit.errors import ConfigError

PROFILES = ("embedded", "coco")
PROFILE_ENV = "COMPRESSKIT_PROFILE"
REPORTS_ENV = "COMPRESSKIT_REPORTS"
DATA_ENV = "COMPRESSKIT_DATA"
COCO_ROOT_ENV = "COMPRESSKIT_COCO_ROOT"
COCO_RECIPES_ENV = "COMPRESSKIT_COCO_RECIPES"
LATENCY_RUNS_ENV = "COMPRESSKIT_LATENCY_RUNS"
THREADS_ENV = "COMPRESSKIT_THREADS"
COCO_IMAGE_SIZE_ENV = "COMPRESSKIT_COCO_IMAGE_SIZE"
SIZE_CACHE_ENV = "COMPRESSKIT_SIZE_CACHE"
# The fewest optimiser steps `compresskit train --data` runs when no --epochs is given: a recipe's epochs are sized
# for the embedded dataset's 2,000 images, and on a small export of your own they would be a few dozen steps.
# The same budget as `compresskit study`'s default fine-tune, so the two are trained alike.
MIN_OWN_DATA_STEPS = 200


def profile() -> str:
    """The active data profile, from ``COMPRESSKIT_PROFILE`` (default ``embedded``; case and spaces ignored).

    Returns:
        One of :data:`PROFILES`.
    Raises:
        ConfigError: the variable names no profile.
    """
    name = os.environ.get(PROFILE_ENV, "embedded").strip().lower() or "embedded"
    if name not in PROFILES:
        raise ConfigError(f"{PROFILE_ENV}={name!r} is not a profile; set it to one of {', '.join(PROFILES)} "
                          f"(or unset it for embedded)")
    return name


def repository_root() -> Path | None:
    """The checkout the package runs from (the folder holding ``pyproject.toml`` beside ``compresskit/``), or None
    for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def shown_path(path: Path | str) -> str:
    """``path`` as a learner should read it: relative to the checkout when inside it (``runs/results.json``),
    under ``~`` when inside the home folder (``~/.cache/torch/hub/...``: the same on every machine), else as
    given."""
    resolved, root, home = Path(path).resolve(), repository_root(), Path.home().resolve()
    if root is not None and root in resolved.parents:
        return str(resolved.relative_to(root))
    if home in resolved.parents:
        return str(Path("~") / resolved.relative_to(home))
    return str(path)


def reports_dir() -> Path:
    """Folder for results records: ``COMPRESSKIT_REPORTS``, else ``runs/`` at the top of the checkout (so a lesson
    run from ``notebooks/`` writes beside the others, git-ignored), else ``runs/`` under the current directory."""
    value = os.environ.get(REPORTS_ENV)
    if value:
        return Path(value).expanduser()
    root = repository_root()
    return (root if root is not None else Path.cwd()) / "runs"


# Kept alive until the process ends: dropping a TemporaryDirectory would remove its folder at once.
_SCRATCH_DIRS: list[tempfile.TemporaryDirectory] = []


def scratch_dir(name: str) -> Path:
    """A new empty folder for working files that nobody keeps (a live fine-tune's checkpoints, exports), removed
    when this Python process ends: a lesson's kernel cleans up after itself, and never writes into the checkout.

    Args:
        name: what it is for; the folder is named ``compresskit-<name>-<random>`` in the system's temp folder.
    """
    folder = tempfile.TemporaryDirectory(prefix=f"compresskit-{name}-")
    _SCRATCH_DIRS.append(folder)
    return Path(folder.name)


def data_root() -> Path:
    """Cache folder for datasets: ``COMPRESSKIT_DATA`` or ``~/.cache/compresskit/data``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compresskit" / "data"
    return Path(os.environ.get(DATA_ENV, default)).expanduser()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so one seed gives the same data, weights and mAP on CPU.

    Args:
        seed: any non-negative int (NumPy gets it modulo 2**32).
    """
    # Imported here, not at the top: the CLI reads the settings before it knows whether it needs torch.
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def coco_root() -> Path | None:
    """A local COCO 2017 install (``annotations/`` + ``train2017/``/``val2017/``) from ``COMPRESSKIT_COCO_ROOT``,
    or None. Subsets are then copied from it instead of downloaded."""
    value = os.environ.get(COCO_ROOT_ENV)
    return Path(value).expanduser() if value else None


def _positive_int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} must be a positive whole number (or unset it for the default)")
    return int(value)


def coco_recipes_dir() -> Path | None:
    """A folder of subset recipes replacing the pinned ones of the coco profile (``COMPRESSKIT_COCO_RECIPES``):
    ``train2017.json`` and ``val2017.json`` in the format of ``data/recipes/``; None for the pinned recipes."""
    value = os.environ.get(COCO_RECIPES_ENV)
    return Path(value).expanduser() if value else None


def latency_runs(default: int = 30) -> int:
    """Timed runs (pairs, for a paired comparison) per record: ``COMPRESSKIT_LATENCY_RUNS``, else ``default``.
    Fewer than 30 gives a quick look, not a reported number (docs/method.md, "Measurement")."""
    return _positive_int_env(LATENCY_RUNS_ENV) or default


def threads(given: int | None = None) -> int:
    """CPU threads for torch and ONNX Runtime: ``given`` when a call names a count, else ``COMPRESSKIT_THREADS``,
    else 2.

    Two is the kit's reference (a two-core laptop or CI machine); every latency record says how many threads it
    was timed with, so results measured with another count are never mistaken for the reference's.
    """
    if given is not None:
        return given
    return _positive_int_env(THREADS_ENV) or 2


def size_cache() -> Path | None:
    """The file of gzip sizes shared between processes (``COMPRESSKIT_SIZE_CACHE``), or None: each process then
    compresses each distinct artifact once on its own."""
    value = os.environ.get(SIZE_CACHE_ENV)
    return Path(value).expanduser() if value else None


def coco_image_size() -> int | None:
    """Input size of the coco profile's detectors (their shorter image side; the longer is capped at 4/3 of it)
    from ``COMPRESSKIT_COCO_IMAGE_SIZE``; None keeps torchvision's own (800 for RetinaNet, 320 for SSDlite).
    Smaller inputs trade small-object accuracy for CPU time."""
    return _positive_int_env(COCO_IMAGE_SIZE_ENV)

# Library log records that carry nothing a learner or a user can act on. They are logging records with a timestamp and
# a process id, not warnings the test policy could catch, so they are dropped at their loggers; every other record of
# those loggers still passes. (logger name, a fragment of the one message dropped):
# - torchao registers an Enum in torch's pytree registry that torch now handles natively;
# - torch.compile's C++ builder looks for CUDA on a machine that has a CUDA toolkit but no GPU (the kit is CPU-only).
QUIET_NOTICES = (("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
                 ("torch.utils.cpp_extension", "No CUDA runtime is found"))


class _DropNotice:
    """A logging filter that drops the records whose message contains ``fragment``."""

    def __init__(self, fragment: str) -> None:
        self.fragment = fragment

    def filter(self, record) -> bool:
        return self.fragment not in record.getMessage()


def quiet_library_notices() -> None:
    """Drop the known library log records in :data:`QUIET_NOTICES` (idempotent)."""
    import logging

    for name, fragment in QUIET_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropNotice(fragment))

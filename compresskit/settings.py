"""Where the kit reads and writes, chosen by environment variables with offline-friendly defaults.

`COMPRESSKIT_PROFILE` (contract) picks the data profile: ``embedded`` (default, offline) or ``coco``.
`COMPRESSKIT_REPORTS` (contract) is the folder lessons and commands write ``results.json`` into.
`COMPRESSKIT_DATA` is where generated and downloaded datasets are cached.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

PROFILES = ("embedded", "coco")
PROFILE_ENV = "COMPRESSKIT_PROFILE"
REPORTS_ENV = "COMPRESSKIT_REPORTS"
DATA_ENV = "COMPRESSKIT_DATA"


def profile() -> str:
    """The active data profile, from ``COMPRESSKIT_PROFILE`` (default ``embedded``)."""
    name = os.environ.get(PROFILE_ENV, "embedded").strip().lower() or "embedded"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; use one of {', '.join(PROFILES)}")
    return name


def reports_dir() -> Path:
    """Folder for results records: ``COMPRESSKIT_REPORTS`` or ``runs/`` under the current directory."""
    return Path(os.environ.get(REPORTS_ENV, "runs")).expanduser()


def data_root() -> Path:
    """Cache folder for datasets: ``COMPRESSKIT_DATA`` or ``~/.cache/compresskit/data``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compresskit" / "data"
    return Path(os.environ.get(DATA_ENV, default)).expanduser()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so one seed gives the same data, weights and mAP on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def coco_root() -> Path | None:
    """A local COCO 2017 install (``annotations/`` + ``train2017/``/``val2017/``) from ``COMPRESSKIT_COCO_ROOT``,
    or None. Subsets are then copied from it instead of downloaded."""
    value = os.environ.get("COMPRESSKIT_COCO_ROOT")
    return Path(value).expanduser() if value else None

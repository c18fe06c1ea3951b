"""Argument types and defaults of the ``compresskit`` command: each bad value becomes argparse's one-line error
(exit 2) at the boundary, before any work starts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterator

PRESETS = ("teacher", "student")
CHECKPOINTS_OUT = Path("runs/checkpoints")
REPRODUCE_OUT = Path("runs/reproduce")
# Options that take a path: a missing or unwritable one is the user's to fix, so main prints one line for it.
PATH_OPTIONS = ("out", "data", "checkpoint", "json", "reports", "annotations", "images", "coco_root")
# Errors about a path; main reports them only when the path is (inside) one the user gave, else it is a bug.
PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


# --------------------------------------------------------------------------------------------- argument types
def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")  # epochs, iterations, runs, images
non_negative_int = _int_at_least(0, "an integer >= 0")  # seeds


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (temperatures, loss weights, width multipliers)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a fraction strictly between 0 and 1 (the share of a dataset that goes to val)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {text!r}")
    return value


def pruning_ratio(text: str) -> float:
    """argparse type: a fraction of channels to remove, in [0, 1) (1 would remove every channel)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # fails the range check below, with the one message
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a pruning ratio is the fraction of channels removed, a number in "
                                         f"[0, 1); got {text!r}")
    return value


def part_ratio(text: str) -> tuple[str, float]:
    """argparse type: ``PART=RATIO`` with PART one of the embedded presets' parts and RATIO in [0, 1)."""
    part, sep, value = text.partition("=")
    if not sep or not part or not value:
        raise argparse.ArgumentTypeError(f"expected PART=RATIO, e.g. layer4=0.6, got {text!r}")
    # Imported here (torch, torch-pruning): only a command that prunes pays for it.
    from compresskit.prune.structured import EMBEDDED_PARTS

    if part not in EMBEDDED_PARTS:
        raise argparse.ArgumentTypeError(f"unknown part {part!r}; the parts are {', '.join(EMBEDDED_PARTS)}")
    return part, pruning_ratio(value)


KD_METHODS = ("logit", "feature", "both", "boxes")


def kd_method(text: str) -> str:
    """argparse type: a distillation method (``prune --kd METHOD``; ``--kd`` alone leaves the choice to the kit)."""
    if text not in KD_METHODS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(KD_METHODS)})")
    return text


def file_stem(text: str) -> str:
    """argparse type: a bare file name without suffix (no folder: that is what ``--out`` is for)."""
    if Path(text).name != text or text in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"expected a file name without folders, got {text!r}; use --out for those")
    return text


class LazyChoices:
    """argparse ``choices`` read from ``module.attribute`` on first use, so building the parser (and ``--help``)
    does not import the module. argparse only iterates it to check a value or to print that command's help.

    The attribute is a collection of names, or a function returning one (read again at each use, so a registry
    that grows after the parser was built, e.g. :func:`compresskit.runtimes.runtime_names`, is seen)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def _values(self) -> tuple[str, ...]:
        import importlib

        values = getattr(importlib.import_module(self.module), self.attribute)
        return tuple(values() if callable(values) else values)

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

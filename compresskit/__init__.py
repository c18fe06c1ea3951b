"""compresskit: model compression for object detection, measured.

Lessons start with ``import compresskit as ck`` and ``ck.bootstrap()``; everything else is reached from here
(``ck.data``, ``ck.models``, ``ck.engine``, ``ck.measure``, ``ck.report``, ``ck.prune``, ``ck.harness``, ...).

The submodules load on first access, not on ``import compresskit``: most of them pull in torch, torchvision and
ONNX, which take seconds to import, and the ``compresskit`` command should answer ``--help`` or a bad argument at
once.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

__version__ = "0.1.0"

SUBMODULES = ("data", "models", "runtimes", "engine", "measure", "report", "prune", "quantize", "distill", "backbones",
              "harness", "settings", "errors")

__all__ = ["__version__", "bootstrap", *SUBMODULES]

if TYPE_CHECKING:  # static analysers and IDEs see the submodules; at run time __getattr__ loads them
    from compresskit import (backbones, data, distill, engine, errors, harness, measure, models,  # noqa: F401
                             prune, quantize, report, runtimes, settings)


def __getattr__(name: str) -> ModuleType:
    # Only called when normal lookup fails; import_module also binds the submodule on the package, so each
    # submodule goes through here once.
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public names only (tab completion in a notebook), submodules included whether loaded or not.
    return sorted({*__all__, "SUBMODULES"})


def bootstrap(seed: int = 0, threads: int | None = None, verbose: bool = True) -> dict:
    """Seed everything, fix torch's thread count, and print what a result depends on.

    Args:
        seed: the one seed of the run (data order, initial weights, augmentation).
        threads: torch intra-op threads (default: ``COMPRESSKIT_THREADS``, else 2); latencies are recorded
            with this count.
        verbose: print the profile, seed, versions and CPU.
    Returns:
        The environment stamp recorded with every result (versions, CPU model, ISA flags, threads).
    """
    import torch

    from compresskit import measure, settings

    _inline_figures()
    settings.quiet_library_notices()  # lessons import torchao themselves, too
    settings.seed_everything(seed)
    threads = settings.threads(threads)
    torch.set_num_threads(threads)
    stamp = measure.environment_stamp()
    if verbose:
        versions = ", ".join(f"{k} {stamp[k]}" for k in ("torch", "torchvision", "torchao", "onnxruntime",
                                                          "openvino", "nncf", "torch_pruning"))
        print(f"compresskit {__version__} | profile {settings.profile()} | seed {seed} | threads {threads}")
        print(versions)
        print(f"CPU: {stamp['cpu']} | ISA: {' '.join(stamp['isa'])}")
    return stamp


def _inline_figures() -> None:
    # The kit returns matplotlib Figures; in a notebook, the inline backend makes them display as images.
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")

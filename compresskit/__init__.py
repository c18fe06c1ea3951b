"""compresskit: model compression for object detection, measured.

Lessons start with ``import compresskit as ck`` and ``ck.bootstrap()``; everything else is reached from here
(``ck.data``, ``ck.models``, ``ck.engine``, ``ck.measure``, ``ck.report``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

from compresskit import baselines, bench, data, engine, measure, models, prune, report, settings, studies, viz  # noqa: E402,I001


def bootstrap(seed: int = 0, threads: int = 2, verbose: bool = True) -> dict:
    """Seed everything, fix torch's thread count, and print what a result depends on.

    Args:
        seed: the one seed of the run (data order, initial weights, augmentation).
        threads: torch intra-op threads; latencies are recorded with this count.
    Returns:
        The environment stamp recorded with every result (versions, CPU model, ISA flags, threads).
    """
    import torch

    _inline_figures()
    settings.seed_everything(seed)
    torch.set_num_threads(threads)
    stamp = measure.environment_stamp()
    if verbose:
        versions = ", ".join(f"{k} {stamp[k]}" for k in ("torch", "torchvision", "torchao", "onnxruntime",
                                                          "torch_pruning"))
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

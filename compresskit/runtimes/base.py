"""What a runtime is to the kit: the thing that runs a detector's core, ``batch tensor -> tuple of tensors``.

A :class:`Runtime` builds the core it runs (from the detector, or from a file it ships), says what a user ships
for it (what :func:`~compresskit.measure.serialized_size` measures) and what makes two evaluations on it the same
(so a run can evaluate an identical variant once). Everything else, from pre/post-processing to the evaluator, is
shared: :class:`~compresskit.models.core.EndToEndDetector` puts any core between torchvision's transform and
post-processing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import nn

from compresskit.errors import ConfigError

# A core: normalised, padded batch (N, 3, H, W) -> the head tensors (see ExportableCore.output_names).
Core = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class Runtime(ABC):
    """One way to run a detector's core. Subclasses set ``name`` (the ``runtime`` of a results record) and
    implement :meth:`version` and :meth:`core_for`; the other hooks have defaults that fit a torch core."""

    name: str = ""

    @abstractmethod
    def version(self) -> str:
        """Version of the library that runs the core (recorded with the environment of a run)."""

    @abstractmethod
    def core_for(self, detector: nn.Module, *, threads: int, artifact_dir: Path, record_id: str) -> Core:
        """The core of ``detector`` as this runtime runs it, with ``threads`` intra-op threads where the runtime
        fixes its own (an ONNX Runtime session); a file it needs (an exported ONNX core) is written into
        ``artifact_dir``, named after ``record_id``. Does not change ``detector``."""

    def core_from_artifact(self, artifact: Any, *, threads: int) -> Core:
        """A core from a file this runtime ships (e.g. an ``.onnx`` file); runtimes without one refuse."""
        raise ConfigError(f"runtime {self.name!r} builds its cores from a detector; it reads no artifact")

    def core_threads(self, core: Core) -> int | None:
        """Intra-op threads ``core`` runs with when it fixes its own; None when it uses torch's, which
        :func:`~compresskit.measure.measure_latency` sets for the measurement."""
        return None

    def artifact(self, detector: nn.Module, core: Core) -> Any:
        """What a user ships to run ``core`` (measured for size): the detector's state_dict by default."""
        return detector

    def evaluation_identity(self, detector: nn.Module, core: Core) -> Hashable | None:
        """What, besides ``detector``'s weights and settings, decides what ``core`` computes, so two evaluations
        with equal identities give the same detections; None when ``core`` cannot be identified (it is then
        always evaluated)."""
        return None

    def __repr__(self) -> str:
        return f"<runtime {self.name!r}>"

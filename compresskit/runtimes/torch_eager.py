"""``torch-eager``: the detector's own modules, run by PyTorch as they are (the reference of every comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Hashable

import torch
from torch import nn

from compresskit.models.core import ExportableCore
from compresskit.runtimes.base import Core, Runtime


class TorchEager(Runtime):
    """Runs :class:`~compresskit.models.core.ExportableCore` of the detector; ships its state_dict."""

    name = "torch-eager"

    def version(self) -> str:
        return torch.__version__

    def core_for(self, detector: nn.Module, *, threads: int, artifact_dir: Path, record_id: str) -> Core:
        return ExportableCore(detector)

    def evaluation_identity(self, detector: nn.Module, core: Core) -> Hashable | None:
        # Only the detector's own core is known to compute what its weights say; any other callable (a
        # half-precision copy, a wrapper) may compute something else.
        own = isinstance(core, ExportableCore) and core.backbone is detector.backbone and core.head is detector.head
        return "own core" if own else None

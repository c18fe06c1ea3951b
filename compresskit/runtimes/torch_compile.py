"""``torch-compile``: a core lowered by ``torch.compile`` (inductor), e.g. the fp32 core or a PT2E int8 graph."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from compresskit.models.core import ExportableCore
from compresskit.runtimes.base import Core, Runtime


class SingleImageCore:
    """Runs a core one image at a time (a graph compiled for batch 1 then never recompiles for other batch
    sizes), concatenating the outputs."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [self.core(image.unsqueeze(0)) for image in batch]
        return tuple(torch.cat(parts, dim=0) for parts in zip(*outputs))


class TorchCompile(Runtime):
    """Compiles a copy of the detector's fp32 core (static shapes, one image per call); ships the state_dict
    unless the record names its own artifact (a ``torch.export`` file of an int8 graph).

    A compiled graph is not identified for reuse: what it computes depends on the compiler's choices, not only on
    the weights."""

    name = "torch-compile"

    def version(self) -> str:
        return torch.__version__

    def core_for(self, detector: nn.Module, *, threads: int, artifact_dir: Path, record_id: str) -> Core:
        # A copy: compiling must not touch the detector that other records of the study measure in eager mode.
        return SingleImageCore(torch.compile(copy.deepcopy(ExportableCore(detector)).eval(), dynamic=False))

"""Serialized size of what a user ships: raw bytes and gzip (level 6) bytes of a model, state_dict or file.

Unstructured sparsity shows in the gzip size only, so both are recorded (DESIGN §5, §7).
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

GZIP_LEVEL = 6  # gzip's own default: what `gzip file` gives a user, so the reported size is reproducible


class SizeInfo(NamedTuple):
    """Bytes of a serialized artifact and of its gzip (level 6) compression."""

    bytes: int
    gzip_bytes: int


def serialized_size(obj: nn.Module | Mapping[str, Any] | str | os.PathLike | bytes | Any) -> SizeInfo:
    """Size of what a user would ship, raw and gzip-compressed at level 6.

    Unstructured sparsity does not shrink the raw file (zeros are still stored) but shows in the gzip
    size. Call ``torch.nn.utils.prune.remove`` first: otherwise ``weight_orig`` and ``weight_mask`` are
    both saved and the file grows.

    Args:
        obj: an ``nn.Module`` (its ``state_dict`` is saved with ``torch.save``), a state_dict, a path to a
            file (e.g. an ``.onnx`` export), raw bytes, or an ``onnx.ModelProto`` (measured as serialized).

    Returns:
        ``SizeInfo(bytes, gzip_bytes)``.
    """
    if isinstance(obj, (str, os.PathLike)):
        payload = Path(obj).read_bytes()
    elif isinstance(obj, (bytes, bytearray)):
        payload = bytes(obj)
    elif hasattr(obj, "SerializeToString") and not isinstance(obj, (nn.Module, Mapping)):
        # An in-memory ONNX model (any protobuf message): the bytes onnx.save would write, without importing onnx.
        payload = obj.SerializeToString()
    else:
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
    # mtime=0 keeps the gzip header, and so the measured size, identical between runs.
    compressed = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    return SizeInfo(bytes=len(payload), gzip_bytes=len(compressed))

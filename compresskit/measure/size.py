"""Serialized size of what a user ships: raw bytes and gzip (level 6) bytes of a model, state_dict or file.

Unstructured sparsity shows in the gzip size only, so both are recorded (docs/method.md: records, measurement).
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from compresskit.settings import size_cache

GZIP_LEVEL = 6  # gzip's own default: what `gzip file` gives a user, so the reported size is reproducible


class SizeInfo(NamedTuple):
    """Bytes of a serialized artifact and of its gzip (level 6) compression (None: not measured)."""

    bytes: int
    gzip_bytes: int | None


def serialized_size(obj: nn.Module | Mapping[str, Any] | str | os.PathLike | bytes | Any,
                    gzip_too: bool = True) -> SizeInfo:
    """Size of what a user would ship, raw and gzip-compressed at level 6.

    Unstructured sparsity does not shrink the raw file (zeros are still stored) but shows in the gzip
    size. Call ``torch.nn.utils.prune.remove`` first: otherwise ``weight_orig`` and ``weight_mask`` are
    both saved and the file grows.

    Args:
        obj: an ``nn.Module`` (its ``state_dict`` is saved with ``torch.save``), a state_dict, a path to a
            file (e.g. an ``.onnx`` export), a list or tuple of paths (files shipped together, e.g. an OpenVINO IR's
            ``.xml`` and ``.bin``: their bytes in that order), raw bytes, or an ``onnx.ModelProto`` (measured as
            serialized).
        gzip_too: False leaves ``gzip_bytes`` None: for stand-in weights, whose raw size is the real model's
            (same tensors, same shapes) but whose compressed size depends on values they do not have.

    Returns:
        ``SizeInfo(bytes, gzip_bytes)``.
    """
    if isinstance(obj, (str, os.PathLike)):
        payload = Path(obj).read_bytes()
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(part, (str, os.PathLike)) for part in obj):
        # An artifact of several files (an OpenVINO IR: graph and weights), shipped together.
        payload = b"".join(Path(part).read_bytes() for part in obj)
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
    return SizeInfo(bytes=len(payload), gzip_bytes=gzip_size(payload) if gzip_too else None)


# sha256 of a payload (with the level and zlib version) -> its gzip size. A study measures the same artifact again
# and again (the fp32 teacher is every study's baseline); compressing a 30 MB state_dict takes seconds, hashing it a
# few hundredths. Only sizes are kept, never payloads. With COMPRESSKIT_SIZE_CACHE set, processes share them through
# that file (one "key size" line per artifact; a torn line is ignored).
_GZIP_SIZES: dict[str, int] = {}


def gzip_size(payload: bytes) -> int:
    """Bytes of ``payload`` gzip-compressed at :data:`GZIP_LEVEL`; each distinct payload is compressed once per
    process, or once across processes sharing ``COMPRESSKIT_SIZE_CACHE`` (compression is deterministic)."""
    key = f"{hashlib.sha256(payload).hexdigest()}-{GZIP_LEVEL}-{zlib.ZLIB_RUNTIME_VERSION}"
    shared = size_cache()
    if key not in _GZIP_SIZES and shared is not None:
        _GZIP_SIZES.update(_read_sizes(shared))
    if key not in _GZIP_SIZES:
        # mtime=0 keeps the gzip header, and so the measured size, identical between runs.
        _GZIP_SIZES[key] = len(gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0))
        if shared is not None:
            shared.parent.mkdir(parents=True, exist_ok=True)
            with shared.open("a") as file:  # one short line per append: processes do not interleave it
                file.write(f"{key} {_GZIP_SIZES[key]}\n")
    return _GZIP_SIZES[key]


def _read_sizes(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    sizes = {}
    for line in text.split("\n")[:-1]:  # only finished lines: a write cut short has no newline yet
        key, _, value = line.partition(" ")
        if value.isdigit():
            sizes[key] = int(value)
    return sizes

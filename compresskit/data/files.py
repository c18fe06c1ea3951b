"""Small file helpers shared by the whole kit: atomic writes, checksums and readable JSON errors.

A reader never sees a half-written file: content goes to a temporary file in the same folder, is flushed to
disk, and only then renamed over the target (a rename within one filesystem is atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path | str, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically; parents are created. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_json(path: Path | str, document: Any, indent: int | None = None) -> Path:
    """Serialise ``document`` as JSON and write it atomically."""
    return atomic_write_bytes(path, json.dumps(document, indent=indent).encode("utf-8"))


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a lowercase hex sha256 digest (64 characters), as ``sha256_file`` returns."""
    return isinstance(value, str) and len(value) == 64 and all(char in "0123456789abcdef" for char in value)


def describe_json_error(path: Path | str, error: json.JSONDecodeError) -> tuple[str, str]:
    """What is wrong with a JSON file that does not parse, and how to fix it, naming the file, line and column.

    A file that stops early (an interrupted download or export) is told apart from a syntax error inside it,
    because the fix differs: fetch or export it again rather than edit it.

    Args:
        path: the file, named in the text.
        error: what ``json.loads`` raised on the file's text.

    Returns:
        ``(what, fix)``.
    """
    name = Path(path).name
    text = error.doc if isinstance(error.doc, str) else ""
    end = len(text.rstrip())
    # json says "Unterminated string starting at" when the closing quote never comes: the text ran out in a string.
    unterminated = error.msg.startswith("Unterminated string")
    if unterminated or error.pos >= end:
        line = text.count("\n", 0, end) + 1
        column = end - (text.rfind("\n", 0, end) + 1) + 1
        inside = f", inside a string opened at line {error.lineno}, column {error.colno}" if unterminated else ""
        return (f"{name} is incomplete JSON: it stops at line {line}, column {column}{inside}",
                "the file ends early: was the download or export interrupted? re-export or re-download it")
    # json's messages end in "at" ("Invalid control character at"); the position follows in our own words.
    reason = error.msg.removesuffix(" at").rstrip()
    reason = reason[:1].lower() + reason[1:]
    return (f"{name} is not valid JSON at line {error.lineno}, column {error.colno}: {reason}",
            "repair the file at that place (often a trailing comma or a missing quote) or export it again")

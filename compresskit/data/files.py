"""Small file helpers shared by the whole kit: atomic writes, checksums, and JSON reading with readable errors.

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

from compresskit.errors import DatasetError


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


class JsonFileError(DatasetError):
    """A JSON file that cannot be parsed; ``what`` and ``fix`` are the message's two halves (``data check`` shows
    them as one problem)."""

    def __init__(self, path: Path | str, what: str, fix: str) -> None:
        super().__init__(f"{path}: {what}; {fix}")
        self.what, self.fix = what, fix


def parse_json_bytes(path: Path | str, payload: bytes) -> Any:
    """The document in ``payload`` (the bytes of the file ``path``): UTF-8, a leading byte-order mark allowed.

    Every way a parser can fail on hostile or broken input becomes one message: bad syntax or truncation (with
    line and column), non-UTF-8 bytes, nesting too deep for the parser (``[[[[...]]]]``), integers with more digits
    than Python converts, and a document too large for memory. ``NaN`` and ``Infinity`` literals parse (as Python
    does); whoever reads a number checks it is finite.

    Raises:
        JsonFileError: the file is not a JSON document the kit can read.
    """
    name = Path(path).name
    try:
        return json.loads(payload.decode("utf-8-sig"))  # -sig: editors on Windows start UTF-8 files with a BOM
    except json.JSONDecodeError as exc:
        raise JsonFileError(path, *describe_json_error(path, exc)) from None
    except UnicodeDecodeError as exc:
        raise JsonFileError(path, f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                            "save the annotation file as UTF-8 JSON") from None
    except RecursionError:
        raise JsonFileError(path, f"{name} nests lists or objects too deeply to parse (a COCO file nests a few "
                            "levels: images, a record, its bbox)",
                            "export the file again; it is not a COCO annotation file") from None
    except MemoryError:
        raise JsonFileError(path, f"{name} ({len(payload):,} bytes) is too large to parse in the memory available",
                            "use a machine with more memory or split the file") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise JsonFileError(path, f"{name} holds a value Python cannot read ({str(exc)[:120]})",
                            "write ids and sizes as ordinary numbers") from None


def read_json_file(path: Path | str) -> Any:
    """The JSON document in the file ``path``, with every failure one :class:`JsonFileError` message.

    Raises:
        JsonFileError: the file is missing, unreadable, empty, or not a JSON document (see ``parse_json_bytes``).
    """
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise JsonFileError(path, f"{path.name} not found", "check the path") from None
    except OSError as exc:
        raise JsonFileError(path, f"cannot read {path.name} ({exc.strerror or exc})",
                            "check the path and permissions") from None
    if not payload.strip():
        raise JsonFileError(path, f"{path.name} is empty ({len(payload)} bytes)",
                            "was the download or export interrupted? re-export or re-download it")
    return parse_json_bytes(path, payload)


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

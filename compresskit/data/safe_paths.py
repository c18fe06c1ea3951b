"""Dataset file names stay inside their folder: the rule every reader and writer of a dataset applies.

A COCO ``file_name`` (and a manifest's entry) is a path relative to the images folder. One that climbs out
(``../../secret.jpg``), starts at the root (``/some/where/x.jpg``), names a Windows drive or uses backslashes
(Windows reads ``..\\x`` as a climb), or holds control characters (a NUL cuts the name short in C libraries) would
make the kit read, link or write files that are not the dataset's. Such a name is refused, with its fix, before
anything is read or written. Symbolic links inside the folder are fine to read through (shared image stores, DVC
caches); writers never write through one (see :mod:`compresskit.data.split`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from compresskit.data.values import shown
from compresskit.errors import DatasetError

MAX_COMPONENT_BYTES = 255  # the per-name limit of ext4, APFS and NTFS
_DRIVE = re.compile(r"^[A-Za-z]:")
_RELATIVE_FIX = ("make file_name relative to the images folder (e.g. 'photos/0001.jpg') and pass that folder "
                 "as --images")


def file_name_problem(name: object) -> tuple[str, str] | None:
    """Why ``name`` cannot be a file name relative to a dataset folder, and the fix; None when it is safe.

    Returns:
        ``(what, fix)``; ``what`` reads after the name, e.g. ``"'../x.jpg' leaves the images folder ('..')"``.
    """
    if not isinstance(name, str) or not name:
        return f"{shown(name)} is not a non-empty string", "set file_name to the image's path in the images folder"
    quoted = shown(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{quoted} is not valid Unicode (a lone surrogate)", "rename the file and fix file_name to match"
    if "\x00" in name:
        return f"{quoted} contains a NUL byte", "remove it: no file system allows NUL in a name"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return f"{quoted} contains a control character", "rename the file without control characters"
    if "\\" in name:
        return (f"{quoted} contains a backslash (a folder separator on Windows)",
                "write folder separators as '/' (e.g. 'photos/0001.jpg')")
    if name.startswith("/") or _DRIVE.match(name):
        return f"{quoted} is an absolute path, outside the images folder", _RELATIVE_FIX
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return (f"{quoted} leaves the images folder ('..')",
                "move the image into the images folder, or pass a folder that holds it as --images, and make "
                "file_name relative to that folder")
    if not parts:
        return f"{quoted} names the images folder itself, not a file", "set file_name to the image's path"
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in parts):
        return (f"{quoted} has a name longer than {MAX_COMPONENT_BYTES} bytes, more than file systems allow",
                "rename the file with a shorter name and fix file_name to match")
    return None


def normalized_file_name(name: str) -> str:
    """The one spelling of a safe name (``./a//b.jpg`` -> ``a/b.jpg``), so two spellings of a file are one file."""
    return PurePosixPath(name).as_posix()


def confined(root: Path | str, name: object, what: str = "file_name") -> Path:
    """``root / name`` for a safe ``name``.

    Raises:
        DatasetError: ``name`` would leave ``root`` (see :func:`file_name_problem`).
    """
    problem = file_name_problem(name)
    if problem is not None:
        raise DatasetError(f"{root}: {what} {problem[0]}; {problem[1]}")
    return Path(root) / normalized_file_name(name)


def is_within(path: Path | str, folder: Path | str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, symbolic links resolved (neither needs to exist)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def link_on_the_way(root: Path | str, path: Path | str) -> Path | None:
    """The first symbolic link among ``path`` and its parents below ``root`` (None: none), so a writer can refuse
    to write through a link into a folder that is not the dataset's."""
    root, path = Path(root), Path(path)
    current = path
    while current != root and root in current.parents:
        if current.is_symlink():
            return current
        current = current.parent
    return None

"""Resumable, checksummed downloads and safe extraction of one archive member, with the standard library only.

A download goes to ``<dest>.part`` and is renamed to ``dest`` only once it is complete (Content-Length) and,
when a checksum is given, verified: whoever finds ``dest`` may trust it. An interrupted ``.part`` is resumed
with an HTTP ``Range`` request on the next attempt or the next run. A download with no published checksum can be
pinned on first use: ``write_pin`` records its sha256 in ``<file>.sha256`` and later runs pass ``read_pin``'s value
as ``expected_sha256``. Introduced in ``00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import socket
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from compresskit.data.files import atomic_write_bytes, is_sha256, sha256_file
from compresskit.errors import DownloadError

CHUNK_BYTES = 1 << 16
# Errors that mean "no route to the host at all", as opposed to a transfer that broke half-way.
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB"


def require_free_space(folder: Path | str, needed_bytes: int, what: str) -> None:
    """Refuse, before anything is written, to put ``needed_bytes`` into ``folder`` when its disk has less free.

    Args:
        folder: where the bytes go; its nearest existing parent is measured when it does not exist yet.
        needed_bytes: what will be written.
        what: what they are, for the message (e.g. ``the annotations zip``).

    Raises:
        DownloadError: saying how much is needed, where, and how much is free.
    """
    folder = Path(folder).absolute()
    measured = next(path for path in (folder, *folder.parents) if path.exists())
    free = shutil.disk_usage(measured).free
    if needed_bytes > free:
        raise DownloadError(f"{what} needs {_gigabytes(needed_bytes)} at {folder}, {_gigabytes(free)} free; free "
                            "some space there, or write to a disk with room (COMPRESSKIT_DATA moves the kit's "
                            "data cache).")


class _ShortRead(Exception):
    """The connection ended before the announced number of bytes arrived."""


class _RangeRejected(Exception):
    """The server answered 416: the ``.part`` does not fit the remote file any more."""


def _is_unreachable(error: BaseException) -> bool:
    reason = error.reason if isinstance(error, URLError) and not isinstance(error, HTTPError) else None
    if isinstance(reason, socket.gaierror):  # DNS failed: the usual face of "no network"
        return True
    if isinstance(reason, (TimeoutError, socket.timeout)):  # connect timed out
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def offline_message(url: str, reason: object) -> str:
    """The one message a user sees when ``url``'s host cannot be reached at all."""
    host = urlsplit(url).hostname or url
    return (f"Cannot reach {host} to download {url} ({reason}): this machine seems to be offline or the host is "
            f"unreachable. Connect to the network and run the command again, or pass --coco-root DIR pointing at "
            f"a local COCO 2017 install (annotations/ plus train2017/ or val2017/ inside), or use the embedded "
            f"profile (COMPRESSKIT_PROFILE=embedded), which works offline.")


def _resumed_total(content_range: str | None, start: int, length: int | None) -> tuple[bool, int | None]:
    """Whether a 206 answer continues at ``start`` (so we may append), and the full size if known."""
    # "bytes 100-199/200": only a range that starts where our .part ends can be appended.
    if not content_range or not content_range.startswith("bytes "):
        return False, None
    span, _, total = content_range[len("bytes "):].partition("/")
    first = span.split("-", 1)[0]
    if not first.isdigit() or int(first) != start:
        return False, None
    if total.isdigit():
        return True, int(total)
    return True, (start + length if length is not None else None)


def _fetch_once(url: str, part: Path, label: str, timeout_s: float, progress: bool) -> None:
    """One HTTP request that appends to (206) or rewrites (200) ``part``; raises on any incomplete transfer."""
    have = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"User-Agent": "compresskit", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urlopen(request, timeout=timeout_s)
    except HTTPError as error:
        if error.code == 416:
            raise _RangeRejected() from error
        raise
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        resumed, total = _resumed_total(response.headers.get("Content-Range"), have, length)
        if have and response.status == 206 and resumed:
            mode = "ab"
        else:
            # 200 (the server ignored Range) or a 206 that does not start where we stopped: start over.
            have, mode, total = 0, "wb", length
        if total is not None:
            require_free_space(part.parent, total - have, f"downloading {url}")
        with open(part, mode) as handle, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                              unit_divisor=1024, desc=label, disable=not progress,
                                              leave=False) as bar:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _ShortRead(f"received {size} of {total} bytes")


def download(url: str, dest: Path, *, expected_sha256: str | None = None, retries: int = 4, backoff_s: float = 1.0,
             timeout_s: float = 30, progress: bool = True, mismatch_advice: str | None = None) -> Path:
    """Download ``url`` to ``dest``: resumable, retried with exponential back-off, size- and checksum-checked.

    An existing ``dest`` is reused when it matches ``expected_sha256`` (or when no checksum is given, since
    ``dest`` only ever appears complete).

    Args:
        url: http(s) URL to fetch.
        dest: final path; the transfer runs in ``dest.name + ".part"`` beside it.
        expected_sha256: hex digest the file must have; on mismatch the ``.part`` is deleted.
        retries: extra attempts after network errors or short reads (progress made resets the count).
        backoff_s: first wait between attempts; doubles each time.
        timeout_s: socket timeout per connect/read.
        progress: show a tqdm bar.
        mismatch_advice: what the user should do on a checksum mismatch (default: run again, then suspect the
            server), so a caller can say where the expected checksum came from and how to change it.

    Returns:
        ``dest``.

    Raises:
        DownloadError: offline, HTTP error, retries exhausted, or checksum mismatch.
    """
    dest = Path(dest)
    if dest.exists() and (expected_sha256 is None or sha256_file(dest) == expected_sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(url, part, dest.name, timeout_s, progress)
            break
        except _RangeRejected:
            part.unlink(missing_ok=True)  # the .part is stale (remote file changed or already complete): restart
            error: BaseException = DownloadError(f"server rejected the resume range for {url}")
        except HTTPError as http_error:
            if http_error.code < 500 and http_error.code != 429:  # 404, 403...: retrying will not help
                raise DownloadError(f"The server answered HTTP {http_error.code} ({http_error.reason}) for {url}; "
                                    f"check the URL (or the --annotations-url / --images-base-url you passed).") \
                    from http_error
            error = http_error
        except (URLError, OSError, http.client.HTTPException, _ShortRead) as transfer_error:
            error = transfer_error
        after = part.stat().st_size if part.exists() else 0
        failures = 1 if after > before else failures + 1  # a resumable file that grew is not a hopeless case
        # A host that was never reached is most likely offline: one retry, not a minute of back-off.
        never_reached = _is_unreachable(error) and after == 0 and failures >= 2
        if failures > retries or never_reached:
            if _is_unreachable(error):
                raise DownloadError(offline_message(url, getattr(error, "reason", error))) from error
            kept = f" The partial file {part} is kept: run again to resume." if part.exists() else ""
            raise DownloadError(f"Downloading {url} failed after {retries + 1} attempts: {error}.{kept}") from error
        time.sleep(backoff_s * 2 ** (failures - 1))
    if expected_sha256 is not None:
        actual = sha256_file(part)
        if actual != expected_sha256.lower():
            part.unlink(missing_ok=True)
            advice = mismatch_advice or ("run again, and if it repeats the server is serving a different file "
                                         "than the one pinned.")
            raise DownloadError(f"Checksum mismatch for {url}: expected sha256 {expected_sha256}, got {actual}. "
                                f"The download was deleted; {advice}")
    os.replace(part, dest)
    return dest


def pin_file(archive: Path) -> Path:
    """Where the trust-on-first-use checksum of a cached download lives: ``<archive>.sha256`` beside it."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".sha256")


def read_pin(archive: Path) -> str | None:
    """The sha256 pinned for ``archive`` by an earlier run, or None when nothing is pinned yet.

    Raises:
        DownloadError: the pin file exists but holds no sha256 (edited by hand or damaged).
    """
    path = pin_file(archive)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    digest = text.split()[0].lower() if text.split() else ""
    if not is_sha256(digest):
        raise DownloadError(f"The pin file {path} holds no sha256 digest; delete it and run again to pin the "
                            f"archive anew.")
    return digest


def write_pin(archive: Path, sha256: str) -> Path:
    """Record ``sha256`` as the pin for ``archive`` (``sha256sum`` format, so ``sha256sum -c`` can check it).

    Returns:
        The pin file's path.
    """
    archive = Path(archive)
    return atomic_write_bytes(pin_file(archive), f"{sha256.lower()}  {archive.name}\n".encode("utf-8"))


def _is_safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and not (path.parts and ":" in path.parts[0])


def extract_zip_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract only ``member`` of the zip ``archive`` to ``dest`` (via a temporary file), CRC-checked.

    Args:
        archive: the zip file.
        member: the member's name inside the archive, e.g. ``annotations/instances_val2017.json``.
        dest: where the member's bytes go.

    Returns:
        ``dest``.

    Raises:
        DownloadError: corrupt/truncated archive, an unsafe member path (``..`` or absolute), or missing member.
    """
    archive, dest = Path(archive), Path(dest)
    hint = f"delete {archive} and retry"
    tmp = dest.with_name(dest.name + ".part")
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = zipped.namelist()
            unsafe = [name for name in names if not _is_safe_member(name)]
            if unsafe:
                # An archive that tries to escape its folder is not one we trust for any member.
                raise DownloadError(f"Unsafe archive {archive}: member paths {unsafe[:3]} point outside the "
                                    f"target folder; refusing to extract. {hint.capitalize()} from a trusted source.")
            if member not in names:
                raise DownloadError(f"Archive {archive} has no member {member!r}; is it the right file? {hint}.")
            dest.parent.mkdir(parents=True, exist_ok=True)
            require_free_space(dest.parent, zipped.getinfo(member).file_size, f"extracting {member}")
            with zipped.open(member) as source, open(tmp, "wb") as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)  # zipfile checks the CRC at the end
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError) as error:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"Corrupt archive {archive} ({error}): {hint}.") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest

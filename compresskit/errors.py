"""Errors the kit raises for problems a user can fix; the CLI prints their message instead of a traceback."""


class CompressKitError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DatasetError(CompressKitError):
    """A dataset on disk is unusable (unreadable file, missing image, bad box, unknown category...)."""


class DownloadError(CompressKitError):
    """A download failed (offline, interrupted beyond retries, checksum mismatch, corrupt archive)."""


class CheckpointError(CompressKitError):
    """A checkpoint or model description cannot be loaded safely."""

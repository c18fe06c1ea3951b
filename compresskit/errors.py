"""Errors the kit raises for problems a user can fix; the CLI prints their message instead of a traceback."""


class CompressKitError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(CompressKitError, ValueError):
    """A setting or config value is out of range or unknown (a ValueError too, for callers that catch those)."""


class DatasetError(CompressKitError):
    """A dataset on disk is unusable (unreadable file, missing image, bad box, unknown category...)."""


class DownloadError(CompressKitError):
    """A download failed (offline, interrupted beyond retries, checksum mismatch, corrupt archive)."""


class CheckpointError(CompressKitError):
    """A checkpoint or model description cannot be loaded safely."""

"""Errors that the command line reports as one clear line (no traceback)."""


class GFNetError(Exception):
    """A user-facing error: bad configuration, data or checkpoint."""


class ConfigError(GFNetError):
    pass


class DataError(GFNetError):
    pass


class CheckpointError(GFNetError):
    pass

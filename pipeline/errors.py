"""The one exception family. Every message is one line: what, which file, what to do."""


class PatrolError(Exception):
    """Base of every error a user may see; the CLI prints it as one line."""


class ConfigError(PatrolError):
    """A setting is missing, malformed or out of range."""


class InputError(PatrolError):
    """An input file (raster, vector, photo, archive) is unusable."""


class StoreError(PatrolError):
    """The store cannot be opened, migrated or written."""


class ModelError(PatrolError):
    """The detector weights are missing or unusable."""


class TransitionError(PatrolError):
    """A case status change that the lifecycle table does not allow."""

"""The errors a user can cause: each carries one line that names the key, file or field at fault."""


class UnlearningError(Exception):
    """Bad input: the CLI prints the message on one line and exits non-zero."""


class ConfigError(UnlearningError):
    """A config key has a value that cannot work."""


class NonFiniteLoss(UnlearningError):
    """A loss term turned NaN/inf during training: the message names the step and the term."""


class OutputError(UnlearningError):
    """A file cannot be written (full disk, read-only or unwritable folder): the message names it."""

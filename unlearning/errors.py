"""The errors a user can cause: each carries one line that names the key, file or field at fault."""


class UnlearningError(Exception):
    """Bad input: the CLI prints the message on one line and exits non-zero."""


class ConfigError(UnlearningError):
    """A config key has a value that cannot work."""


class NonFiniteLoss(UnlearningError):
    """A loss term turned NaN/inf during training: the message names the step and the term."""


class NonFiniteMetric(UnlearningError):
    """An evaluation produced NaN or inf: results.json holds null there and the message names the metric."""


class OutputError(UnlearningError):
    """A file cannot be written (full disk, read-only or unwritable folder): the message names it."""


class Interrupted(UnlearningError):
    """SIGTERM or SIGINT ended the run: the message names the signal and the stage it stopped."""

    def __init__(self, message: str, signal_name: str = "SIGTERM") -> None:
        super().__init__(message)
        self.signal_name = signal_name


MAX_QUOTED = 200  # characters of a bad value an error line quotes: a pasted file must not flood the console


def quote(value: object) -> str:
    """`repr(value)`, cut to MAX_QUOTED characters (with the full length said) so an error stays one line."""
    text = repr(value)
    if len(text) <= MAX_QUOTED:
        return text
    return f"{text[:MAX_QUOTED]}... ({len(text)} characters)"

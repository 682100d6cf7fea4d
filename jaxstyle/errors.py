"""The one exception type users see: a message that fits on one line and says what to do."""


class JaxstyleError(Exception):
    """A user-facing error. The CLI prints ``jaxstyle: error: <message>`` and exits non-zero.

    Raise it for every bad input (files, flags, weights) with a message that names the problem and,
    where there is one, the fix. Never raise it for programming errors.
    """


class ConfigError(JaxstyleError, ValueError):
    """An invalid setting (a layer name, a weight, a size): a ValueError for library callers, a
    one-line error for CLI users."""


class JaxstyleWarning(UserWarning):
    """Something the user should know that does not stop the run (a file that is not the known
    one, a setting that was adjusted). The CLI prints it as one line ``jaxstyle: warning: ...``."""

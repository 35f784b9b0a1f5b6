"""The one exception type a user sees as a single line: what is wrong, which key, and the fix."""


class ConfigError(ValueError):
    """Bad input that the user can fix; `divrun` prints it as one line and exits with status 2."""

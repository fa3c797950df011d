"""One exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input (unknown name, malformed config or hyper-parameter, missing data, corrupt file); the message names
    the fix."""

"""The one error type a user can cause: shown as a single line on stderr, exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, key, value). The message names it and says what to do."""

    exit_code = 2

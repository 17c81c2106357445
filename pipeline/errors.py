"""Errors that the CLI turns into one clear line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input or usage: the message names the file, column or option at fault."""

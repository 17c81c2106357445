"""Errors that the CLI turns into one clear line on stderr and exit code 2, and what a
command does when the reader of its output goes away (``gla show ... | head``)."""

import os
import sys


class UserError(Exception):
    """Bad input or usage: the message names the file, column or option at fault."""


def detach_stdout() -> None:
    """After a BrokenPipeError: point stdout at /dev/null, so the interpreter's final
    flush does not raise again (and print a traceback) at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

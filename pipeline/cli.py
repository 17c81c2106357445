"""The ``gla`` command line.

Each sub-command lives in its own module under ``pipeline.commands`` with two functions:
``configure(parser)`` adds its options and ``run(args) -> int`` does the work. Bad input
raises ``UserError``; it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import shlex
import sys

from gla.extract.errors import did_you_mean
from gla.pipeline import __version__
from gla.pipeline.errors import UserError, detach_stdout

# name -> (module, one-line help). Modules must not import torch at module level.
COMMANDS = {
    "import": ("gla.pipeline.commands.import_cmd", "bring your own logits or training counts into a store"),
    "analyze": ("gla.pipeline.commands.analyze_cmd", "fit priors, apply GLA and baselines, write result tables"),
    "extract": ("gla.pipeline.commands.extract_cmd", "run open_clip models over datasets, write logits"),
    "diff": ("gla.pipeline.commands.diff_cmd", "what changed between two runs or stores, and whether it is real"),
    "history": ("gla.pipeline.commands.history_cmd", "list the runs a store has published"),
    "prune": ("gla.pipeline.commands.prune_cmd", "remove cells no longer in the config, as a new run"),
    "show": ("gla.pipeline.commands.show_cmd", "print one published result table (provenance, warnings, ...)"),
    "report": ("gla.pipeline.commands.report_cmd", "write the self-contained HTML audit report"),
    "run": ("gla.pipeline.commands.run_cmd", "run every stage for every cell of a config, incrementally"),
    "models": ("gla.pipeline.commands.models_cmd", "list the architectures and pretrained tags open_clip knows"),
    "demo": ("gla.pipeline.commands.demo_cmd", "the embedded default, end to end"),
    "check": ("gla.pipeline.commands.check_cmd", "validate a config without running anything (pre-flight checks)"),
    "init": ("gla.pipeline.commands.init_cmd", "write a commented starter config"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, exit code 2 (argparse prints the usage too),
    with a "did you mean" for a mistyped option, command or choice."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _check_value(self, action, value):  # argparse's hook for choices
        if action.choices is not None and value not in action.choices:
            known = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} (choose from {known})")

    def unrecognized(self, extra: list[str]):
        """The error for arguments no option takes, naming the closest option."""
        options = [o for a in self._actions for o in a.option_strings]
        first = next((a.split("=", 1)[0] for a in extra if a.startswith("-")), None)
        hint = did_you_mean(first, options) if first else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def one_line(message: str) -> str:
    """A message with line breaks (a library's) joined into one line; others unchanged."""
    if "\n" not in message and "\r" not in message:
        return message
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def describe_os_error(e: OSError) -> str:
    """One line naming the file: ``<file>: No space left on device (errno ENOSPC)``."""
    names = [str(f) for f in (e.filename, e.filename2) if f is not None]
    code = errno.errorcode.get(e.errno or 0, "")
    what = e.strerror or str(e) or type(e).__name__
    where = f"{' -> '.join(names)}: " if names else ""
    return one_line(f"{where}{what}{f' ({code})' if code else ''}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``gla`` parser. Every sub-command is listed; with ``only`` just that one's module
    is imported and configured (what ``main`` does, so start-up pays for one command's
    imports, not all of them); without it, every one (docs, tests)."""
    parser = OneLineParser(
        prog="gla",
        description="Audit and de-bias CLIP-style models with Generalized Logit Adjustment, "
        "from cached logits.",
    )
    parser.add_argument("--version", action="version", version=f"gla-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_parser=p)
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=module)
            continue
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def _command_of(argv: list[str]) -> str:
    """The sub-command named on the command line: the first word that is not an option (the
    top-level parser's own options, --help and --version, take no value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_of(argv))
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the sub-command's parser: "gla run: error: ..."
            getattr(args, "_parser", parser).unrecognized(extra)
        if getattr(args, "_missing", None):
            parser.error(f"command {args.command!r} is not available in this build")
    except SystemExit as e:  # usage errors (one line) and --help
        return e.code if isinstance(e.code, int) else 2
    args._command = "gla " + shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])
    try:
        return int(args._run(args) or 0)
    except UserError as e:  # one line, even when a library's message had several
        print(f"gla {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): no traceback, but not a success
        detach_stdout()
        return 1
    except OSError as e:  # the environment: read-only or full store, unreadable file
        if e.errno is None:  # not the system's: a bug, shown as one
            raise
        print(f"gla {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gla {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

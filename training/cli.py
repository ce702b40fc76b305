"""Shared command-line plumbing of the training CLIs: every config or usage mistake is one `config error: …` line.

``python -m training.<tool>`` exits with status 2 and a single stderr line ``config error: <what is wrong and what to
do>`` for a bad option, a bad config value or a missing input folder, instead of a traceback or argparse's
multi-line usage dump.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from training.config import ConfigError

USAGE_EXIT = 2


class UsageError(SystemExit):
    """A command-line mistake. A SystemExit, so callers of a CLI's `main()` see it even past `except Exception`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises `UsageError` (one line, with the usage) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Turn argparse's complaint into a one-line UsageError."""
        usage = " ".join(self.format_usage().split())
        raise UsageError(f"{message} ({usage}; see --help)")


def config_error_line(exc: BaseException) -> str:
    """The one line printed for a config or usage mistake."""
    text = " ".join(str(exc).split())
    return f"config error: {text}"


def report_config_error(exc: BaseException) -> int:
    """Print `config error: …` to stderr; returns the exit status for config mistakes (2)."""
    print(config_error_line(exc), file=sys.stderr)
    return USAGE_EXIT


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main`, turning a UsageError/ConfigError into the one-line report and exit status 2."""
    try:
        return main(argv)
    except (UsageError, ConfigError) as exc:
        return report_config_error(exc)

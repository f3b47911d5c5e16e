"""What the front end and its subcommands share: the exit statuses, and an argument parser
whose usage errors exit with ``EXIT_USAGE_ERROR``."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_TESTS_FAILED = 1
EXIT_INTERRUPTED = 2
EXIT_INTERNAL_ERROR = 3
EXIT_USAGE_ERROR = 4
EXIT_NO_TESTS = 5
EXIT_BROKEN_PIPE = 128 + 13  # a shell's status of a tool killed by SIGPIPE


class UsageParser(argparse.ArgumentParser):
    """``argparse`` exits 2 on a usage error, which pytest and the front end reserve for an
    interrupted run: this parser exits ``EXIT_USAGE_ERROR``."""

    # Added to an "unrecognized arguments" error.
    unrecognized_hint = ""

    def error(self, message: str) -> NoReturn:
        if self.unrecognized_hint and "unrecognized arguments" in message:
            message += self.unrecognized_hint
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE_ERROR, f"{self.prog}: error: {message}\n")

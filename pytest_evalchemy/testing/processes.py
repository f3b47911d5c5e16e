"""Start a process a test will signal, with the signal dispositions the test expects.

A process inherits ignored signals: a suite started in the background by a non-interactive shell
(``cmd &`` in a CI script) runs with SIGINT and SIGQUIT ignored, and so does every process it
starts. A run the test interrupts with SIGINT would then not stop at all. The child is therefore
given the default dispositions back (Python turns a default SIGINT into KeyboardInterrupt), in
its own session so that a signal to its process group reaches its workers and nothing else.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from typing import Any

# The signals a test sends or that a shell may have set to ignored.
RESET_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)


def _default_dispositions() -> None:
    # Runs in the child between fork and exec: signal.signal only, nothing that takes a lock.
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen(cmd, text=True, **kwargs)`` in a new session, default dispositions."""
    return subprocess.Popen(
        list(cmd),
        text=True,
        start_new_session=True,
        preexec_fn=_default_dispositions,
        **kwargs,
    )

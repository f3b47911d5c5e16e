"""The front ends: ``run_evalchemy.sh`` / ``evalchemy`` (``frontend``) and its ``report``,
``plan`` and ``init`` subcommands."""

from __future__ import annotations

from .frontend import main

__all__ = ["main"]

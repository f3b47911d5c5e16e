"""``python -m pytest_evalchemy``: the command line of ``run_evalchemy.sh``."""

from __future__ import annotations

from .cli.frontend import main

raise SystemExit(main())

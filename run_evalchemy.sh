#!/usr/bin/env bash
# The seed guide's front end: every flag is handled by pytest_evalchemy.cli (see --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$here/.venv/bin/python"
[[ -x "$python" ]] || python="python3"
# The checkout's package wins over any other installed copy.
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
EVALCHEMY_PROG="$(basename "$0")" exec "$python" -m pytest_evalchemy "$@"

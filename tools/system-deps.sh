#!/bin/sh
# The Debian packages `make test` needs beyond Python, installed with apt-get only when missing:
#   venv     Python's venv module (Debian ships it apart, in python3-venv)
#   browser  chromium and chromium-driver, for the HTML report tests (tests/test_report_browser.py)
# Usage: tools/system-deps.sh PYTHON venv|browser...
set -eu
python=$1
shift
missing=""
for need in "$@"; do
	case $need in
	venv) "$python" -c "import ensurepip, venv" 2>/dev/null || missing="$missing python3-venv" ;;
	browser)
		[ -x /usr/bin/chromium ] || missing="$missing chromium"
		[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
		;;
	*) echo "tools/system-deps.sh: unknown need '$need' (venv, browser)" >&2; exit 2 ;;
	esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "make test needs the Debian packages$missing: run it as root once, or: sudo apt-get install -y$missing" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "make test needs$missing (Debian package names) and this system has no apt-get: install them, then run make test again" >&2
	exit 1
fi
echo "make test: installing$missing (apt-get)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing

#!/usr/bin/env bash
# The project's test command (README, .ci/run): install what the tests need (quick when present), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_ROOT_USER_ACTION=ignore python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
python -m pytest "$@"

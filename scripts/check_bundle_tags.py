"""Check that every wheel of a bundle installs on the target interpreter and platform.

Usage: python scripts/check_bundle_tags.py BUNDLE_DIR [--python-version 3.12] [--platform manylinux_2_28_x86_64]

The target defaults to the one recorded in BUNDLE_DIR/bundle.json (written by `birdinfer bundle`).
Prints one line per wheel and exits 1 if any wheel does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from birdinfer.tools.bundle import wheel_fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle folder (holds wheels/) or a folder of wheels")
    parser.add_argument("--python-version", default=None, help="target Python, e.g. 3.12 (default: from bundle.json)")
    parser.add_argument("--platform", default=None, help="target platform tag (default: from bundle.json)")
    args = parser.parse_args(argv)
    recorded = {}
    if (args.bundle / "bundle.json").is_file():
        recorded = json.loads((args.bundle / "bundle.json").read_text())
    python_version = args.python_version or recorded.get("python_version", "3.12")
    platform = args.platform or recorded.get("platform", "manylinux_2_28_x86_64")
    wheels_dir = args.bundle / "wheels" if (args.bundle / "wheels").is_dir() else args.bundle
    wheels = sorted(wheels_dir.glob("*.whl"))
    if not wheels:
        print(f"{wheels_dir}: no wheels", file=sys.stderr)
        return 1
    misfits = 0
    for wheel in wheels:
        ok = wheel_fits(wheel.name, python_version, platform)
        misfits += not ok
        print(f"{'ok  ' if ok else 'MISFIT'} {wheel.name}")
    print(f"{len(wheels) - misfits}/{len(wheels)} wheels fit CPython {python_version} on {platform}")
    return 1 if misfits else 0


if __name__ == "__main__":
    sys.exit(main())

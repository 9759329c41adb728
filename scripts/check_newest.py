#!/usr/bin/env python3
"""Maintainer check (not part of CI): does tuneloop still pass on the newest releases?

Installs tuneloop into a scratch virtual environment with the newest versions its
``pyproject.toml`` ranges allow (no lock), or, with ``--lift-caps``, with the upper bounds
removed (torch stays pinned), runs the fast test suite there, and prints which packages differ
from ``requirements-lock.txt``. With ``--write-lock`` a passing run becomes the new lock.

When to run it: before every release, when a dependency announces a release (transformers ships
every few weeks), and before raising an upper bound in ``pyproject.toml``::

    python scripts/check_newest.py                 # newest inside the ranges
    python scripts/check_newest.py --lift-caps     # would the next minor releases work?
    python scripts/check_newest.py --write-lock    # refresh requirements-lock.txt after a pass

A run takes ~5 min to install and ~10 min of tests on 2 CPU cores. Exit status: the suite's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-lock.txt"
KEEP_PINNED = {"torch"}  # any other torch pulls gigabytes of CUDA packages


def requirements(lift_caps: bool) -> list[str]:
    """The runtime and dev requirements of pyproject.toml; with ``lift_caps`` their ``<`` bounds dropped."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = []
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        if lift_caps and req.name not in KEEP_PINNED:
            kept = [str(s) for s in req.specifier if s.operator not in ("<", "<=")]
            text = req.name + ",".join(kept)
        out.append(text)
    return out


def locked() -> dict[str, str]:
    """``name -> version`` of requirements-lock.txt (names lowercased, ``_`` as ``-``)."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lift-caps", action="store_true", help="drop the upper bounds (torch stays pinned)")
    parser.add_argument("--write-lock", action="store_true", help="on a pass, write the versions to requirements-lock.txt")
    parser.add_argument("--venv", type=Path, help="scratch environment folder (default: a temporary one, removed)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (default: the fast suite, -x -q)")
    args = parser.parse_args()
    venv = args.venv or Path(tempfile.mkdtemp(prefix="tuneloop-newest-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "eager"]
        subprocess.run(pip + requirements(args.lift_caps), check=True)
        subprocess.run(pip + ["--no-deps", "-e", str(REPO)], check=True)
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                                check=True, capture_output=True, text=True).stdout
        pins, newest = locked(), {}
        for line in freeze.splitlines():
            if "==" in line:
                name, version = line.split("==", 1)
                newest[name.lower().replace("_", "-")] = version
        changed = sorted((n, pins.get(n, "-"), v) for n, v in newest.items() if pins.get(n) != v)
        print(f"\n{len(changed)} packages differ from {LOCK.name}:")
        for name, old, new in changed:
            print(f"  {name:32} {old:>16} -> {new}")
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-x", "-q", *args.pytest_args], cwd=REPO)
        print(f"\nfast suite on the newest {'releases (caps lifted)' if args.lift_caps else 'allowed versions'}: "
              f"{'PASSED' if result.returncode == 0 else 'FAILED'}")
        if result.returncode == 0 and args.write_lock:
            header = (f"# Exact versions tested (pip freeze, Python {sys.version.split()[0]}, {date.today()}).\n"
                      "# Install with: pip install -c requirements-lock.txt -e \".[dev]\"\n"
                      "# Refresh with: python scripts/check_newest.py --write-lock\n")
            LOCK.write_text(header + freeze)
            print(f"wrote {LOCK}")
        return result.returncode
    finally:
        if args.venv is None:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The install metadata agree with each other: the bento installs what pyproject declares, and the
lock pins a version inside every declared range."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


def test_the_bento_installs_the_declared_ranges():
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bento) == sorted(_project()["dependencies"])


def test_the_lock_pins_every_requirement_inside_its_range():
    pins = _lock()
    for text in _project()["dependencies"] + _project()["optional-dependencies"]["dev"]:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is declared but not in requirements-lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} is outside {text}"


def test_every_requirement_has_an_upper_bound():
    for text in _project()["dependencies"] + _project()["optional-dependencies"]["dev"]:
        spec = Requirement(text).specifier
        assert any(s.operator in ("<", "==") for s in spec), f"{text}: no upper bound (see the README's Install)"

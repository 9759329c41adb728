"""The package as users get it: a non-editable install exposes only ``tuneloop.*`` (with its data
files), and ``bentoml build`` makes a bento that holds only what serving needs and imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH comes before site-packages, where the editable install's finder also offers `tuneloop`
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)})


@pytest.mark.timeout(600)
def test_a_non_editable_install_has_one_tuneloop_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "tuneloop"]
    assert (target / "bin" / "tuneloop").is_file()  # the console script
    package = target / "tuneloop"
    for path in ("training/train.py", "serving/service.py", "monitoring/monitor.py", "state/schema.py",
                 "apps/cli.py", "state/alembic.ini", "state/migrations/script.py.mako",
                 "monitoring/prometheus/rules.yml"):
        assert (package / path).is_file() and not (package / path).is_symlink(), path
    proc = _python("import tuneloop, tuneloop.training.train, tuneloop.serving.launch, tuneloop.monitoring.gate, "
                   "tuneloop.apps.cli, tuneloop.state.migrate as m; print(tuneloop.__file__); print(m.head_revision())\n"
                   "try:\n    import training\nexcept ImportError:\n    print('no training')",
                   cwd=tmp_path, pythonpath=target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    file, head, training = proc.stdout.split()[:2] + [proc.stdout.strip().splitlines()[-1]]
    assert file.startswith(str(package)) and head == "0003" and training == "no training"


@pytest.mark.timeout(600)
def test_the_bento_holds_serving_and_imports_it(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    proc = subprocess.run([bentoml, "build", "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Successfully built" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    (src,) = (tmp_path / "bentoml" / "bentos" / "tuneloop").glob("*/src")
    assert (src / "serving" / "service.py").is_file() and (src / "tuneloop" / "state" / "schema.py").is_file()
    assert not (src / "monitoring").exists() and not (src / "tuneloop" / "apps").exists() and not (src / "tests").exists()
    proc = _python("import tuneloop.serving.service as s; print(s.__file__)", cwd=src, pythonpath=src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(src / "serving" / "service.py")

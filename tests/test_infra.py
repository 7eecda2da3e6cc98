"""infra/ is checked statically (no container engine runs in CI)."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
README = ROOT / "README.md"
SETTINGS_ENV = {f"SDQ_{name.upper()}" for name in Settings.model_fields}
# Kubernetes releases the manifests must be valid for: an older supported one and the newest.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Runtime dependencies only the GPU worker needs; the API image must not carry them.
WORKER_ONLY = {"torch", "diffusers", "transformers", "safetensors", "pillow"}


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_env_names_are_settings() -> None:
    known = {f"SDQ_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        sdq_vars = {k for k in env if k.startswith("SDQ_")}
        assert sdq_vars <= known, (name, sdq_vars - known)


def test_redis_keeps_jobs() -> None:
    command = _compose()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_worker_reserves_a_gpu() -> None:
    worker = _compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_every_setting_is_documented() -> None:
    readme = README.read_text()
    missing = [
        f"SDQ_{name.upper()}"
        for name in Settings.model_fields
        if f"SDQ_{name.upper()}" not in readme
    ]
    assert not missing


def test_api_image_has_no_torch() -> None:
    dockerfile = (INFRA / "Dockerfile.api").read_text()
    assert "torch" not in dockerfile.replace("no torch", "")
    assert "COPY worker" not in dockerfile


# --- compose ---------------------------------------------------------------------------------


def _grace_s(value: str) -> float:
    """A compose duration such as '90s', '2m' or '1m30s', in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", value)
    assert "".join(n + u for n, u in parts) == value
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_runs_every_part() -> None:
    services = _compose()["services"]
    assert {"redis", "minio", "create-bucket", "api", "worker", "webhook-worker", "flower"} <= set(
        services
    )
    assert "mb --ignore-existing local/sdq" in services["create-bucket"]["command"][0]
    assert services["api"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_interpolated_sdq_vars_are_settings() -> None:
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(SDQ_[A-Z0-9_]+)", text))
    assert used
    assert used <= SETTINGS_ENV, used - SETTINGS_ENV


def test_compose_webhook_worker_serves_its_queue_on_the_cpu() -> None:
    webhook = _compose()["services"]["webhook-worker"]
    command = webhook["command"]
    assert command[command.index("--queues") + 1] == "webhooks"
    assert "deploy" not in webhook  # no GPU reservation
    assert webhook["environment"]["SDQ_DEVICE"] == "cpu"


def test_compose_workers_outlast_the_soft_shutdown() -> None:
    services = _compose()["services"]
    for name in ("worker", "webhook-worker"):
        service = services[name]
        soft = float(service["environment"]["SDQ_SHUTDOWN_GRACE_S"])
        assert _grace_s(service["stop_grace_period"]) > soft + 15, name


def test_compose_worker_health_is_the_liveness_check() -> None:
    for name in ("worker", "webhook-worker"):
        service = _compose()["services"][name]
        node = service["command"][service["command"].index("--hostname") + 1]
        test = service["healthcheck"]["test"]
        assert test[test.index("worker-check") + 1 :][:2] == ["--node", node], name


def test_flower_watches_the_same_broker() -> None:
    services = _compose()["services"]
    redis_url = services["api"]["environment"]["SDQ_REDIS_URL"]
    assert f"--broker={redis_url}" in services["flower"]["command"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]  # not on every interface


# --- Dockerfiles -------------------------------------------------------------------------------


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_api_image_installs_the_runtime_dependencies_but_not_torch() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {_requirement_name(r) for r in pyproject["project"]["dependencies"]}
    dockerfile = (INFRA / "Dockerfile.api").read_text()
    installed = {_requirement_name(r) for r in re.findall(r'"([^"]+)"', dockerfile)}
    assert names - WORKER_ONLY <= installed, (names - WORKER_ONLY) - installed
    assert not installed & WORKER_ONLY


# --- Kubernetes --------------------------------------------------------------------------------


def _k8s_objects() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _object(kind: str, name: str) -> dict:
    (found,) = [d for _, d in _k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _config() -> dict[str, str]:
    return _object("ConfigMap", "sdq-config")["data"]


def _containers() -> list[tuple[str, dict]]:
    return [
        (doc["metadata"]["name"], container)
        for _, doc in _k8s_objects()
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_against_the_schemas(version: str) -> None:
    checked = []
    for filename, doc in _k8s_objects():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # custom resources: checked by hand below
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append((filename, doc["kind"]))
    kinds = {kind for _, kind in checked}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_the_schema_check_catches_mistakes() -> None:
    broken = copy.deepcopy(_object("Deployment", "sdq-worker"))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limitz"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_kubernetes_env_names_are_settings() -> None:
    names = set(_config())
    for _, container in _containers():
        names |= {e["name"] for e in container.get("env", [])}
        for source in container["envFrom"]:
            ref = source.get("configMapRef") or source["secretRef"]
            assert ref["name"] in {"sdq-config", "sdq-secrets"}
    assert names <= SETTINGS_ENV, names - SETTINGS_ENV


def _probe_command(container: dict, probe: str) -> list[str]:
    return container[probe]["exec"]["command"]


def test_gpu_worker_deployment() -> None:
    worker = _object("Deployment", "sdq-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    node = container["command"][container["command"].index("--hostname") + 1]
    for probe in ("startupProbe", "livenessProbe"):
        command = _probe_command(container, probe)
        assert command[command.index("worker-check") + 1 :][:2] == ["--node", node]
    assert "--ready" in _probe_command(container, "startupProbe")
    startup = container["startupProbe"]
    load_timeout = Settings.model_fields["model_load_timeout_s"].default
    assert startup["periodSeconds"] * startup["failureThreshold"] >= load_timeout
    soft_shutdown = float(_config()["SDQ_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > soft_shutdown + 15
    metrics_port = int(_config()["SDQ_WORKER_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": metrics_port} in container["ports"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)


def test_webhook_worker_deployment_uses_no_gpu() -> None:
    (container,) = _object("Deployment", "sdq-webhook-worker")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["command"][container["command"].index("--queues") + 1] == "webhooks"
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert {"name": "SDQ_DEVICE", "value": "cpu"} in container["env"]


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_api_deployment_service_hpa_and_budgets_fit_together() -> None:
    api = _object("Deployment", "sdq-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert _selects(api["spec"]["selector"]["matchLabels"], labels)
    assert _selects(_object("Service", "sdq-api")["spec"]["selector"], labels)
    hpa = _object("HorizontalPodAutoscaler", "sdq-api")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sdq-api",
    }
    assert hpa["minReplicas"] >= 2
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name in ("sdq-api", "sdq-worker"):
        pod_labels = _object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        budget = _object("PodDisruptionBudget", name)["spec"]
        assert _selects(budget["selector"]["matchLabels"], pod_labels), name


def test_keda_scales_workers_on_both_job_queues_to_zero() -> None:
    scaled = _object("ScaledObject", "sdq-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "advanced", "triggers", "fallback",
    }  # fmt: skip
    assert spec["scaleTargetRef"]["name"] == "sdq-worker"
    assert _object("Deployment", spec["scaleTargetRef"]["name"])
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    # A running job has left the list: the cool-down must outlast one, or it is cut short.
    assert spec["cooldownPeriod"] >= int(_config()["SDQ_JOB_TIME_LIMIT_S"])
    interactive, batch = spec["triggers"]
    settings = Settings(queue=_config()["SDQ_QUEUE"])
    assert interactive["metadata"]["listName"] == settings.queue
    assert batch["metadata"]["listName"] == settings.batch_queue_name
    for trigger in (interactive, batch):
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values())  # KEDA metadata values are strings
        redis_url = _config()["SDQ_REDIS_URL"]
        assert redis_url == f"redis://{meta['address']}/{meta['databaseIndex']}"
        assert int(meta["listLength"]) >= 1
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    kubernetes_validate.validate(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-behavior"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "sdq-worker"},
                "maxReplicas": spec["maxReplicaCount"],
                "behavior": behavior,
            },
        },
        K8S_VERSIONS[0],
        strict=True,
    )


# --- documentation and monitoring --------------------------------------------------------------


def test_every_sdq_variable_the_code_reads_is_documented() -> None:
    sources = [
        *ROOT.glob("api/**/*.py"),
        *ROOT.glob("worker/**/*.py"),
        *ROOT.glob("common/**/*.py"),
        *ROOT.glob("cli/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
        *ROOT.glob("scripts/*.sh"),
        *INFRA.rglob("*"),
    ]
    used = {
        name
        for path in sources
        if path.is_file()
        for name in re.findall(r"\bSDQ_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    readme = README.read_text()
    assert used
    assert not sorted(n for n in used if f"`{n}`" not in readme)


def _exported_metric_names() -> set[str]:
    sources = [ROOT / "common" / "metrics.py", ROOT / "api" / "metrics.py"]
    names = set()
    for path in sources:
        names |= set(re.findall(r'"(sdq_[a-z_]+)"', path.read_text()))
    return names


def test_alerts_use_metrics_that_exist() -> None:
    rules = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    exported = _exported_metric_names()
    suffixes = ("_total", "_bucket", "_count", "_sum")
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule)
            for metric in re.findall(r"\bsdq_[a-z_]+", rule["expr"]):
                base = next((metric[: -len(s)] for s in suffixes if metric.endswith(s)), metric)
                assert base in exported or metric in exported, (rule["alert"], metric)


def test_prometheus_scrapes_the_api_and_the_workers() -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    services = _compose()["services"]
    port = services["worker"]["environment"]["SDQ_WORKER_METRICS_PORT"]
    assert {"api:8000", f"worker:{port}", f"webhook-worker:{port}"} <= targets
    assert config["rule_files"] == ["alerts.yml"]

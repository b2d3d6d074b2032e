"""The Helm chart (deploy/helm/ferry), rendered with the pinned Helm (``python -m dev.helm``, built on first use) and
checked as Kubernetes would receive it: probes, resources and a locked-down security context on every container,
the migration hook ordered after the settings it needs, secrets only in Secrets, the worker's grace period above
its lease, one beat at most, autoscaling on ferry_fleet_desired_workers, and renders that must fail doing so with a
message naming what is missing. No cluster is needed; nothing is skipped: a Helm that cannot be built fails."""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dev import helm
from models.settings import read_settings

CHART = helm.CHART
CI = CHART / "ci"
VALUE_SETS = sorted(path.name for path in helm.ci_value_sets())
WORKLOAD_KINDS = ("Deployment", "Job")

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    try:
        return helm.build()
    except helm.HelmUnavailable as exc:
        pytest.fail(f"the chart's tests need helm, which could not be built: {exc}")


def _template_args(value_files: tuple[str, ...], settings: dict[str, str]) -> list[str]:
    args = ["template", "ferry", str(CHART), "--namespace", "ferry", "--kube-version", helm.KUBE_VERSION]
    for name in value_files:
        args += ["-f", str(CI / name)]
    for key, value in settings.items():
        args += ["--set-string", f"{key}={value}"]
    return args


@pytest.fixture(scope="session")
def render(helm_binary: Path) -> Callable[..., list[Manifest]]:
    def rendered(*value_files: str, **settings: str) -> list[Manifest]:
        done = helm.run(_template_args(value_files, settings), check=False)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return rendered


@pytest.fixture(scope="session")
def render_error(helm_binary: Path) -> Callable[..., str]:
    def failed(*value_files: str, **settings: str) -> str:
        done = helm.run(_template_args(value_files, settings), check=False)
        assert done.returncode != 0, "helm template succeeded but should have refused these values"
        return done.stderr

    return failed


def _values(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((CI / name).read_text())
    return loaded if isinstance(loaded, dict) else {}


def _of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _containers(docs: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for workload in docs:
        if workload["kind"] in WORKLOAD_KINDS:
            pod = _pod_spec(workload)
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield workload, container


def _hook(doc: Manifest) -> tuple[set[str], int] | None:
    annotations = doc["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in annotations:
        return None
    return set(annotations["helm.sh/hook"].split(",")), int(annotations.get("helm.sh/hook-weight", "0"))


def _config_map(docs: list[Manifest]) -> dict[str, str]:
    """The running release's settings ConfigMap (not the migration hook's copy)."""
    maps = [doc for doc in _of_kind(docs, "ConfigMap") if _hook(doc) is None]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


# ----------------------------------------------------------------------------------------------- every value set


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((helm.ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lints_strictly(helm_binary: Path, value_set: str) -> None:
    done = helm.run(["lint", "--strict", str(CHART), "--kube-version", helm.KUBE_VERSION, "-f", str(CI / value_set)])
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_probed_sized_and_locked_down(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    checked = 0
    for workload, container in _containers(docs):
        where = f"{workload['kind']} {workload['metadata']['name']} container {container['name']}"
        pod = _pod_spec(workload)
        resources = container.get("resources") or {}
        assert resources.get("requests", {}).get("cpu") and resources["requests"].get("memory"), where
        assert resources.get("limits", {}).get("memory"), where
        context = container.get("securityContext") or {}
        pod_context = pod.get("securityContext") or {}
        assert context.get("runAsNonRoot") or pod_context.get("runAsNonRoot"), where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert context.get("privileged") is not True, where
        assert (context.get("seccompProfile") or pod_context.get("seccompProfile")) == {"type": "RuntimeDefault"}
        assert pod.get("automountServiceAccountToken") is False, where
        # A read-only root: /tmp (liveness file, beat's schedule, Python's temp files) must be a writable emptyDir.
        empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
        assert any(m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in container["volumeMounts"]), where
        checked += 1
    assert checked >= 3  # api, worker, migrate at least


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_probes_ports_and_drain(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    api = _one(docs, "Deployment", "ferry-api")
    pod = _pod_spec(api)
    (container,) = pod["containers"]
    assert container["args"][0] == "api"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    (port,) = container["ports"]
    assert port["containerPort"] == int(container["args"][container["args"].index("--port") + 1]) == 8080
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    # uvicorn drains for up to 30 s after SIGTERM (cli/main.py): the kill must come later.
    assert pod["terminationGracePeriodSeconds"] > 30
    service = _one(docs, "Service", "ferry-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_worker_liveness_and_grace_period_beyond_the_lease(
    render: Callable[..., list[Manifest]], value_set: str
) -> None:
    docs = render(value_set)
    worker = _one(docs, "Deployment", "ferry-worker")
    pod = _pod_spec(worker)
    (container,) = pod["containers"]
    assert container["args"][0] == "worker"
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["ferry", "healthcheck"]
    # `ferry healthcheck` judges a worker by FERRY_WORKER_LIVENESS_FILE: it must be set, on a writable mount.
    env = {item["name"]: item.get("value") for item in container["env"]}
    liveness_file = env["FERRY_WORKER_LIVENESS_FILE"]
    assert liveness_file.startswith("/tmp/")
    config = _config_map(docs)
    lease = float(config.get("FERRY_FLEET_LEASE_SECONDS", "10"))
    write_timeout = float(config.get("FERRY_FLEET_WRITE_TIMEOUT_SECONDS", "5"))
    assert pod["terminationGracePeriodSeconds"] > lease + write_timeout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_disruption_budgets_select_their_pods(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    for role in ("api", "worker"):
        budget = _one(docs, "PodDisruptionBudget", f"ferry-{role}")
        pods = _one(docs, "Deployment", f"ferry-{role}")["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
        assert ("maxUnavailable" in budget["spec"]) != ("minAvailable" in budget["spec"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_secrets_live_only_in_secrets(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    secret_values = {str(value) for value in (_values(value_set).get("secrets") or {}).values() if value}
    for secret in _of_kind(docs, "Secret"):
        secret_values |= set((secret.get("stringData") or {}).values())
    plain_texts = [value for doc in _of_kind(docs, "ConfigMap") for value in doc["data"].values()]
    for _, container in _containers(docs):
        plain_texts += [item["value"] for item in container.get("env", []) if "value" in item]
        plain_texts += [" ".join(container.get("args", []))]
        # Secrets are files in FERRY_SETTINGS_DIR, never environment variables taken from a Secret.
        assert not any("secretKeyRef" in item.get("valueFrom", {}) for item in container.get("env", []))
        assert not any("secretRef" in source for source in container.get("envFrom", []))
    for secret in secret_values:
        assert not any(secret in text for text in plain_texts), "a secret value appears outside a Secret"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_settings_dir_points_at_the_mounted_secret(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    for workload, container in _containers(docs):
        env = {item["name"]: item.get("value") for item in container["env"]}
        pod = _pod_spec(workload)
        secret_volumes = {volume["name"] for volume in pod["volumes"] if "secret" in volume}
        mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in secret_volumes]
        assert mounts == [env["FERRY_SETTINGS_DIR"]], workload["metadata"]["name"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_migration_hook_runs_after_everything_it_needs(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    values = _values(value_set)
    (job,) = _of_kind(docs, "Job")
    job_hook = _hook(job)
    assert job_hook is not None
    events, job_weight = job_hook
    assert events == {"pre-install", "pre-upgrade"}
    policies = set(job["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(","))
    assert policies == {"before-hook-creation", "hook-succeeded"}
    pod = _pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    needed = [("ServiceAccount", pod["serviceAccountName"])]
    needed += [("ConfigMap", source["configMapRef"]["name"]) for source in container["envFrom"]]
    needed += [("Secret", volume["secret"]["secretName"]) for volume in pod["volumes"] if "secret" in volume]
    made_outside = {("Secret", values.get("existingSecret"))}
    if not (values.get("serviceAccount") or {}).get("create", True):
        made_outside.add(("ServiceAccount", values["serviceAccount"]["name"]))
    for kind, name in needed:
        if (kind, name) in made_outside:
            # A user-managed object exists before the install: the chart must not render one of that name.
            assert not [d for d in _of_kind(docs, kind) if d["metadata"]["name"] == name]
            continue
        hook = _hook(_one(docs, kind, name))
        # On a first install a hook runs before the release's plain resources exist: what it needs must be a hook
        # of the same events, created earlier (a lower weight).
        assert hook is not None, f"the migration Job needs {kind} {name}, which is not a hook"
        assert events <= hook[0] and hook[1] < job_weight, f"{kind} {name}: {hook}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_beat_is_single_and_recreated(render: Callable[..., list[Manifest]], value_set: str) -> None:
    docs = render(value_set)
    beats = [d for d in _of_kind(docs, "Deployment") if d["metadata"]["name"] == "ferry-beat"]
    assert len(beats) == (1 if (_values(value_set).get("beat") or {}).get("enabled") else 0)
    for beat in beats:
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        (container,) = _pod_spec(beat)["containers"]
        schedule = container["args"][container["args"].index("--schedule") + 1]
        assert schedule.startswith("/tmp/")


# ----------------------------------------------------------------------------------------------- particular values


def test_secret_settings_are_files_ferry_reads(
    render: Callable[..., list[Manifest]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered Secret, laid out as kubelet mounts it (files behind ..data symlinks), and the ConfigMap as
    environment variables, make the settings Ferry's processes start with."""
    docs = render("full-values.yaml")
    secret = _one(docs, "Secret", "ferry-secrets")["stringData"]
    data = tmp_path / "..2026_12_01_10_00_00.000000000"
    data.mkdir()
    (tmp_path / "..data").symlink_to(data.name)
    for key, value in secret.items():
        (data / key).write_text(value)
        (tmp_path / key).symlink_to(Path("..data") / key)
    for name in [name for name in os.environ if name.startswith("FERRY_")]:
        monkeypatch.delenv(name)
    for name, value in _config_map(docs).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FERRY_SETTINGS_DIR", str(tmp_path))
    settings = read_settings()
    assert settings.database_url == secret["FERRY_DATABASE_URL"]
    assert settings.redis_url == secret["FERRY_REDIS_URL"]
    assert settings.secret_key_material() == secret["FERRY_SECRET_KEY"]
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == secret["FERRY_METRICS_TOKEN"]
    assert settings.fleet_lease_seconds == 30
    assert settings.aws_region == "eu-west-1"


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("secrets.databaseUrl", "FERRY_DATABASE_URL"),
        ("secrets.redisUrl", "FERRY_REDIS_URL"),
        ("secrets.secretKey", "FERRY_SECRET_KEY"),
    ],
)
def test_a_missing_secret_setting_stops_the_render(render_error: Callable[..., str], missing: str, named: str) -> None:
    error = render_error("default-values.yaml", **{missing: ""})
    assert f"{missing} is required" in error
    assert named in error


def test_no_values_at_all_names_the_database_url(render_error: Callable[..., str]) -> None:
    # The chart's defaults never point at a database: an install must say where its own is.
    assert "secrets.databaseUrl is required (FERRY_DATABASE_URL" in render_error()


def test_existing_secret_renders_no_secret_and_is_mounted_everywhere(
    render: Callable[..., list[Manifest]],
) -> None:
    docs = render("existing-secret-values.yaml")
    assert _of_kind(docs, "Secret") == []
    for workload, _ in _containers(docs):
        names = [v["secret"]["secretName"] for v in _pod_spec(workload)["volumes"] if "secret" in v]
        assert names == ["ferry-settings"], workload["metadata"]["name"]
    (monitor,) = _of_kind(docs, "ServiceMonitor")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert credentials == {"name": "ferry-settings", "key": "FERRY_METRICS_TOKEN"}


def test_existing_secret_with_inline_secrets_is_refused(render_error: Callable[..., str]) -> None:
    error = render_error("default-values.yaml", existingSecret="ferry-settings")
    assert "existingSecret is set, so secrets.* would be ignored" in error


def test_a_secret_in_config_is_refused(render_error: Callable[..., str]) -> None:
    error = render_error("default-values.yaml", **{"config.FERRY_METRICS_TOKEN": "scrape-me"})
    assert "config.FERRY_METRICS_TOKEN is a secret" in error


def test_a_worker_grace_period_within_the_lease_is_refused(render_error: Callable[..., str]) -> None:
    error = render_error(
        "default-values.yaml",
        **{"config.FERRY_FLEET_LEASE_SECONDS": "60", "worker.terminationGracePeriodSeconds": "60"},
    )
    assert "worker.terminationGracePeriodSeconds (60) must be at least 75" in error


def test_service_monitor_scrapes_metrics_with_the_token(render: Callable[..., list[Manifest]]) -> None:
    docs = render("full-values.yaml")
    (monitor,) = _of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _one(docs, "Service", "ferry-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["key"] in _one(docs, "Secret", credentials["name"])["stringData"]


def test_service_monitor_without_a_token_is_refused(render_error: Callable[..., str]) -> None:
    error = render_error("default-values.yaml", **{"serviceMonitor.enabled": "true"})
    assert "serviceMonitor.enabled needs a metrics token" in error


def test_defaults_render_no_optional_parts(render: Callable[..., list[Manifest]]) -> None:
    docs = render("default-values.yaml")
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"ServiceMonitor", "ScaledObject", "HorizontalPodAutoscaler"}
    assert _one(docs, "Deployment", "ferry-worker")["spec"]["replicas"] == 2
    assert [d["metadata"]["name"] for d in _of_kind(docs, "Deployment")] == ["ferry-api", "ferry-worker"]


def test_keda_scales_workers_to_the_desired_count(render: Callable[..., list[Manifest]]) -> None:
    docs = render("full-values.yaml")
    worker = _one(docs, "Deployment", "ferry-worker")
    assert "replicas" not in worker["spec"]
    (scaled,) = _of_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 12)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == "max(ferry_fleet_desired_workers)"
    # AverageValue with a threshold of 1: replicas = ceil(desired / 1) = desired.
    assert (trigger["metricType"], trigger["metadata"]["threshold"]) == ("AverageValue", "1")
    assert _of_kind(docs, "HorizontalPodAutoscaler") == []


def test_hpa_scales_workers_to_the_desired_count(render: Callable[..., list[Manifest]]) -> None:
    docs = render("hpa-values.yaml")
    worker = _one(docs, "Deployment", "ferry-worker")
    assert "replicas" not in worker["spec"]
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "ferry_fleet_desired_workers"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert _of_kind(docs, "ScaledObject") == []


def test_keda_without_a_prometheus_address_is_refused(render_error: Callable[..., str]) -> None:
    error = render_error("default-values.yaml", **{"autoscaling.enabled": "true"})
    assert "autoscaling.keda.prometheusServerAddress is required" in error


def test_a_settings_change_rolls_the_pods(render: Callable[..., list[Manifest]]) -> None:
    def checksums(docs: list[Manifest]) -> dict[str, str]:
        annotations = _one(docs, "Deployment", "ferry-worker")["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    before = checksums(render("default-values.yaml"))
    assert checksums(render("default-values.yaml", **{"config.FERRY_AWS_REGION": "eu-west-1"})) != before
    assert checksums(render("default-values.yaml", **{"secrets.secretKey": "another-key-" + "0" * 32})) != before


def test_helm_failure_is_reported_not_swallowed(helm_binary: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        helm.run(["template", "ferry", str(CHART / "no-such-chart")])

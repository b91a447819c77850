"""The Helm chart (helm/inference-gateway), rendered offline with Helm's own Go
library (helm-python-sdk) for the default values and several value sets: it
lints, its manifests validate strictly against Kubernetes' schemas, the config
it renders loads with the gateway's own loader, and what matters to run the
gateway (probes, ports, security, config reload, secrets, shutdown, GPUs,
Redis, autoscaling, monitoring) is where it must be."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart.render import (
    CHART,
    CRD_KINDS,
    FULLNAME,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    VALUE_SETS,
    Rendered,
    open_chart,
    render,
    secret_variables,
)

# The files the chart ships copies of (Helm reads only files inside the chart).
COPIES = {
    "files/prometheus/recording-rules.yaml": "config/prometheus/recording-rules.yaml",
    "files/prometheus/alerts.yaml": "config/prometheus/alerts.yaml",
    "files/grafana/gateway-dashboard.json": "config/grafana/gateway-dashboard.json",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with open_chart() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, Rendered]:
    return {name: render(chart, values) for name, values in VALUE_SETS.items()}


def pods(r: Rendered) -> Iterator[dict[str, Any]]:
    for manifest in r.manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            yield manifest["spec"]["template"]["spec"]


# -- every value set ----------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lints_clean(name: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def _check_crd(manifest: dict[str, Any]) -> None:
    """prometheus-operator's kinds, by the rules of their CRDs (monitoring.coreos.com/v1):
    kubernetes-validate has no schema for them."""
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}
    assert manifest["metadata"]["name"] and manifest["metadata"]["namespace"] == NAMESPACE
    spec = manifest["spec"]
    if manifest["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig"}
            assert set(endpoint) <= allowed
            assert isinstance(endpoint["port"], str)
        return
    assert set(spec) == {"groups"} and spec["groups"]
    names = [group["name"] for group in spec["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in spec["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert isinstance(rule["expr"], str | int) and str(rule["expr"]).strip()
            allowed = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert set(rule) <= allowed, rule
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values()), rule


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_strictly(rendered: dict[str, Rendered], name: str) -> None:
    for manifest in rendered[name].manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CRD_KINDS:
            _check_crd(manifest)
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{manifest['kind']} {manifest['metadata']['name']}: {where}: {exc.message}"
            )


@pytest.mark.parametrize("name", VALUE_SETS)
def test_standard_labels_and_namespace(rendered: dict[str, Rendered], name: str) -> None:
    for manifest in rendered[name].manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "inference-gateway"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/component"] in ("gateway", "redis")
        assert labels["helm.sh/chart"].startswith("inference-gateway-")
        assert "app.kubernetes.io/version" in labels
        assert manifest["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_gateway_loads_the_rendered_config(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    config = r.loaded.config  # raises ConfigError with the problems otherwise
    server = config.server
    assert server.host == "0.0.0.0"  # reachable through the Service, not loopback only
    ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
    assert server.http_port == ports["http"]
    assert server.grpc_port == ports.get("grpc", 0)
    values_shutdown = {"drainSeconds": 5, "graceSeconds": 20, **r.values.get("shutdown", {})}
    assert server.shutdown.drain_s == values_shutdown["drainSeconds"]
    assert server.shutdown.grace_s == values_shutdown["graceSeconds"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_secret_the_config_names_reaches_the_container(
    rendered: dict[str, Rendered], name: str
) -> None:
    r = rendered[name]
    env = {e["name"]: e for e in r.container.get("env", [])}
    for where, variable in secret_variables(r.loaded).items():
        assert variable in env, f"{where} names {variable}, which the container does not get"
        source = env[variable].get("valueFrom", {}).get("secretKeyRef")
        assert source and source["name"] and source["key"], f"{variable}: not from a Secret"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_termination_grace_exceeds_drain_plus_grace(
    rendered: dict[str, Rendered], name: str
) -> None:
    r = rendered[name]
    shutdown = r.loaded.config.server.shutdown  # what the gateway will really do
    assert r.pod["terminationGracePeriodSeconds"] > shutdown.drain_s + shutdown.grace_s
    # The gateway drains by itself: no preStop hook is needed (or rendered by default).
    assert "lifecycle" not in r.container


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_runs_locked_down(rendered: dict[str, Rendered], name: str) -> None:
    for pod in pods(rendered[name]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "resources" in container and container["resources"].get("requests")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_service_and_pdb_select_the_gateway_pods(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    service = r.one("Service", FULLNAME)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert r.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for pdb in r.all("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert r.pod["serviceAccountName"]


# -- the default values: probes, ports, security, watch mode ------------------


def test_probes(rendered: dict[str, Rendered]) -> None:
    container = rendered["default"].container
    live, ready, startup = (
        container["livenessProbe"],
        container["readinessProbe"],
        container["startupProbe"],
    )
    assert live["httpGet"] == {"path": "/v2/health/live", "port": "http", "scheme": "HTTP"}
    assert ready["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTP"}
    assert startup["httpGet"]["path"] == "/v2/health/live"
    # Models load before the listeners open: the startup probe allows minutes,
    # readiness reacts within seconds (it goes 503 at once on SIGTERM).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15
    assert live["timeoutSeconds"] < live["periodSeconds"]


def test_ports_and_app_protocols(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    assert {p["name"]: p["containerPort"] for p in r.container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
    }
    ports = {p["name"]: p for p in r.one("Service", FULLNAME)["spec"]["ports"]}
    assert ports["http"]["port"] == 8000 and ports["http"]["appProtocol"] == "http"
    assert ports["grpc"]["port"] == 8001 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert {p["targetPort"] for p in ports.values()} == {"http", "grpc"}


def test_no_grpc_port_when_grpc_is_off(rendered: dict[str, Rendered]) -> None:
    r = rendered["grpc-off-custom"]
    assert [p["name"] for p in r.container["ports"]] == ["http"]
    (port,) = r.one("Service", FULLNAME)["spec"]["ports"]
    assert (port["port"], port["targetPort"], r.container["ports"][0]["containerPort"]) == (
        80,
        "http",
        9000,
    )
    assert r.container["args"][-2:] == ["--workers", "4"]
    assert r.pod["terminationGracePeriodSeconds"] == 90
    assert r.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 1,
        "selector": r.one("PodDisruptionBudget")["spec"]["selector"],
    }
    assert "ServiceAccount" not in r.kinds and r.pod["serviceAccountName"] == "existing-sa"
    (spread,) = r.pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"


def test_null_drops_the_default_models(rendered: dict[str, Rendered]) -> None:
    config = rendered["vendor-only"].loaded.config
    assert set(config.models) == {"chat"} and set(config.backends) == {"local-llm"}


def test_tls_probes_and_scrapes_use_https(chart: helm.Chart) -> None:
    tls = {"cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"}
    r = render(
        chart,
        {
            "config": {"gateway": {"server": {"tls": tls}}},
            "metrics": {"serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": "gw"}}},
        },
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert r.container[probe]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = r.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"serverName": "gw"}


def test_the_command_serves_the_mounted_config(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    assert r.container["command"] == ["gateway"]
    assert r.container["args"] == ["serve", "--config", "/etc/gateway/gateway.yaml"]
    assert r.container["image"] == "ghcr.io/inference-gateway/inference-gateway:0.1.0"


def test_writable_paths_are_empty_dirs(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/gateway/audit"]]


def test_watch_mode_mounts_the_config_as_a_directory(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    (mount,) = [m for m in r.container["volumeMounts"] if m["name"] == "config"]
    # subPath mounts never see ConfigMap updates; a directory mount does.
    assert "subPath" not in mount and mount["readOnly"] is True
    assert Path(r.config_path).parent == Path(mount["mountPath"])
    (volume,) = [v for v in r.pod["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == r.config_map["metadata"]["name"]
    assert Path(r.config_path).name in r.config_map["data"]
    # No checksum: a config edit must not restart the pods, the gateway reloads it.
    annotations = r.deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert not any(k.startswith("checksum/") for k in annotations)
    assert r.loaded.config.server.watch_config_s > 0


def test_rollout_mode_rolls_the_pods_by_checksum(chart: helm.Chart) -> None:
    rollout = VALUE_SETS["config-rollout"]
    first = render(chart, rollout)
    annotations = first.deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert render(chart, rollout).deployment == first.deployment  # stable
    changed = render(
        chart,
        {**rollout, "config": {**rollout["config"], "gateway": {"server": {"log_level": "debug"}}}},
    )
    assert changed.loaded.config.server.log_level == "debug"
    changed_annotations = changed.deployment["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/config"] != annotations["checksum/config"]
    # The pods do not reload ahead of the rollout: the file watch is off.
    assert first.loaded.config.server.watch_config_s == 0
    kept = render(
        chart,
        {**rollout, "config": {**rollout["config"], "gateway": {"server": {"watch_config_s": 5}}}},
    )
    assert kept.loaded.config.server.watch_config_s == 5
    # Still a directory mount (SIGHUP and POST /admin/reload read the file).
    assert all("subPath" not in m for m in first.container["volumeMounts"])


def test_default_replicas_pdb_and_spread(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    assert r.deployment["spec"]["replicas"] == 2
    assert r.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    keys = {c["topologyKey"] for c in r.pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert {
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "ServiceMonitor",
        "PrometheusRule",
    }.isdisjoint(r.kinds)


def test_notes_warn_when_admin_is_open(rendered: dict[str, Rendered]) -> None:
    assert "admin_key_env is not set" in rendered["default"].notes
    assert "admin_key_env is not set" not in rendered["secrets"].notes
    assert "release records" in rendered["secrets"].notes  # secret.create is said out loud


# -- secrets ------------------------------------------------------------------


def test_secret_env_refs(rendered: dict[str, Rendered]) -> None:
    r = rendered["secrets"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in r.container["env"]}
    for ref in VALUE_SETS["secrets"]["secretEnv"]:
        expected = {"name": ref["secret"], "key": ref["key"]}
        if ref.get("optional"):
            expected["optional"] = True
        assert env[ref["name"]] == expected
    secret = r.one("Secret")
    assert secret["stringData"] == {"CACHE_SIGNING_KEY": "not-a-real-key"}
    assert env["CACHE_SIGNING_KEY"] == {
        "name": secret["metadata"]["name"],
        "key": "CACHE_SIGNING_KEY",
    }
    # The variables the config names, all of them (tenants, admin, vendors, cache).
    named = set(secret_variables(r.loaded).values())
    assert named == {
        "GATEWAY_ADMIN_KEY",
        "CACHE_SIGNING_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "CHECKOUT_API_KEY",
        "SEARCH_API_KEY",
        "SEARCH_API_KEY_NEXT",
    }
    # No hash of a secret value in the pod's metadata.
    annotations = r.deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert "checksum/secret" not in annotations


def test_a_secret_the_config_names_without_env_fails_the_render(chart: helm.Chart) -> None:
    values = {"config": {"gateway": {"server": {"admin_key_env": "GATEWAY_ADMIN_KEY"}}}}
    with pytest.raises(helm.HelmRenderError, match=r"server\.admin_key_env .*GATEWAY_ADMIN_KEY"):
        render(chart, values)
    values["config"]["requireSecretEnv"] = False
    assert "GATEWAY_ADMIN_KEY" not in render(chart, values).env_names


def test_no_secret_object_by_default(rendered: dict[str, Rendered]) -> None:
    assert all("Secret" not in r.kinds for n, r in rendered.items() if n != "secrets")


# -- shutdown -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shutdown", "expected"),
    [
        ({"drainSeconds": 5, "graceSeconds": 20}, 35),
        ({"drainSeconds": 2.5, "graceSeconds": 60}, 73),
    ],
)
def test_termination_grace_follows_shutdown(
    chart: helm.Chart, shutdown: dict[str, float], expected: int
) -> None:
    r = render(chart, {"shutdown": shutdown})
    assert r.pod["terminationGracePeriodSeconds"] == expected
    assert r.loaded.config.server.shutdown.drain_s == shutdown["drainSeconds"]
    assert r.loaded.config.server.shutdown.grace_s == shutdown["graceSeconds"]


def test_a_termination_grace_too_short_fails_the_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="must exceed"):
        render(chart, {"terminationGracePeriodSeconds": 25})


# -- GPU ----------------------------------------------------------------------


def test_gpu(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu"]
    assert r.container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert r.container["resources"]["limits"]["memory"] == "2Gi"  # the other limits stay
    assert r.pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in r.pod[
        "tolerations"
    ]
    assert r.pod["runtimeClassName"] == "nvidia"
    assert r.container["image"] == "ghcr.io/inference-gateway/inference-gateway:0.1.0-gpu"
    onnx = [b for b in r.loaded.config.backends.values() if b.type == "onnx"]
    assert onnx
    for backend in onnx:
        assert list(backend.providers) == ["cuda", "cpu"]
        assert backend.require_gpu is True
    cpu = rendered["default"]
    assert "nvidia.com/gpu" not in cpu.container["resources"]["limits"]
    assert "nodeSelector" not in cpu.pod and "tolerations" not in cpu.pod


# -- Redis --------------------------------------------------------------------


def test_redis_external_url(rendered: dict[str, Rendered]) -> None:
    redis = rendered["redis-external"].loaded.config.redis
    assert redis is not None and redis.url == "redis://redis.example.internal:6379/0"
    assert redis.timeout_ms == 20
    assert "StatefulSet" not in rendered["redis-external"].kinds
    assert rendered["default"].loaded.config.redis is None


def test_redis_external_url_from_a_secret(rendered: dict[str, Rendered]) -> None:
    r = rendered["redis-external-secret"]
    assert "url: ${REDIS_URL}" in r.config_text  # the ConfigMap holds no credentials
    (entry,) = [e for e in r.container["env"] if e["name"] == "REDIS_URL"]
    assert entry["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    assert r.loaded.config.redis is not None
    assert r.loaded.config.redis.url == "redis://:s3cret@redis.example.internal:6379/0"


def test_redis_bundled(rendered: dict[str, Rendered]) -> None:
    r = rendered["redis-bundled"]
    service = r.one("Service", f"{FULLNAME}-redis")
    statefulset = r.one("StatefulSet", f"{FULLNAME}-redis")
    assert r.loaded.config.redis is not None
    assert r.loaded.config.redis.url == f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379
    template = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    # It must not be selected by the gateway's own Service.
    gateway_selector = r.one("Service", FULLNAME)["spec"]["selector"]
    assert not gateway_selector.items() <= template["metadata"]["labels"].items()
    assert statefulset["spec"]["replicas"] == 1
    assert "volumeClaimTemplates" not in statefulset["spec"]
    (redis,) = template["spec"]["containers"]
    assert redis["image"] == "docker.io/library/redis:7.4-alpine"
    assert "--requirepass" not in redis["args"]


def test_redis_bundled_with_persistence_and_auth(rendered: dict[str, Rendered]) -> None:
    r = rendered["redis-bundled-persistent-auth"]
    statefulset = r.one("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    (redis,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    for container in (redis, r.container):
        (entry,) = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    assert "${REDIS_PASSWORD}" in r.config_text
    assert r.loaded.config.redis is not None
    assert r.loaded.config.redis.url == f"redis://:s3cret@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"


# -- autoscaling --------------------------------------------------------------


def test_hpa_with_the_inflight_metric(rendered: dict[str, Rendered]) -> None:
    r = rendered["hpa-inflight"]
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": r.deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    cpu, inflight = hpa["spec"]["metrics"]
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert inflight["type"] == "Pods"
    assert inflight["pods"]["target"] == {"type": "AverageValue", "averageValue": "6"}
    # The metric is one the gateway exports (docs/contracts.md#metrics).
    metric = inflight["pods"]["metric"]["name"]
    assert f"| `{metric}` | gauge |" in (ROOT / "docs" / "contracts.md").read_text()
    assert "replicas" not in r.deployment["spec"]  # the HPA owns the count


# -- monitoring ---------------------------------------------------------------


@pytest.mark.parametrize(("copy", "original"), COPIES.items())
def test_the_chart_copies_of_the_monitoring_files_equal_the_originals(
    copy: str, original: str
) -> None:
    assert (CHART / copy).read_bytes() == (ROOT / original).read_bytes(), (
        f"helm/inference-gateway/{copy} differs from {original}: copy it again "
        f"(cp {original} helm/inference-gateway/{copy})"
    )


def test_service_monitor(rendered: dict[str, Rendered]) -> None:
    r = rendered["monitoring"]
    monitor = r.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    service = r.one("Service", FULLNAME)
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_prometheus_rule_holds_the_repository_rules(rendered: dict[str, Rendered]) -> None:
    rule = rendered["monitoring"].one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = []
    for name in ("recording-rules.yaml", "alerts.yaml"):
        expected += yaml.safe_load((ROOT / "config" / "prometheus" / name).read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    # Alert templates reach Prometheus unexpanded (Helm did not read them as its own).
    text = json.dumps(rule["spec"])
    assert "{{ $labels.model }}" in text


def test_grafana_dashboard_config_map(rendered: dict[str, Rendered]) -> None:
    dashboard = rendered["monitoring"].one("ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Inference"}
    original = json.loads((ROOT / "config" / "grafana" / "gateway-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["gateway-dashboard.json"]) == original


def test_monitoring_objects_are_opt_in(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"]
    assert [m["metadata"]["name"] for m in default.all("ConfigMap")] == [f"{FULLNAME}-config"]
    assert {"ServiceMonitor", "PrometheusRule"}.isdisjoint(default.kinds)


# -- values.schema.json -------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_schema_accepts_every_value_set(chart: helm.Chart, name: str) -> None:
    chart.validate_schema(VALUE_SETS[name])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "3"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicaCuont": 3}, "replicaCuont"),  # a misspelt key is an error, not a default
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"config": {"reload": "restart"}}, "/config/reload"),
        ({"config": {"gateway": {"redis": {"url": "redis://x"}}}}, "/config/gateway/redis"),
        ({"ports": {"http": 70000}}, "/ports/http"),
        ({"redis": {"mode": "cluster"}}, "/redis/mode"),
        ({"redis": {"external": {"url": "http://redis"}}}, "/redis/external/url"),
        ({"gpu": {"providers": ["rocm"]}}, "/gpu/providers/0"),
        ({"gpu": {"count": 0}}, "/gpu/count"),
        ({"shutdown": {"drainSeconds": -1}}, "/shutdown/drainSeconds"),
        ({"secretEnv": [{"name": "OPENAI-KEY", "secret": "s", "key": "k"}]}, "/secretEnv/0/name"),
        ({"secretEnv": [{"name": "OPENAI_API_KEY", "secret": "vendor-keys"}]}, "/secretEnv/0"),
        ({"secret": {"stringData": {"not a name": "x"}}}, "not a name"),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
        ({"topologySpread": {"zone": {"whenUnsatisfiable": "Never"}}}, "whenUnsatisfiable"),
    ],
)
def test_the_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):  # and so does a render (an install)
        render(chart, values)


def test_the_default_values_are_what_the_schema_describes(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    assert schema["additionalProperties"] is False
    assert set(chart.values) <= set(schema["properties"])

"""Render helm/inference-gateway offline (Helm's Go library through helm-python-sdk)
and take the manifests apart for the chart tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from gateway.config.loader import LoadedConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "inference-gateway"
RELEASE = "gw"
NAMESPACE = "serving"
FULLNAME = f"{RELEASE}-inference-gateway"
# One recent Kubernetes release for every check (kubernetes-validate ships schemas up to 1.37).
KUBE_VERSION = "1.34.0"
# prometheus-operator's kinds: not in kubernetes-validate's built-in schemas.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# What the tests give the env vars that come from Secrets, when the gateway's
# loader expands ${VAR} references.
SECRET_VALUES = {
    "REDIS_URL": "redis://:s3cret@redis.example.internal:6379/0",
    "REDIS_PASSWORD": "s3cret",
}

# Value sets the chart is rendered with: each must render, lint, validate and
# give a config the gateway loads.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu": {"enabled": True, "runtimeClassName": "nvidia"}},
    "redis-external": {
        "redis": {"mode": "external", "external": {"url": "redis://redis.example.internal:6379/0"}}
    },
    "redis-external-secret": {
        "redis": {"mode": "external", "external": {"existingSecret": {"name": "redis-url"}}}
    },
    "redis-bundled": {"redis": {"mode": "bundled"}},
    "redis-bundled-persistent-auth": {
        "redis": {
            "mode": "bundled",
            "bundled": {
                "persistence": {"enabled": True, "size": "2Gi", "storageClassName": "fast"},
                "auth": {"existingSecret": "redis-auth"},
            },
        }
    },
    "hpa-inflight": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "inflight": {"enabled": True, "averageValue": "6"},
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        }
    },
    "config-rollout": {"config": {"reload": "rollout"}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Inference"}},
        }
    },
    "secrets": {
        "config": {
            "gateway": {
                "server": {"admin_key_env": "GATEWAY_ADMIN_KEY"},
                "cache": {"signing_key_env": "CACHE_SIGNING_KEY"},
                "tenants": [
                    {"name": "checkout", "key_env": "CHECKOUT_API_KEY", "models": ["chat"]},
                    {"name": "search", "key_env": ["SEARCH_API_KEY", "SEARCH_API_KEY_NEXT"]},
                ],
                "backends": {
                    "gpt-primary": {
                        "type": "openai",
                        "base_url": "https://api.openai.com/v1",
                        "api_key_env": "OPENAI_API_KEY",
                        "model": "gpt-4o-mini",
                    },
                    "claude": {
                        "type": "anthropic",
                        "api_key_env": "ANTHROPIC_API_KEY",
                        "model": "claude-3-5-haiku-latest",
                    },
                },
                "models": {
                    "chat": {
                        "kind": "chat",
                        "route": {"backends": ["gpt-primary", "claude"]},
                        "cache": {"ttl_s": 600},
                    }
                },
            }
        },
        "secretEnv": [
            {"name": "GATEWAY_ADMIN_KEY", "secret": "gateway-admin", "key": "key"},
            {"name": "OPENAI_API_KEY", "secret": "vendor-keys", "key": "openai"},
            {"name": "ANTHROPIC_API_KEY", "secret": "vendor-keys", "key": "anthropic"},
            {"name": "CHECKOUT_API_KEY", "secret": "tenant-keys", "key": "checkout"},
            {"name": "SEARCH_API_KEY", "secret": "tenant-keys", "key": "search"},
            {"name": "SEARCH_API_KEY_NEXT", "secret": "tenant-keys", "key": "search-next"},
            # A variable the config does not need: the pod starts without its key.
            {
                "name": "OTEL_EXPORTER_OTLP_HEADERS",
                "secret": "otel",
                "key": "headers",
                "optional": True,
            },
        ],
        "secret": {"create": True, "stringData": {"CACHE_SIGNING_KEY": "not-a-real-key"}},
        "redis": {"mode": "bundled"},
    },
    # Helm merges config.gateway into the default: null drops the shipped models.
    "vendor-only": {
        "config": {
            "gateway": {
                "backends": {
                    "digits-cpu": None,
                    "embedder-cpu": None,
                    "local-llm": {
                        "type": "openai",
                        "base_url": "http://vllm.llm.svc:8000/v1",
                        "model": "qwen2.5-7b-instruct",
                    },
                },
                "models": {
                    "digits": None,
                    "embedder": None,
                    "embeddings": None,
                    "chat": {"kind": "chat", "route": {"backends": ["local-llm"]}},
                },
            }
        }
    },
    "grpc-off-custom": {
        "ports": {"http": 9000, "grpc": 0},
        "service": {"http": {"port": 80}},
        "workers": 4,
        "terminationGracePeriodSeconds": 90,
        "shutdown": {"drainSeconds": 10, "graceSeconds": 60},
        "podDisruptionBudget": {"maxUnavailable": None, "minAvailable": 1},
        "topologySpread": {
            "zone": {"enabled": False},
            "hostname": {"whenUnsatisfiable": "DoNotSchedule"},
        },
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "extraEnv": [{"name": "OTEL_TRACES_EXPORTER", "value": "otlp"}],
        "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        "podAnnotations": {"example.com/team": "ml-platform"},
    },
}


@dataclass
class Rendered:
    """One render of the chart: its manifests, parsed, and NOTES.txt."""

    manifests: list[dict[str, Any]]
    notes: str
    values: dict[str, Any] = field(default_factory=dict)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "gateway"]
        return container

    @property
    def env_names(self) -> set[str]:
        return {e["name"] for e in self.container.get("env", [])}

    @property
    def config_map(self) -> dict[str, Any]:
        return self.one("ConfigMap", f"{FULLNAME}-config")

    @property
    def config_text(self) -> str:
        (text,) = self.config_map["data"].values()
        return text

    @property
    def config_path(self) -> str:
        args = self.container["args"]
        return args[args.index("--config") + 1]

    def env_for_loader(self) -> dict[str, str]:
        """The container's environment as the gateway would see it (Secret values made up)."""
        env = {}
        for entry in self.container.get("env", []):
            name = entry["name"]
            env[name] = entry.get("value", SECRET_VALUES.get(name, f"test-value-of-{name}"))
        return env

    @cached_property
    def loaded(self) -> LoadedConfig:
        """The rendered config, through the gateway's own loader."""
        return parse_config(
            self.config_text, source=Path(self.config_path), env=self.env_for_loader()
        )


def open_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(manifests, notes, values)


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def secret_variables(loaded: LoadedConfig) -> dict[str, str]:
    """Every environment variable the config needs: where it is named -> its name."""
    config = loaded.config
    wanted: dict[str, str] = {}
    if config.server.admin_key_env:
        wanted["server.admin_key_env"] = config.server.admin_key_env
    if config.cache.signing_key_env:
        wanted["cache.signing_key_env"] = config.cache.signing_key_env
    for name, backend in config.backends.items():
        key = getattr(backend, "api_key_env", None)
        if key:
            wanted[f"backends.{name}.api_key_env"] = key
    for i, tenant in enumerate(config.tenants):
        keys = [tenant.key_env] if isinstance(tenant.key_env, str) else list(tenant.key_env)
        for j, key in enumerate(keys):
            wanted[f"tenants[{i}].key_env[{j}]"] = key
    for match in _REF.finditer(loaded.text):  # ${VAR} with no default
        wanted[f"${{{match[1]}}}"] = match[1]
    return wanted

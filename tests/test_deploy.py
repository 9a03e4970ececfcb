"""What deploys Anteroom beyond one host: Dockerfile, compose.yaml, deploy/kubernetes/.

No container engine exists here, so each file is checked as far as it can be
without one: the Kubernetes manifests against the API schemas
(kubernetes-validate, offline), compose.yaml against the Compose
Specification's JSON schema (vendored in deploy/schemas/), nginx configs with
``nginx -t``, and every path, port, variable and name they mention against
what the repository and the sidecar actually have.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import ROOT
from sidecar.config import ConfigError, load
from sidecar.web.app import create_app
from tests.conftest import FAST
from tests.test_packaging import NGINX, nginx_t

K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"
SNIPPETS_CONFIGMAP = K8S / "nginx-snippets.yaml"
BIN = Path(sys.executable).parent
# named by deploy files ahead of the code that reads them
PLANNED_VARIABLES = {"ANTEROOM_ADMIN_TOKEN"}


def known_variables() -> set[str]:
    """Every ANTEROOM_* variable the sidecar reads."""
    names: set[str] = set()
    for module in (ROOT / "sidecar").rglob("*.py"):
        names |= set(re.findall(r"\bANTEROOM_[A-Z0-9_]+\b", module.read_text()))
    return names


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def snippets_configmap() -> str:
    """The ConfigMap that carries nginx/anteroom/*.conf into the nginx pods."""
    lines = [
        "# Generated from nginx/anteroom/*.conf; do not edit. Regenerate with:",
        "#   .venv/bin/python -m tests.test_deploy",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: anteroom-nginx-snippets",
        "  labels:",
        "    app.kubernetes.io/name: anteroom",
        "    app.kubernetes.io/component: nginx",
        "data:",
    ]
    for path in sorted((ROOT / "nginx" / "anteroom").glob("*.conf")):
        lines.append(f"  {path.name}: |")
        lines += [f"    {line}".rstrip() for line in path.read_text().splitlines()]
    return "\n".join(lines) + "\n"


# -- schemas ---------------------------------------------------------------------


def validate_k8s(*paths: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.30.0"]
    return subprocess.run([*argv, *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_kubernetes_manifests_match_the_api_schema(tmp_path: Path) -> None:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    r = validate_k8s(*files)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    assert {
        ("Deployment", "anteroom-sidecar"),
        ("Service", "anteroom-sidecar"),
        ("PodDisruptionBudget", "anteroom-sidecar"),
        ("ConfigMap", "anteroom-config"),
        ("Secret", "anteroom-secrets"),
        ("Deployment", "anteroom-nginx"),
        ("ConfigMap", "anteroom-nginx-site"),
        ("ConfigMap", "anteroom-nginx-snippets"),
    } <= kinds
    kustomized = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(kustomized) == [p.name for p in files]
    # the validator does refuse a wrong manifest (offline, from its bundled schemas)
    broken = tmp_path / "broken.yaml"
    broken.write_text((K8S / "sidecar.yaml").read_text().replace("replicas: 3", "replicas: three"))
    assert validate_k8s(broken).returncode != 0


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    argv = [str(BIN / "check-jsonschema"), "--schemafile", str(COMPOSE_SCHEMA)]
    r = subprocess.run([*argv, str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    r = subprocess.run([*argv, str(broken)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_nginx_snippets_configmap_is_current() -> None:
    assert SNIPPETS_CONFIGMAP.read_text() == snippets_configmap(), (
        "nginx/anteroom/ changed: regenerate with .venv/bin/python -m tests.test_deploy"
    )
    data = find("ConfigMap", "anteroom-nginx-snippets")["data"]
    for path in (ROOT / "nginx" / "anteroom").glob("*.conf"):
        assert data[path.name] == path.read_text(), path.name


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_kubernetes_nginx_site_is_valid_nginx(tmp_path: Path) -> None:
    site = find("ConfigMap", "anteroom-nginx-site")["data"]["default.conf"]
    # here: no cluster DNS, and nginx 1.22 (`resolve` needs 1.27.3)
    site = site.replace(" resolve;", ";").replace(
        "kube-dns.kube-system.svc.cluster.local", "127.0.0.1"
    )
    site = re.sub(r"server [a-z-]+:(\d+);", r"server 127.0.0.1:\1;", site)
    r = nginx_t(tmp_path, site.replace("listen 8080;", "listen 127.0.0.1:1;"))
    assert r.returncode == 0, r.stderr


# -- names that must exist -------------------------------------------------------


def test_every_variable_named_by_deploy_files_is_read_by_the_sidecar() -> None:
    known = known_variables() | PLANNED_VARIABLES
    named: set[str] = set()
    for path in [ROOT / "Dockerfile", COMPOSE, *K8S.glob("*.yaml")]:
        named |= set(re.findall(r"\bANTEROOM_[A-Z0-9_]+\b", path.read_text()))
    assert named, "no variables found: the pattern is wrong"
    assert named - known == set()


def test_compose_requires_a_real_secret_and_secure_cookies() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    sidecars = [n for n in services if n.startswith("sidecar")]
    assert len(sidecars) == 2
    for name in sidecars:
        env = services[name]["environment"]
        assert env["ANTEROOM_SECRETS"].startswith("${ANTEROOM_SECRETS:?")
        assert env["ANTEROOM_COOKIE_SECURE"] == "${ANTEROOM_COOKIE_SECURE:-1}"
    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    # nginx's upstreams are the compose services, on the ports they listen on
    site = (ROOT / "nginx" / "compose.conf").read_text()
    upstreams = re.findall(r"server ([\w-]+):(\d+);", site)
    assert {h for h, _ in upstreams} <= set(services)
    assert ("sidecar-1", "8081") in upstreams and ("sidecar-2", "8081") in upstreams
    assert ("origin", "8082") in upstreams and "--port 8082" in " ".join(
        services["origin"]["command"]
    )
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in compose["volumes"], source


def test_dockerfile_is_slim_non_root_and_checks_readiness() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", dockerfile, re.M)
    assert re.search(r"^USER (10001|anteroom)$", dockerfile, re.M)
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs and all("[" not in line for line in installs)  # no dev extras
    health = re.search(r"^HEALTHCHECK .*?CMD (.+)$", dockerfile, re.M | re.S)
    assert health and "/readyz" in health.group(1)
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"^COPY theme_assets ", dockerfile, re.M)  # themes inside
    # the scripts are package data
    assert '"sidecar.queue.lua" = ["*.lua"]' in (ROOT / "pyproject.toml").read_text()
    listen = re.search(r"ANTEROOM_LISTEN=0\.0\.0\.0:(\d+)", dockerfile)
    assert listen and f"EXPOSE {listen.group(1)}" in dockerfile
    assert f"127.0.0.1:{listen.group(1)}/readyz" in dockerfile


def test_kubernetes_sidecar_probes_ports_and_references() -> None:
    config = load(FAST)
    routes = {r.resource.canonical for r in create_app(config).router.routes() if r.resource}
    deployment = find("Deployment", "anteroom-sidecar")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = int(env["ANTEROOM_LISTEN"].rpartition(":")[2])
    assert [p["containerPort"] for p in container["ports"]] == [port, 9091]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/livez", "/readyz"} <= routes
    assert container["resources"]["requests"] and container["resources"]["limits"]
    shutdown = float(env["ANTEROOM_SHUTDOWN_TIMEOUT"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown + 3  # + last flush
    # the ConfigMap, Secret and Service it relies on exist and match
    (secret_ref,) = container["envFrom"]
    assert find("Secret", secret_ref["secretRef"]["name"])
    (volume,) = pod["volumes"]
    toml_map = find("ConfigMap", volume["configMap"]["name"])
    (mount,) = container["volumeMounts"]
    assert env["ANTEROOM_CONFIG"] == f"{mount['mountPath']}/anteroom.toml"
    assert "anteroom.toml" in toml_map["data"]
    labels = spec["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = find(kind, "anteroom-sidecar")
        selector = doc["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items()
    assert find("Service", "anteroom-sidecar")["spec"]["ports"][0]["port"] == port
    redis_host = env["ANTEROOM_REDIS_URL"].split("//")[1].split(":")[0]
    assert find("Service", redis_host)
    # the nginx pods mount the snippets and the site; the site's upstream is the Service
    nginx = find("Deployment", "anteroom-nginx")["spec"]["template"]["spec"]
    maps = {v["configMap"]["name"] for v in nginx["volumes"] if "configMap" in v}
    assert maps == {"anteroom-config", "anteroom-nginx-site", "anteroom-nginx-snippets"}
    site = find("ConfigMap", "anteroom-nginx-site")["data"]["default.conf"]
    assert f"server anteroom-sidecar:{port} resolve;" in site


def test_kubernetes_config_loads_and_placeholders_are_refused(tmp_path: Path) -> None:
    toml = find("ConfigMap", "anteroom-config")["data"]["anteroom.toml"]
    tomllib.loads(toml)
    path = tmp_path / "anteroom.toml"
    path.write_text(toml)
    config = load({**FAST, "ANTEROOM_CONFIG": str(path)})
    assert [t.name for t in config.tenants] == ["shop"]
    secret = find("Secret", "anteroom-secrets")["stringData"]
    with pytest.raises(ConfigError, match="ANTEROOM_SECRETS"):
        load({"ANTEROOM_SECRETS": secret["ANTEROOM_SECRETS"]})


def test_prometheus_in_the_cluster_reaches_metrics_and_nothing_more() -> None:
    """The scrape config keeps the sidecar pods' admin port; the NetworkPolicy admits
    Prometheus to that port; no Service exposes it."""
    pod = find("Deployment", "anteroom-sidecar")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["ANTEROOM_ADMIN_LISTEN"] == f"0.0.0.0:{ports['admin']}"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    (job,) = scrape["scrape_configs"]
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keep["__meta_kubernetes_pod_container_port_name"] == "admin"
    label = "app.kubernetes.io/component"
    assert (
        keep["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
        == pod["metadata"]["labels"][label]
    )
    assert job["authorization"]["credentials_file"]
    policy = find("NetworkPolicy", "anteroom-sidecar")["spec"]
    admin_rules = [
        r for r in policy["ingress"] if {"port": ports["admin"], "protocol": "TCP"} in r["ports"]
    ]
    (rule,) = admin_rules
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] and peer["podSelector"]  # one namespace's Prometheus
    for service in (d for d in manifests() if d["kind"] == "Service"):
        assert all(
            p.get("targetPort") not in ("admin", ports["admin"]) for p in service["spec"]["ports"]
        )
        assert all(p["port"] != ports["admin"] for p in service["spec"]["ports"])
    secret = find("Secret", "anteroom-secrets")["stringData"]["ANTEROOM_ADMIN_TOKEN"]
    assert "prometheus:" in secret


def test_compose_shares_one_tenants_file_and_states_its_version(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    mount = "./deploy/compose/anteroom.toml:/etc/anteroom/anteroom.toml:ro"
    for name in ("sidecar-1", "sidecar-2", "pages"):
        assert mount in services[name]["volumes"], name
        assert services[name]["environment"]["ANTEROOM_CONFIG"] == "/etc/anteroom/anteroom.toml"
    # queue sizes come from the TOML, not from demo values in variables
    for name in ("sidecar-1", "sidecar-2"):
        env = services[name]["environment"]
        assert not {"ANTEROOM_CAPACITY", "ANTEROOM_SESSION_TTL", "ANTEROOM_GRACE"} & set(env)
    config = load({**FAST, "ANTEROOM_CONFIG": str(ROOT / "deploy" / "compose" / "anteroom.toml")})
    (tenant,) = config.tenants
    assert tenant.name == "default"  # the origin's pages link /_anteroom/waiting/default/
    assert "configs" in compose and "Compose v2.23.1" in COMPOSE.read_text()


if __name__ == "__main__":
    SNIPPETS_CONFIGMAP.write_text(snippets_configmap())
    print(f"wrote {SNIPPETS_CONFIGMAP.relative_to(ROOT)}")

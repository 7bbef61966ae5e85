"""deploy/kubernetes: renders with `kubectl kustomize`, every built-in object is valid for
the Kubernetes API (kubernetes-validate's bundled schemas, offline), the KEDA and
Prometheus Operator resources carry what their CRDs require, and the deployment
invariants hold (one beat, migration before web, probes, grace periods, secrets, non-root).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.bus.broker import WORK_QUEUES
from app.core.config import load_settings
from tests.support.services import services_required
from tests.test_deploy_files import dockerfile_user, procfile

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAY = KUBE / "overlays" / "example"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "clm.json"
# The oldest Kubernetes whose kubectl bundles kustomize v5, and the newest schemas the
# installed kubernetes-validate ships (all bundled: nothing is downloaded).
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The Procfile processes, as Deployments.
DEPLOYMENTS = {f"clm-{name}": name for name in procfile()}
WORKERS = ("clm-worker-train", "clm-worker-eval")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|BASIC_AUTH|_URL$")
SECRET_NAME_EXCEPTIONS = {"CLM_S3_ENDPOINT_URL", "CLM_BINANCE_BASE_URL"}  # no credentials

# What the CRDs require (KEDA v2 keda.sh_scaledobjects.yaml and
# keda.sh_triggerauthentications.yaml; prometheus-operator
# monitoring.coreos.com_servicemonitors.yaml), as JSON Schema.
_TRIGGER = {
    "type": "object", "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string"},
        # The CRD types trigger metadata as a map of strings: a bare 4 is refused.
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "authenticationRef": {"type": "object", "required": ["name"]},
    },
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "pollingInterval": {"type": "integer", "minimum": 1},
            },
        }},
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {"type": "object", "properties": {"secretTargetRef": {
            "type": "array",
            "items": {"type": "object", "required": ["parameter", "name", "key"]},
        }}}},
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            },
        }},
    },
}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if services_required():
            pytest.fail("no kubectl to render deploy/kubernetes (.ci/run installs it)")
        pytest.skip("no kubectl on this machine")
    return kubectl


def render(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(OVERLAY)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the CLM settings ConfigMap (its name carries a content hash)."""
    (data,) = [c["data"] for name, c in by_kind(objects, "ConfigMap").items()
               if name.startswith("clm-config")]
    return data


def test_every_built_in_object_is_valid_for_the_kubernetes_api(objects):
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Job", "Service", "ConfigMap", "Secret", "ScaledObject",
            "TriggerAuthentication", "ServiceMonitor"} <= kinds
    built_in = [o for o in objects if not o["apiVersion"].startswith(CRD_GROUPS)]
    for version in KUBERNETES_VERSIONS:
        for obj in built_in:
            # strict: a misspelt or misplaced field is an error, not silently dropped.
            kubernetes_validate.validate(obj, version, strict=True)


def test_a_misplaced_field_is_caught_by_the_validation(objects):
    """The check above can fail: a probe on the pod instead of the container is refused."""
    web = json.loads(json.dumps(by_kind(objects, "Deployment")["clm-web"]))
    pod_spec(web)["readinessProbe"] = {"httpGet": {"path": "/health", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSIONS[0], strict=True)


def test_the_base_renders_on_its_own():
    names = {(o["kind"], o["metadata"]["name"]) for o in render(KUBE / "base")}
    assert {("Deployment", name) for name in DEPLOYMENTS} <= names
    assert ("Job", "clm-migrate") in names


def test_crd_resources_have_the_fields_their_crds_require(objects):
    custom = [o for o in objects if o["apiVersion"].startswith(CRD_GROUPS)]
    assert {o["kind"] for o in custom} == {"ScaledObject", "TriggerAuthentication",
                                           "ServiceMonitor"}
    for obj in custom:
        jsonschema.validate(obj, CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
    broken = by_kind(objects, "ScaledObject")["clm-worker-train"]
    broken = {**broken, "spec": {**broken["spec"], "triggers": [
        {"type": "redis", "metadata": {"listName": "train", "listLength": 4}}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


def _queues(deployment: dict[str, Any]) -> set[str]:
    command = pod_spec(deployment)["containers"][0]["command"]
    return set(command[command.index("--queues") + 1].split(","))


def test_keda_scales_each_worker_on_the_queues_it_consumes(objects):
    deployments = by_kind(objects, "Deployment")
    scaled = by_kind(objects, "ScaledObject")
    auth = by_kind(objects, "TriggerAuthentication")
    secrets = by_kind(objects, "Secret")
    targets = {s["spec"]["scaleTargetRef"]["name"]: s for s in scaled.values()}
    assert set(targets) == set(WORKERS)
    listed = set()
    for name, obj in targets.items():
        spec = obj["spec"]
        assert obj["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] > 0
        # The HPA owns the replica count; an apply must not reset it.
        assert "replicas" not in deployments[name]["spec"], name
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            queue = trigger["metadata"]["listName"]
            # kombu's Redis transport keeps a queue in the list named like the queue.
            assert queue in WORK_QUEUES and queue in _queues(deployments[name]), (name, queue)
            assert int(trigger["metadata"]["listLength"]) >= 1
            listed.add(queue)
            for ref in auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]]["stringData"], ref
    assert {"train", "evaluate"} <= listed
    # worker-eval runs the periodic tasks (queue default): never scaled to zero.
    assert targets["clm-worker-eval"]["spec"]["minReplicaCount"] >= 1


def test_one_beat_that_is_never_two(objects):
    beat = by_kind(objects, "Deployment")["clm-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    scaled = by_kind(objects, "ScaledObject").values()
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in scaled}
    assert "clm-beat" not in targets
    assert not by_kind(objects, "HorizontalPodAutoscaler")


def test_migration_job_runs_before_any_process_uses_the_schema(objects):
    (job,) = by_kind(objects, "Job").values()
    assert pod_spec(job)["containers"][0]["command"] == ["clm", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        inits = pod_spec(deployment).get("initContainers", [])
        waits = [c for c in inits if "clm db check" in " ".join(c["command"])]
        if name == "clm-flower":  # broker only, no schema
            assert not waits
            continue
        # A loop: the init container ends only once the schema is at head.
        assert waits and "until clm db check" in waits[0]["command"][-1], name
        assert waits[0]["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]


def test_probes_are_the_existing_ones(objects):
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    deployments = by_kind(objects, "Deployment")
    web = pod_spec(deployments["clm-web"])["containers"][0]
    # Readiness is what `python -m app.liveness web` checks: GET /health answers 200.
    assert web["readinessProbe"]["httpGet"]["path"] == "/health"
    assert compose["web"]["healthcheck"]["test"][-1].endswith("/health")
    assert web["livenessProbe"]["httpGet"]["path"] == "/openapi.json"
    flower = pod_spec(deployments["clm-flower"])["containers"][0]
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    for name, process in DEPLOYMENTS.items():
        container = pod_spec(deployments[name])["containers"][0]
        assert "livenessProbe" in container, name
        if "exec" in container["livenessProbe"]:
            # The same probe command compose.yaml's health check runs.
            assert container["livenessProbe"]["exec"]["command"] == \
                compose[process]["healthcheck"]["test"][1:], name


def test_processes_run_the_procfile_commands(objects):
    deployments = by_kind(objects, "Deployment")
    for name, process in DEPLOYMENTS.items():
        command = pod_spec(deployments[name])["containers"][0]["command"]
        words = procfile()[process].split()[1:]  # without `exec`
        assert command[:3] == words[:3], name
        if "--queues" in words:
            assert command[command.index("--queues") + 1] == words[words.index("--queues") + 1]


def test_grace_period_is_above_the_soft_shutdown_timeout(objects):
    settings = load_settings(config(objects))
    soft = settings.worker_soft_shutdown_timeout_s
    deployments = by_kind(objects, "Deployment")
    for name in WORKERS:
        grace = pod_spec(deployments[name])["terminationGracePeriodSeconds"]
        # Margin for the worker to return the cancelled task and close its connections.
        assert grace >= soft + 15, (name, grace, soft)
    # gunicorn's graceful_timeout is 30 s (clm serve).
    assert pod_spec(deployments["clm-web"])["terminationGracePeriodSeconds"] > 30


def _secret_like(name: str, value: str) -> bool:
    if re.search(r"://[^/@\s]*:[^/@\s]+@", value):  # credentials in a URL
        return True
    return bool(SECRET_WORDS.search(name)) and name not in SECRET_NAME_EXCEPTIONS


def test_no_secret_value_in_a_config_map_or_a_literal_env(objects):
    assert _secret_like("CLM_DATABASE_URL", "postgresql://clm@db/clm")
    assert _secret_like("X", "redis://:pw@redis:6379/0")
    assert not _secret_like("CLM_DATA_DIR", "s3://clm/data")
    for name, config_map in by_kind(objects, "ConfigMap").items():
        for key, value in config_map.get("data", {}).items():
            if key.endswith(".json"):
                continue  # the dashboard
            assert not _secret_like(key, value), (name, key)
    secrets = by_kind(objects, "Secret")
    for keys in ("CLM_DATABASE_URL", "CLM_BROKER_URL", "AWS_SECRET_ACCESS_KEY"):
        assert keys in secrets["clm-secrets"]["stringData"]
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]:
        for container in containers(workload):
            for var in container.get("env", []):
                if _secret_like(var["name"], var.get("value", "")):
                    assert "secretKeyRef" in var.get("valueFrom", {}), var
            refs = {ref["secretRef"]["name"] for ref in container.get("envFrom", [])
                    if "secretRef" in ref}
            assert refs <= set(secrets) and "clm-secrets" in refs
    flower = pod_spec(by_kind(objects, "Deployment")["clm-flower"])["containers"][0]
    (auth,) = [v for v in flower["env"] if v["name"] == "FLOWER_BASIC_AUTH"]
    assert auth["valueFrom"]["secretKeyRef"]["name"] in secrets


def test_pods_run_as_the_image_user_on_a_read_only_root(objects):
    uid = int(dockerfile_user())
    settings = load_settings(config(objects))
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid != 0
        # Service links would set CLM_WEB_PORT, CLM_FLOWER_PORT, … to tcp://… in the pods.
        assert spec["enableServiceLinks"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        # Pods share no volume: only per-pod scratch space.
        assert all(set(v) == {"name", "emptyDir"} for v in volumes.values())
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", str(settings.var_dir)} <= mounts, container["name"]


def test_files_live_in_the_object_store(objects):
    data = config(objects)
    assert data["CLM_DATA_DIR"].startswith("s3://")
    assert data["CLM_ARTIFACT_ROOT"].startswith("s3://")
    assert "CLM_S3_ENDPOINT_URL" in data
    assert not by_kind(objects, "PersistentVolumeClaim")


def _benchmark_mib(pattern: str) -> float:
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    match = re.search(pattern, text)
    assert match, pattern
    return float(match.group(1))


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_resources_are_sized_from_the_benchmarks(objects):
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]:
        for container in containers(workload):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), container["name"]
    settings = load_settings(config(objects))
    child_limit_mib = settings.worker_max_memory_per_child_kb / 1024
    libraries = _benchmark_mib(r"libraries \+ data loaded: (\d+) MiB")
    peaks = {
        "clm-worker-train": _benchmark_mib(r"XGBoost \*\*(\d+) MiB\*\*"),
        "clm-worker-eval": _benchmark_mib(r"`prepare_dataset` (\d+) MiB"),
    }
    deployments = by_kind(objects, "Deployment")
    for name, peak in peaks.items():
        resources = pod_spec(deployments[name])["containers"][0]["resources"]
        assert _mib(resources["requests"]["memory"]) >= peak + libraries, name
        # Celery recycles a pool process above the child limit after its task; the pod's
        # limit must leave room for it and the main process, or the kernel kills first.
        assert _mib(resources["limits"]["memory"]) >= child_limit_mib + libraries, name


def test_the_grafana_dashboard_ships_as_a_config_map(objects):
    dashboards = [c for c in by_kind(objects, "ConfigMap").values()
                  if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1
    assert json.loads(dashboards[0]["data"]["clm.json"]) == json.loads(DASHBOARD.read_text())


def test_the_manifests_run_the_project_image():
    images = {c["image"] for o in render(KUBE / "base") if o["kind"] in {"Deployment", "Job"}
              for c in containers(o)}
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    # The image compose.yaml builds from the Dockerfile (`build: .`).
    assert images == {compose["web"]["image"]} and compose["web"]["build"] == "."

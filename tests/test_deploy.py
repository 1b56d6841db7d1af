"""deploy/ (Kustomize base and the cpu and gpu overlays), checked without a cluster: every
rendered object validates against the Kubernetes schemas (strict) or, the ScaledObject, against
KEDA's CRD schema kept in deploy/schemas; the manifests agree with docker-compose.yml and the
images; the README's autoscaling table is what the ScaledObject does."""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from contract.jobs import RUNNING_KEY, queue_name
from contract.settings import Settings
from service import healthcheck

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
from render import render  # noqa: E402

OVERLAYS = ("cpu", "gpu")
# the oldest Kubernetes the manifests are for (autoscaling/v2, policy/v1, and KEDA 2.13+'s
# initialCooldownPeriod need no newer) and the newest schemas kubernetes-validate has
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
# settings only the cluster needs: workers there scale from zero (README, "Kubernetes")
CLUSTER_ONLY = {"api": {"DDNM_READY_WITHOUT_WORKERS"}, "worker": set()}


def rendered(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    objects = render(REPO / "deploy" / "overlays" / overlay)
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it does not allow them explicitly, as
    the API server's strict field validation (`kubectl apply --validate=strict`) does."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        if schema.get("type") == "object" and "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def scaledobject_schema() -> dict[str, Any]:
    """The CRD's schema, strict, with apiVersion and kind required to be the CRD's."""
    documents = yaml.safe_load_all((REPO / "deploy/schemas/keda.sh_scaledobjects.yaml").read_text())
    (crd,) = [d for d in documents if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"]["const"] = f"{crd['spec']['group']}/{version['name']}"
    schema["properties"]["kind"]["const"] = crd["spec"]["names"]["kind"]
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_strictly(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = {kind for kind, _ in objects}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "ConfigMap", "NetworkPolicy", "ScaledObject"} <= kinds
    for (kind, name), obj in objects.items():
        if kind == "ScaledObject":
            jsonschema.validate(obj, scaledobject_schema())
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "ddnm", (kind, name)


def test_validation_refuses_what_a_cluster_would() -> None:
    """The checks above are not vacuous: a misspelt field fails each of them."""
    objects = rendered("cpu")
    api = copy.deepcopy(objects["Deployment", "ddnm-api"])
    container(api)["readinesProbe"] = container(api).pop("readinessProbe")
    with pytest.raises(ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(api, KUBERNETES_VERSIONS[0], strict=True)
    scaled = copy.deepcopy(objects["ScaledObject", "ddnm-worker"])
    scaled["spec"]["cooldownPerod"] = scaled["spec"].pop("cooldownPeriod")
    with pytest.raises(jsonschema.ValidationError, match="cooldownPerod"):
        jsonschema.validate(scaled, scaledobject_schema())
    scaled = copy.deepcopy(objects["ScaledObject", "ddnm-worker"])
    scaled["apiVersion"] = "keda.sh/v1beta1"
    with pytest.raises(jsonschema.ValidationError, match="v1alpha1"):
        jsonschema.validate(scaled, scaledobject_schema())
    scaled = copy.deepcopy(objects["ScaledObject", "ddnm-worker"])
    scaled["spec"]["advanced"]["scalingModifiers"]["metricType"] = "Utilization"
    with pytest.raises(jsonschema.ValidationError, match="Utilization"):
        jsonschema.validate(scaled, scaledobject_schema())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendering_matches_kubectl_kustomize(overlay: str) -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout)}
    assert theirs == rendered(overlay)


def test_settings_carry_a_hash_of_their_content_in_their_name(tmp_path: Path) -> None:
    """As kustomize names a generated ConfigMap, so that a changed setting rolls the pods that
    read it: the API and the workers both refer to the suffixed name."""
    objects = rendered("cpu")
    (name,) = [n for kind, n in objects if kind == "ConfigMap"]
    assert re.fullmatch(r"ddnm-settings-[0-9a-z]{10}", name)
    for deployment in ("ddnm-api", "ddnm-worker"):
        (source,) = container(objects["Deployment", deployment])["envFrom"]
        assert source["configMapRef"]["name"] == name
    # the suffix kubectl kustomize (v5.5.0) gives literals B=2, A=1; a changed value changes it
    assert generated_name(tmp_path, ["B=2", "A=1"]) == "s-66h9cbh964"
    assert generated_name(tmp_path, ["B=2", "A=2"]) != "s-66h9cbh964"


def generated_name(folder: Path, literals: list[str]) -> str:
    generator = {"configMapGenerator": [{"name": "s", "literals": literals}]}
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(generator))
    (config_map,) = render(folder)
    return config_map["metadata"]["name"]


def environment(deployment: dict[str, Any], objects: dict) -> dict[str, str | None]:
    """Env names of the main container: its ConfigMaps' keys and its own entries (a Secret's
    value as None)."""
    main = container(deployment)
    names: dict[str, str | None] = {}
    for source in main.get("envFrom", []):
        names.update(objects["ConfigMap", source["configMapRef"]["name"]]["data"])
    for entry in main["env"]:
        names[entry["name"]] = entry.get("value")
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_compose_and_manifests_agree(overlay: str) -> None:
    objects = rendered(overlay)
    api, worker = objects["Deployment", "ddnm-api"], objects["Deployment", "ddnm-worker"]
    fields = {f"DDNM_{name.upper()}" for name in Settings.model_fields}
    for service, deployment in (("api", api), ("worker", worker)):
        names = set(environment(deployment, objects))
        assert names <= fields, names - fields
        assert names - CLUSTER_ONLY[service] == set(COMPOSE[service]["environment"]), service
    # ports: compose's published port, the container's, the Service's
    (published,) = COMPOSE["api"]["ports"]
    (port,) = container(api)["ports"]
    (service_port,) = objects["Service", "ddnm-api"]["spec"]["ports"]
    assert int(published.split(":")[1]) == port["containerPort"] == service_port["port"]
    assert service_port["targetPort"] == port["name"]
    # probes: the API's liveness is what compose's healthcheck asks for; the worker's, its command
    assert COMPOSE["api"]["healthcheck"]["test"] == ["CMD", "python", "-m", "service.healthcheck"]
    assert container(api)["livenessProbe"]["httpGet"]["path"] == healthcheck.PATH
    assert healthcheck.url(Settings(host="0.0.0.0")) == "http://127.0.0.1:8000/healthz"
    assert container(api)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    check = COMPOSE["worker"]["healthcheck"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container(worker)[probe]["exec"]["command"] == check["test"][1:]
    # no liveness probe on a worker: its check asks Redis, whose restart must not restart them
    assert "livenessProbe" not in container(worker)
    readiness = container(worker)["readinessProbe"]
    assert f"{readiness['periodSeconds']}s" == check["interval"]
    assert f"{readiness['timeoutSeconds']}s" == check["timeout"]
    assert readiness["failureThreshold"] == check["retries"]
    startup = container(worker)["startupProbe"]
    assert f"{startup['periodSeconds'] * startup['failureThreshold']}s" == check["start_period"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert f"{grace}s" == COMPOSE["worker"]["stop_grace_period"]
    # Redis: an append-only file, a memory cap that refuses writes, never evicts
    (redis,) = objects["StatefulSet", "ddnm-redis"]["spec"]["template"]["spec"]["containers"]
    for args in (redis["args"], COMPOSE["redis"]["command"]):
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
        assert "--maxmemory" in args
    assert redis["image"] == COMPOSE["redis"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis["image"])  # pinned
    url = urlsplit(environment(api, objects)["DDNM_REDIS_URL"] or "")
    redis_port = redis["ports"][0]["containerPort"]
    assert (url.hostname, url.port) == ("ddnm-redis", redis_port)
    assert objects["Service", "ddnm-redis"]["spec"]["ports"][0]["port"] == redis_port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_scaledobject_reads_the_served_models_lists(overlay: str) -> None:
    objects = rendered(overlay)
    model = environment(objects["Deployment", "ddnm-worker"], objects)["DDNM_MODEL"]
    triggers = {t["name"]: t for t in objects["ScaledObject", "ddnm-worker"]["spec"]["triggers"]}
    assert {name: t["type"] for name, t in triggers.items()} == {
        "waiting": "redis",
        "running": "redis",
    }
    assert triggers["waiting"]["metadata"]["listName"] == queue_name(model)
    assert triggers["running"]["metadata"]["listName"] == RUNNING_KEY.format(model)
    for trigger in triggers.values():
        assert trigger["metadata"]["address"] == "ddnm-redis.ddnm.svc.cluster.local:6379"
    assert objects["ScaledObject", "ddnm-worker"]["spec"]["scaleTargetRef"]["name"] == (
        "ddnm-worker"
    )


def test_gpu_workers_have_a_gpu_and_their_checkpoint_before_they_start() -> None:
    cpu, gpu = rendered("cpu"), rendered("gpu")
    worker = gpu["Deployment", "ddnm-worker"]
    model = environment(worker, gpu)["DDNM_MODEL"]
    assert model == "imagenet-256-uncond"
    assert environment(cpu["Deployment", "ddnm-worker"], cpu)["DDNM_MODEL"] == Settings().model
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert environment(worker, gpu)["DDNM_DEVICE"] == "cuda"
    (pull,) = worker["spec"]["template"]["spec"]["initContainers"]
    assert pull["image"] == container(worker)["image"]
    assert pull["command"][:4] == ["ddnm", "models", "pull", model]
    model_dir = environment(worker, gpu)["DDNM_MODEL_DIR"]
    assert pull["command"][pull["command"].index("--model-dir") + 1] == model_dir
    mounts = {m["mountPath"]: m["name"] for m in pull["volumeMounts"]}
    assert (
        mounts[model_dir]
        == {m["mountPath"]: m["name"] for m in container(worker)["volumeMounts"]}[model_dir]
    )
    assert "nvidia.com/gpu" not in str(cpu["Deployment", "ddnm-worker"])


def replicas(scaled: dict[str, Any], waiting: int, running: int) -> int:
    """The worker count KEDA and its HPA settle at for these list lengths (the formula's
    composite metric, AverageValue target: ceil(metric / target) within min and max; the
    minimum, zero, once the metric is at most the activation target for cooldownPeriod)."""
    spec = scaled["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "waiting + running"
    assert modifiers["metricType"] == "AverageValue"
    metric = waiting + running
    if metric <= float(modifiers["activationTarget"]):
        return spec["minReplicaCount"]
    wanted = math.ceil(metric / float(modifiers["target"]))
    return min(spec["maxReplicaCount"], max(1, spec["minReplicaCount"], wanted))


def leading_int(cell: str) -> int:
    found = re.match(r"\d+", cell)
    assert found, cell
    return int(found.group())


def readme_scaling_table() -> dict[int, dict[str, int]]:
    """The README's table: jobs -> {overlay: workers}."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Autoscaling the workers", 1)[1].split("\n#", 1)[0]
    header, *rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ]
    overlays = [cell.split("`")[1] for cell in header[1:]]
    return {
        leading_int(row[0]): {o: leading_int(c) for o, c in zip(overlays, row[1:], strict=True)}
        for row in rows
    }


def test_the_readme_says_what_keda_does_for_0_1_10_and_100_jobs() -> None:
    table = readme_scaling_table()
    assert sorted(table) == [0, 1, 10, 100]
    for overlay in OVERLAYS:
        scaled = rendered(overlay)["ScaledObject", "ddnm-worker"]
        slots = Settings().worker_slots
        assert float(scaled["spec"]["advanced"]["scalingModifiers"]["target"]) == slots
        for depth, expected in table.items():
            # a burst: `depth` jobs waiting, none running yet; and the same jobs once running
            assert replicas(scaled, depth, 0) == expected[overlay], (overlay, depth)
            assert replicas(scaled, 0, depth) == expected[overlay], (overlay, depth)


def test_compose_validates_with_podman_compose() -> None:
    """`podman-compose config` (PyPI; it needs Debian's podman) accepts the compose file, and
    refuses it without API keys."""
    tool = Path(sys.executable).parent / "podman-compose"
    if shutil.which("podman") is None and not os.environ.get("DDNM_REQUIRE_TOOLS"):
        pytest.skip("podman is not installed (.ci/run installs it)")
    command = [str(tool), "-f", str(REPO / "docker-compose.yml"), "config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDNM_")}
    done = subprocess.run(
        command, capture_output=True, text=True, env={**env, "DDNM_API_KEYS": "k1"}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == set(COMPOSE)
    assert config["services"]["api"]["environment"]["DDNM_API_KEYS"] == "k1"
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "DDNM_API_KEYS" in refused.stdout + refused.stderr

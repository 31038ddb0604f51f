"""KubeRay manifests (deploy/kuberay/*.yaml) against KubeRay's CRD schema, and the settings that keep them closed.

Every YAML document is validated against the `v1` openAPIV3Schema of the CRD its `kind` names, from
deploy/kuberay/schema/ (KubeRay v1.6.2, see SOURCE.md), with jsonschema, the way `kubectl apply --validate=strict`
reads a structural schema: an object schema that lists `properties` and has neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` is closed (the API server would silently prune a misspelled field; strict
validation rejects it, and so does this test); `x-kubernetes-int-or-string` takes an integer or a string;
`nullable` takes null. CEL rules (`x-kubernetes-validations`) and `format`s are not evaluated.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
SCHEMAS = sorted((KUBERAY / "schema").glob("*.yaml"))
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TOKEN_KEY = "auth_token"  # the key KubeRay reads from authOptions.secretName (RAY_AUTH_TOKEN_SECRET_KEY)
ROLES = {"learner": 4, "rollout": 2, "teacher": 2}  # configs/plans/cluster-roles.yaml: GPUs (= resource units)


def closed_schema(node: dict) -> dict:
    """A Kubernetes structural schema node as plain JSON Schema (see the module docstring)."""
    out = dict(node)
    if "properties" in node:
        out["properties"] = {name: closed_schema(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("additionalProperties", "items", "not"):
        if isinstance(node.get(key), dict):
            out[key] = closed_schema(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [closed_schema(sub) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def validators() -> dict[str, jsonschema.Draft7Validator]:
    """kind → a validator for the CRD's v1 schema."""
    out = {}
    for path in SCHEMAS:
        crd = yaml.load(path.read_text(), Loader=LOADER)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io", path
        (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(closed_schema(v1["schema"]["openAPIV3Schema"]))
    return out


def errors(doc: dict) -> list[str]:
    found = sorted(validators()[doc["kind"]].iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message[:200]}" for e in found]


def load_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}[{i}]", doc))
    return docs


DOCS = load_documents()
DOC_PARAMS = [pytest.param(doc, id=name) for name, doc in DOCS]


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def head_container(spec: dict) -> dict:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def pod_specs(doc: dict) -> dict[str, dict]:
    """Ray pods by group ('head' and each worker group), as pod specs."""
    spec = cluster_spec(doc)
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in spec.get("workerGroupSpecs", [])})
    return pods


def containers(doc: dict) -> dict[str, dict]:
    """Every container the manifest declares (Ray pods, init containers, the RayJob's submitter)."""
    pods = dict(pod_specs(doc))
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        pods["submitter"] = doc["spec"]["submitterPodTemplate"]["spec"]
    return {
        f"{pod}/{container['name']}": container
        for pod, spec in pods.items()
        for container in spec.get("initContainers", []) + spec["containers"]
    }


def test_manifests_and_schemas_are_there():
    assert {path.name for path in MANIFESTS} >= {"raycluster.yaml", "rayjob.yaml"}
    assert set(validators()) == {"RayCluster", "RayJob"}
    assert (KUBERAY / "schema" / "SOURCE.md").is_file()
    for validator in validators().values():
        jsonschema.Draft7Validator.check_schema(validator.schema)
    assert len(by_kind("RayCluster")) == 1 and len(by_kind("RayJob")) == 1


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_manifest_validates_against_the_kuberay_crd(doc):
    assert doc.get("apiVersion") == "ray.io/v1"
    assert doc.get("kind") in validators(), f"no KubeRay CRD for kind {doc.get('kind')!r}: keep other kinds out"
    assert errors(doc) == []


def rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


BREAKAGES = {
    "misspelled workerGroupSpecs": lambda s: rename(s, "workerGroupSpecs", "workerGroupSpec"),
    "replicas as a word": lambda s: s["workerGroupSpecs"][0].update(replicas="two"),
    "unquoted rayStartParams number": lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
    "unknown auth mode": lambda s: s["authOptions"].update(mode="on"),
    "misspelled container field": lambda s: rename(head_container(s), "volumeMounts", "volumeMount"),
    "quantity that is not one": lambda s: head_container(s)["resources"]["limits"].update(cpu="lots"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_a_broken_copy_fails_validation(doc, breakage):
    broken = copy.deepcopy(doc)
    BREAKAGES[breakage](cluster_spec(broken))
    assert errors(broken), f"{breakage}: the broken manifest passed"


@pytest.mark.parametrize("cpu", [8, "8", "7500m"])
def test_int_or_string_fields_take_either(cpu):
    doc = copy.deepcopy(by_kind("RayCluster")[0])
    head_container(doc["spec"])["resources"]["limits"]["cpu"] = cpu
    assert errors(doc) == []


def test_rayjob_runs_the_raycluster_spec():
    (cluster,), (job,) = by_kind("RayCluster"), by_kind("RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_token_secret_reaches_every_container(doc):
    auth = cluster_spec(doc)["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    wanted = {"name": auth["secretName"], "key": TOKEN_KEY}
    found = containers(doc)
    assert {"head/ray-head", "learner/ray-worker", "rollout/ray-worker", "teacher/ray-worker"} <= set(found)
    if doc["kind"] == "RayJob":
        assert "submitter/ray-job-submitter" in found
    for name, container in found.items():
        env = {var["name"]: var for var in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", name
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref is not None and "value" not in env["RAY_AUTH_TOKEN"], f"{name}: token not from a Secret"
        assert {k: ref[k] for k in ("name", "key")} == wanted and not ref.get("optional"), name


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_dashboard_and_teacher_port_stay_off_public_interfaces(doc):
    head = cluster_spec(doc)["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    # Listing the head's ports keeps KubeRay from adding its defaults, `serve` (8000) among them.
    assert head_container(cluster_spec(doc)).get("ports"), "head ports not listed"
    for name, pod in pod_specs(doc).items():
        assert not pod.get("hostNetwork"), name
    for name, container in containers(doc).items():
        for port in container.get("ports", []):
            assert "hostPort" not in port, name
            assert not port.get("name", "").startswith("serve"), name
            assert port["containerPort"] not in (8000, 8321), name  # Serve's default, teacher.http_port's


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_roles_have_their_own_worker_groups(doc):
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == ray_version_of_the_image()
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0" and "resources" not in head["rayStartParams"]
    assert "nvidia.com/gpu" not in head_container(spec)["resources"].get("limits", {})
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == set(ROLES)
    for role, gpus in ROLES.items():
        group = groups[role]
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1, role
        assert advertised(group) == {role: gpus}, role
        assert gpu_limit(group) == gpus, role


@pytest.mark.parametrize("doc", DOC_PARAMS)
def test_every_pod_runs_the_image_and_shares_storage(doc):
    image = image_of_the_dockerfile()
    for name, container in containers(doc).items():
        assert container["image"] == image, name
    for name, pod in pod_specs(doc).items():
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in pod["containers"][0]["volumeMounts"]}
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", name
        assert "persistentVolumeClaim" in mounts["/app/runs"], name  # output_dir: checkpoints every node writes
        assert "persistentVolumeClaim" in mounts["/home/ray/.cache/huggingface"], name
        assert pod["containers"][0]["workingDir"] == "/app", name


def test_rayjob_entrypoint_is_one_command_that_fits_the_cluster():
    (job,) = by_kind("RayJob")
    entrypoint = job["spec"]["entrypoint"]
    # KubeRay pastes it unquoted into the submitter's `bash -c` line: an operator would run in the submitter pod.
    assert not re.search(r"[;&|`$<>()]", entrypoint), entrypoint
    program, command, config, *rest = shlex.split(entrypoint)
    assert (program, command) == ("dudi", "train")
    assert [p for p in [config, *rest] if "=" not in p and not (ROOT / p).is_file()] == [], "config files missing"
    cfg = load_config(ROOT / config, [str(ROOT / p) if "=" not in p else p for p in rest])
    check_config_fits(cfg, job["spec"]["rayClusterSpec"])


def check_config_fits(cfg, spec: dict) -> None:
    """The run's roles, as the config sizes them, fill exactly the worker group of their name."""
    assert cfg.ray.address == "auto"
    assert str(cfg.run_dir).startswith("/app/runs/"), "output_dir must be on the shared PVC"
    assert cfg.teacher.http_host == "127.0.0.1"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    roles = {  # role: its config section, and the names of its count and per-unit fields there
        "learner": (cfg.learner, "num_ranks", "rank"),
        "rollout": (cfg.rollout, "num_workers", "worker"),
        "teacher": (cfg.teacher, "num_replicas", "replica"),
    }
    for role, (section, count_field, unit) in roles.items():
        count, resources = getattr(section, count_field), section.resources
        gpus, cpus = getattr(section, f"num_gpus_per_{unit}"), getattr(section, f"num_cpus_per_{unit}")
        group = groups[role]
        assert set(resources) == {role}, f"{role}.resources must ask for the `{role}` resource only"
        assert count * resources[role] == advertised(group)[role], role
        assert count * gpus == gpu_limit(group), role
        assert count * cpus <= float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]), role


def advertised(group: dict) -> dict[str, float]:
    """The custom resources a worker group's `ray start --resources` advertises (quotes are for KubeRay's shell)."""
    return json.loads(group["rayStartParams"]["resources"].strip("'\" "))


def gpu_limit(group: dict) -> int:
    return int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])


def dockerfile() -> str:
    return (ROOT / "deploy" / "Dockerfile").read_text()


def ray_version_of_the_image() -> str:
    return re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", dockerfile(), re.M).group(1)


def image_of_the_dockerfile() -> str:
    return re.search(r"docker build -f deploy/Dockerfile -t (\S+)", dockerfile()).group(1)

"""The Ray cluster launcher configs (deploy/cluster/*.yaml) pass Ray's own validation, as `ray up` runs it, give
every role of configs/plans/cluster-roles.yaml the nodes it asks for, and keep the door shut: token auth on every
`ray start`, the dashboard on the head's loopback, no rule that opens the dashboard or the teacher to the world.

Nothing here talks to a cloud: the checks stop where `ray up` would first need credentials (see `ray_up_validation`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "configs" / "plans" / "cluster-roles.yaml"
PAIR = ROOT / "configs" / "qwen2.5-3b-to-0.5b.yaml"
ROLES = ("learner", "rollout", "teacher")
TOKEN_FILE = "~/.ray/auth_token"
# Ports that must never be open to the world: dashboard + job API, the teacher's Serve HTTP port, the GCS.
PRIVATE_PORTS = (8265, 8321, 6379)
# GPUs of the machine types the cloud configs use; a node type's "GPU" must say the same (a new machine type goes here).
MACHINE_GPUS = {
    "m6i.2xlarge": 0,
    "g6e.2xlarge": 1,  # 1× L40S
    "g6e.12xlarge": 4,  # 4× L40S
    "n2-standard-8": 0,
    "g2-standard-24": 2,  # 2× L4
    "a2-highgpu-4g": 4,  # 4× A100 40 GB
}


def _yaml_documents(path: Path) -> list:
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError:
        return []  # not ours to judge here (tests/test_config.py parses every deploy manifest)


def _is_cluster_config(doc) -> bool:
    """A Ray cluster launcher config (what `ray up` takes), as opposed to a KubeRay manifest or anything else."""
    return isinstance(doc, dict) and "cluster_name" in doc and isinstance(doc.get("provider"), dict)


CLUSTER_YAMLS = sorted(
    p for p in (ROOT / "deploy").rglob("*.yaml") if any(_is_cluster_config(d) for d in _yaml_documents(p))
)
ids = [str(p.relative_to(ROOT / "deploy")) for p in CLUSTER_YAMLS]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def provider_type(path: Path) -> str:
    return load(path)["provider"]["type"]


CLOUD_YAMLS = [p for p in CLUSTER_YAMLS if provider_type(p) != "local"]
LOCAL_YAMLS = [p for p in CLUSTER_YAMLS if provider_type(p) == "local"]


def ray_schema() -> dict:
    # The file validate_config reads.
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def ray_up_validation(raw: dict) -> dict:
    """Ray's checks of a cluster config in `ray up`'s order, up to the first step that needs a cloud account.

    `ray up` = commands.create_or_update_cluster → _bootstrap_config:
      1. prepare_config: fillout_defaults (merge with the provider's defaults.yaml), merge_setup_commands,
         validate_docker_config, fill_node_type_min_max_workers; on-prem configs go through prepare_local first;
      2. provider_cls.fillout_available_node_types_resources (AWS: ec2 describe-instance-types; ray up only warns
         when it fails);
      3. validate_config: ray-schema.json, then the node-type / max_workers checks;
      4. provider_cls.bootstrap_config (AWS: IAM role, key pair, subnets, security group; GCP: project, service
         account, SSH key, subnet: all need credentials and the network).
    For AWS and GCP this runs 1 and 3 and stops before 2 and 4 (importing their node providers needs boto3 /
    google-api-python-client too). The local provider needs no network, so for it the whole of _bootstrap_config
    runs (its fillout is the base class's no-op and its bootstrap_config is bootstrap_local).

    Before that, the schema is applied to the file as written: fillout_defaults and prepare_local silently drop a
    top-level `min_workers` (the pre-node-types field), so `ray up` would accept one that means nothing.
    """
    jsonschema.validate(raw, ray_schema())
    if raw["provider"]["type"] == "local":
        return _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def plan_demands() -> dict[str, tuple[int, dict[str, float]]]:
    """role → (units, resources of one unit) for the 8-GPU cluster plan, as the components ask Ray for them."""
    cfg = load_config(PAIR, [str(PLAN)])
    units = {
        "learner": (cfg.learner.num_ranks, cfg.learner.num_cpus_per_rank, cfg.learner.num_gpus_per_rank),
        "rollout": (cfg.rollout.num_workers, cfg.rollout.num_cpus_per_worker, cfg.rollout.num_gpus_per_worker),
        "teacher": (cfg.teacher.num_replicas, cfg.teacher.num_cpus_per_replica, cfg.teacher.num_gpus_per_replica),
    }
    out = {}
    for role, (count, cpus, gpus) in units.items():
        bundle = {"CPU": cpus, "GPU": gpus, **getattr(cfg, role).resources}
        out[role] = (count, {k: v for k, v in bundle.items() if v})
    return out


def fits(node: dict[str, float], unit: dict[str, float]) -> int:
    """How many units one node holds."""
    return min(int(node.get(k, 0) / v + 1e-9) for k, v in unit.items())


def coverage_problems(config: dict) -> list[str]:
    """What keeps the cloud config's node types from holding the plan; [] when they hold it."""
    problems = []
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    if head.get("CPU", 1) != 0 or head.get("GPU", 0) or any(head.get(r) for r in ROLES):
        problems.append(f"the head must advertise CPU 0, no GPU and no role: {head}")
    for name, node_type in types.items():
        kind = node_type["node_config"].get("InstanceType") or node_type["node_config"].get("machineType")
        if kind not in MACHINE_GPUS:
            problems.append(f"{name}: unknown machine type {kind!r} (add its GPU count to MACHINE_GPUS)")
        elif node_type["resources"].get("GPU", 0) != MACHINE_GPUS[kind]:
            problems.append(f"{name}: {kind} has {MACHINE_GPUS[kind]} GPU(s), resources say {node_type['resources']}")
    for role, (count, unit) in plan_demands().items():
        if role not in unit:
            problems.append(f"cluster-roles.yaml: {role}.resources must ask for {{{role}: 1}}")
            continue
        if role not in types:
            problems.append(f"no node type named {role!r}")
            continue
        res = types[role]["resources"]
        per_node = fits(res, unit)
        if per_node < 1:
            problems.append(f"{role}: one unit {unit} does not fit one node {res}")
        if per_node * types[role]["min_workers"] < count:
            problems.append(f"{role}: {types[role]['min_workers']} node(s) × {per_node} < {count} units of {unit}")
        if res.get(role, 0) * unit.get("GPU", 0) != res.get("GPU", 0):
            problems.append(f"{role}: advertise one {role} unit per {unit.get('GPU')} GPU(s), not {res}")
        others = [name for name, t in types.items() if name != role and t["resources"].get(role)]
        if others:
            problems.append(f"{role}: node types {others} advertise it too")
    return problems


def _ray_starts(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bray start\b", c)]


def _opens_to_world(rule: dict, port: int) -> bool:
    world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
        r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
    )
    if not world:
        return False
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)


def door_problems(config: dict) -> list[str]:
    """What leaves the cluster open (on the prepared config, so Ray's defaults count too); [] when it is shut."""
    problems = []
    heads = _ray_starts(config["head_start_ray_commands"])
    workers = _ray_starts(config["worker_start_ray_commands"])
    if len(heads) != 1 or "--head" not in heads[0]:
        problems.append(f"exactly one `ray start --head` in head_start_ray_commands: {heads}")
    if not workers:
        problems.append("no `ray start` in worker_start_ray_commands")
    for cmd in heads:
        if not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", cmd):
            problems.append(f"the head must bind the dashboard to 127.0.0.1: {cmd!r}")
        if not re.search(r"--num-cpus[= ]0\b", cmd):
            problems.append(f"the head must start with --num-cpus=0: {cmd!r}")
    for cmd in heads + workers:
        if "RAY_AUTH_MODE=token" not in cmd:
            problems.append(f"`ray start` without RAY_AUTH_MODE=token: {cmd!r}")
    every = [
        c
        for key in (
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
        for c in config.get(key, [])
    ]
    for cmd in every:
        if "0.0.0.0" in cmd or "[::]" in cmd or re.search(r"--dashboard-host[= ]::", cmd):
            problems.append(f"binds a public interface: {cmd!r}")
        if re.search(r"RAY_AUTH_MODE=(?!token\b)", cmd):
            problems.append(f"turns token auth off: {cmd!r}")
    mounts = {os.path.normpath(k): v for k, v in config.get("file_mounts", {}).items()}
    if mounts.get(os.path.normpath(TOKEN_FILE)) != TOKEN_FILE:
        problems.append(f"file_mounts must carry {TOKEN_FILE} to {TOKEN_FILE} (the token every node reads)")
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        for port in PRIVATE_PORTS:
            if _opens_to_world(rule, port):
                problems.append(f"security_group opens port {port} to the world: {rule}")
    return problems


def test_the_cluster_configs_are_the_three_launchers():
    assert [p.relative_to(ROOT / "deploy").as_posix() for p in CLUSTER_YAMLS] == [
        "cluster/aws.yaml",
        "cluster/gcp.yaml",
        "cluster/local.yaml",
    ]
    assert sorted(provider_type(p) for p in CLUSTER_YAMLS) == ["aws", "gcp", "local"]


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=ids)
def test_ray_accepts_the_cluster_config(path):
    config = ray_up_validation(load(path))
    types = config["available_node_types"]
    # Every node the plan needs starts with the cluster, and no more (on-prem: one node type, every host).
    assert sum(t["min_workers"] for t in types.values()) == config["max_workers"]
    if config["provider"]["type"] != "local":
        assert types[config["head_node_type"]]["max_workers"] == 0
        assert all(t["min_workers"] == t["max_workers"] for t in types.values())


def test_a_top_level_min_workers_is_rejected():
    raw = load(ROOT / "deploy" / "cluster" / "aws.yaml")
    raw["min_workers"] = 2  # what the old deploy/cluster.yaml had
    with pytest.raises(jsonschema.ValidationError, match="'min_workers' was unexpected"):
        ray_up_validation(raw)
    # ... which only the check of the file as written catches: `ray up`'s own steps drop the field.
    validate_config(prepare_config(copy.deepcopy(raw)))


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda c: c["available_node_types"]["learner"].update(num_gpus=4), "'num_gpus' was unexpected"),
        (lambda c: c["available_node_types"]["rollout"]["resources"].update(GPU=0.5), "is not of type 'integer'"),
        (lambda c: c.update(head_node_type="ray.head.default"), "must be one of `available_node_types`"),
        (lambda c: c.update(max_workers=1), "smaller than the sum of `min_workers`"),
    ],
    ids=["misplaced-field", "fractional-resource", "unknown-head-type", "max-below-min"],
)
def test_rays_validation_rejects_broken_node_types(mutate, error):
    raw = load(ROOT / "deploy" / "cluster" / "aws.yaml")
    mutate(raw)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(error)):
        ray_up_validation(raw)


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=[p.name for p in CLOUD_YAMLS])
def test_cloud_node_types_hold_the_cluster_plan(path):
    assert coverage_problems(ray_up_validation(load(path))) == []


def test_the_coverage_check_fails_when_a_role_is_short():
    config = ray_up_validation(load(ROOT / "deploy" / "cluster" / "aws.yaml"))
    config["available_node_types"]["learner"]["resources"]["learner"] = 2
    config["available_node_types"]["teacher"]["min_workers"] = 1
    problems = coverage_problems(config)
    assert any(p.startswith("learner:") for p in problems) and any(p.startswith("teacher:") for p in problems)


@pytest.mark.parametrize("path", LOCAL_YAMLS, ids=[p.name for p in LOCAL_YAMLS])
def test_local_hosts_hold_the_cluster_plan(path):
    """On-prem hosts take their role from `ray start --resources` (Ray counts their GPUs itself)."""
    raw = load(path)
    (start,) = _ray_starts(raw["worker_start_ray_commands"])
    arms = re.findall(r"\*\" (\S+) \"\*\) ROLE='(\{.*?\})'", start)
    assert sorted(host for host, _ in arms) == sorted(raw["provider"]["worker_ips"])
    advertised: dict[str, float] = {}
    for _, role in arms:
        for key, value in json.loads(role).items():
            advertised[key] = advertised.get(key, 0) + value
    for role, (count, unit) in plan_demands().items():
        assert advertised.get(role, 0) >= count * unit[role], (role, advertised)
    assert '--resources="$ROLE"' in start


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=ids)
def test_the_door_stays_shut(path):
    assert door_problems(ray_up_validation(load(path))) == []
    assert load_config(PAIR, [str(PLAN)]).teacher.http_host == "127.0.0.1"


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (
            lambda c: c["head_start_ray_commands"].__setitem__(-1, "ray start --head --dashboard-host=0.0.0.0"),
            "127.0.0.1",
        ),
        (lambda c: c["worker_start_ray_commands"].__setitem__(-1, "ray start --address=$RAY_HEAD_IP:6379"), "without"),
        (lambda c: c.pop("head_start_ray_commands"), "127.0.0.1"),  # Ray's defaults: dashboard on 0.0.0.0
        (lambda c: c["file_mounts"].pop(TOKEN_FILE), TOKEN_FILE),
        (
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ),
            "port 8265",
        ),
    ],
    ids=["dashboard-on-0.0.0.0", "worker-without-token", "default-start-commands", "no-token-mount", "open-8265"],
)
def test_the_door_check_fails_when_left_open(mutate, problem):
    raw = load(ROOT / "deploy" / "cluster" / "aws.yaml")
    mutate(raw)
    assert any(problem in p for p in door_problems(ray_up_validation(raw)))


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=ids)
def test_every_node_gets_the_project(path):
    config = ray_up_validation(load(path))
    assert "." in config["file_mounts"].values()
    assert any("deploy/install.sh" in c for c in config["head_setup_commands"])
    assert any("deploy/install.sh" in c for c in config["worker_setup_commands"])
    assert ".gitignore" in config["rsync_filter"]  # not the laptop's .venv or runs/

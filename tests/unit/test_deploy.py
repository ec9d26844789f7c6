"""deploy/ keeps Redis closed: auth required, protected mode, secrets, network policy (read statically)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
PLACEHOLDER = "REPLACE-WITH-A-GENERATED-PASSWORD"


def directives(conf: str) -> dict[str, list[str]]:
    """redis.conf's directives (comments dropped): name -> the argument strings, in order."""
    found: dict[str, list[str]] = {}
    for line in conf.splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            found.setdefault(words[0].lower(), []).append(words[1] if len(words) > 1 else "")
    return found


def manifests() -> dict[str, dict[str, Any]]:
    """Every object kustomization.yaml deploys, by ``Kind/name``."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def acl_rules() -> list[str]:
    text = (DEPLOY / "redis-users.acl").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_redis_conf_requires_login_and_keeps_protected_mode() -> None:
    """redis.conf: protected-mode yes, users from an ACL file, no empty or literal password."""
    conf = directives((DEPLOY / "redis.conf").read_text())
    assert conf["protected-mode"] == ["yes"]
    assert conf["aclfile"], "redis.conf must load its users from the ACL file"
    assert "requirepass" not in conf and "user" not in conf, "no password in redis.conf"
    assert conf["appendonly"] == ["yes"] and conf["maxmemory-policy"] == ["noeviction"]


def test_acl_template_disables_default_user_and_limits_wf() -> None:
    """The ACL: default off; `wf` has a hashed password placeholder, keys wf:* only, no broad grants."""
    rules = acl_rules()
    assert rules[0] == "user default off"
    (wf,) = (r.split() for r in rules if r.startswith("user wf "))
    assert "#@WF_PASSWORD_SHA256@" in wf, "the password is filled in at start, as a hash"
    assert not any(w.startswith(">") for w in wf), "no literal password in the template"
    assert "nopass" not in wf and "allkeys" not in wf and "allcommands" not in wf
    assert [w for w in wf if w.startswith("~") or w.startswith("%")] == ["~wf:*"]
    assert "resetchannels" in wf and "-@all" in wf
    grants = [w for w in wf if w.startswith("+")]
    assert not [g for g in grants if "@" in g], "grants name commands, not categories"
    for forbidden in ("+config", "+keys", "+flushall", "+flushdb", "+debug", "+eval"):
        assert not [g for g in grants if g == forbidden or g.startswith(forbidden + "|")]


def test_entrypoint_refuses_missing_or_placeholder_password(tmp_path: Path) -> None:
    """redis-entrypoint.sh exits before starting Redis without a password, or with a short or placeholder one."""
    for password in (None, "", "short-password", PLACEHOLDER):
        env = {"PATH": os.environ["PATH"], "REDIS_ACL_FILE": str(tmp_path / "users.acl")}
        if password is not None:
            env["REDIS_PASSWORD"] = password
        done = subprocess.run(
            ["sh", str(DEPLOY / "redis-entrypoint.sh")], env=env, capture_output=True, text=True
        )
        assert done.returncode == 1 and "REDIS_PASSWORD" in done.stderr, (password, done)
        assert not (tmp_path / "users.acl").exists()


def test_compose_keeps_redis_off_public_interfaces_and_passwords_out_of_the_file() -> None:
    """compose.yaml: Redis through the entrypoint, secrets from an env file, no port beyond loopback."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    redis, worker = compose["services"]["redis"], compose["services"]["worker"]
    for port in redis.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"Redis published beyond loopback: {port}"
    assert "redis-entrypoint.sh" in " ".join(redis["entrypoint"])
    assert redis["env_file"] == worker["env_file"] == "./secrets/redis.env"
    env = worker.get("environment", {})
    assert "WORKFLOW_REDIS_URL" not in env, "the URL (with its password) comes from the env file"
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    values = json.dumps(compose)  # comments dropped: they show the format with PASSWORD
    assert not re.search(r"rediss?://[^@\s\"]*:[^@\s\"]+@", values), "a password in compose.yaml"
    assert "REDIS_PASSWORD" not in values.replace("$$REDIS_PASSWORD", "")
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored


def test_k8s_worker_url_and_redis_password_come_from_the_secret() -> None:
    """k8s: worker's WORKFLOW_REDIS_URL and Redis's password are secretKeyRefs to redis-auth."""
    objects = manifests()
    assert not [k for k in objects if k.startswith("Secret/")], "the Secret is created by hand"
    (worker,) = objects["Deployment/wf-worker"]["spec"]["template"]["spec"]["containers"]
    url = next(e for e in worker["env"] if e["name"] == "WORKFLOW_REDIS_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "url"}
    (redis,) = objects["StatefulSet/redis"]["spec"]["template"]["spec"]["containers"]
    password = next(e for e in redis["env"] if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    assert "redis-entrypoint.sh" in " ".join(redis["command"])
    example = yaml.safe_load((K8S / "redis-auth-secret.example.yaml").read_text())
    assert example["metadata"]["name"] == "redis-auth"
    secret = example["stringData"]
    assert set(secret) == {"password", "url", "keda-username", "keda-password"}
    assert PLACEHOLDER in secret["password"] and PLACEHOLDER in secret["url"]
    assert secret["keda-password"] == PLACEHOLDER
    assert secret["keda-username"] == "keda" and any(
        r.startswith("user keda ") for r in acl_rules()
    )
    stateful_keda = next(e for e in redis["env"] if e["name"] == "KEDA_PASSWORD")
    assert stateful_keda["valueFrom"]["secretKeyRef"]["key"] == "keda-password"


def test_k8s_network_policy_admits_only_workflow_pods_to_redis() -> None:
    """A NetworkPolicy selects the Redis pods and admits only the worker (and wf-serve) pods."""
    objects = manifests()
    redis_labels = objects["StatefulSet/redis"]["spec"]["template"]["metadata"]["labels"]
    worker_labels = objects["Deployment/wf-worker"]["spec"]["template"]["metadata"]["labels"]
    policies = [o for k, o in objects.items() if k.startswith("NetworkPolicy/")]
    (policy,) = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    ]
    assert "Ingress" in policy["spec"]["policyTypes"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert all("ipBlock" not in peer and "podSelector" in peer for peer in peers)
    local = [p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
    assert local and all(set(peer) == {"app.kubernetes.io/name"} for peer in local)
    assert {peer["app.kubernetes.io/name"] for peer in local} <= {"wf-worker", "wf-serve"}
    assert any(peer.items() <= worker_labels.items() for peer in local)
    # from another namespace: KEDA's operator only (the autoscaler reads the lag)
    remote = [p for p in peers if "namespaceSelector" in p]
    assert [p["namespaceSelector"]["matchLabels"] for p in remote] == [
        {"kubernetes.io/metadata.name": "keda"}
    ]
    assert [p["podSelector"]["matchLabels"] for p in remote] == [
        {"app.kubernetes.io/name": "keda-operator"}
    ]


def test_k8s_configmap_is_a_copy_of_the_deploy_files() -> None:
    """redis-configmap.yaml holds exactly deploy/redis.conf, redis-users.acl, redis-entrypoint.sh."""
    data = manifests()["ConfigMap/redis-config"]["data"]
    for name in ("redis.conf", "redis-users.acl", "redis-entrypoint.sh"):
        assert data[name] == (DEPLOY / name).read_text(), f"regenerate the ConfigMap: {name}"


def test_readme_shows_the_deployed_acl_rule() -> None:
    """The README's "Securing Redis" rule is the one in deploy/redis-users.acl."""
    readme = (DEPLOY.parent / "README.md").read_text()
    for rule in acl_rules():
        assert re.sub(r"#@[A-Z]+_PASSWORD_SHA256@", ">PASSWORD", rule) in readme, rule


# -- the commands the manifests run, parsed by the real `wf` parser -----------------------------


def dockerfile_instruction(name: str) -> list[str]:
    """The arguments of the Dockerfile's last ``name`` instruction (exec form) or its words."""
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith(name)]
    value = lines[-1].removeprefix(name).strip()
    return json.loads(value) if value.startswith("[") else value.split()


def parse_wf(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Namespace:
    """``argv`` as ``wf`` reads it with ``env`` (argparse and its checks; the command is not run)."""
    from worker import _cli

    for name in [n for n in os.environ if n.startswith("WORKFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parsed: list[Namespace] = []
    monkeypatch.setattr(_cli, "configure", lambda: None)
    monkeypatch.setattr(_cli, "import_workflow_modules", lambda modules: None)
    monkeypatch.setattr(_cli, "run_command", lambda args: parsed.append(args) or 0)
    with pytest.raises(SystemExit) as done:
        _cli.main(argv)
    assert done.value.code == 0, f"wf refuses {argv}"
    return parsed[0]


def k8s_worker() -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The worker container, its ``wf`` argv (image ENTRYPOINT + args) and its literal env."""
    (worker,) = manifests()["Deployment/wf-worker"]["spec"]["template"]["spec"]["containers"]
    assert "command" not in worker, "the image's ENTRYPOINT runs `wf worker`"
    argv = dockerfile_instruction("ENTRYPOINT") + worker["args"]
    return worker, argv, {e["name"]: e["value"] for e in worker["env"] if "value" in e}


def compose_worker() -> tuple[dict[str, Any], list[str]]:
    """compose's worker service and its ``wf`` argv."""
    worker = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["worker"]
    entrypoint = worker.get("entrypoint") or dockerfile_instruction("ENTRYPOINT")
    return worker, entrypoint + worker["command"]


def worker_argvs() -> list[list[str]]:
    """Every ``wf`` command line deploy/ runs: the image's default, k8s and compose workers."""
    image = dockerfile_instruction("ENTRYPOINT") + dockerfile_instruction("CMD")
    return [image, k8s_worker()[1], compose_worker()[1]]


def test_image_runs_wf_worker_as_a_numeric_non_root_user() -> None:
    """The image: exec-form `wf worker` entrypoint, numeric non-root USER, the pod runs as it."""
    assert dockerfile_instruction("ENTRYPOINT")[:2] == ["wf", "worker"]
    uid, gid = dockerfile_instruction("USER")[0].split(":")
    assert int(uid) > 0 and int(gid) > 0
    pod = manifests()["Deployment/wf-worker"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == int(uid)
    assert pod["runAsGroup"] == int(gid)


def test_every_worker_command_parses_and_imports_shipped_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image's, k8s's and compose's `wf worker` lines pass `wf`'s own parser, and the
    modules they import are files the image copies."""
    copies = [
        ln.split()[1]
        for ln in (DEPLOY / "Dockerfile").read_text().splitlines()
        if ln.startswith("COPY ") and "--from" not in ln
    ]
    for argv in worker_argvs():
        assert argv[0] == "wf"
        args = parse_wf(argv[1:], {}, monkeypatch)
        assert args.command == "worker"
        for module in args.modules:
            path = Path(*module.split("."))
            assert (DEPLOY.parent / path.with_suffix(".py")).is_file(), module
            assert path.parts[0] in copies, f"{module} is not copied into the image"


def test_k8s_probes_and_metrics_port_match_the_worker_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """k8s: liveness and readiness read /healthz at --health-port on loopback (exec, python, no
    shell); the named port `metrics` and the scrape annotation are --metrics-port, which listens
    beyond loopback."""
    worker, argv, env = k8s_worker()
    args = parse_wf(argv[1:], env, monkeypatch)
    assert args.health_port and args.health_host == "127.0.0.1"
    for probe in (worker["livenessProbe"], worker["readinessProbe"]):
        assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set()
        command = probe["exec"]["command"]
        assert command[0] == "python", "the image needs no shell"
        assert f"http://127.0.0.1:{args.health_port}/healthz" in command[-1]
    assert args.metrics_port and args.metrics_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"metrics": args.metrics_port}
    template = manifests()["Deployment/wf-worker"]["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == str(args.metrics_port)


def test_compose_worker_healthcheck_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose: the worker's healthcheck reads --health-port on loopback; no worker port is
    published; its env file's recipe logs in as the ACL user `wf` at the `redis` service."""
    worker, argv = compose_worker()
    args = parse_wf(argv[1:], {k: str(v) for k, v in worker["environment"].items()}, monkeypatch)
    assert args.health_host == "127.0.0.1" and args.metrics_host == "127.0.0.1"
    check = worker["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"]
    assert f"http://127.0.0.1:{args.health_port}/healthz" in check[-1]
    assert "ports" not in worker
    compose_text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    recipe = re.search(r"WORKFLOW_REDIS_URL=redis://(\w+):%s@(\w+):(\d+)/0", compose_text)
    assert recipe, "compose.yaml's header shows how to write secrets/redis.env"
    user, host, port = recipe.groups()
    assert any(r.startswith(f"user {user} ") for r in acl_rules())
    assert host in compose["services"] and port == "6379"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (DEPLOY.parent / worker["build"]["dockerfile"]).is_file()


def test_scaledobject_scales_the_worker_deployment_on_each_partitions_ready_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KEDA: the ScaledObject targets wf-worker, one redis-streams trigger per partition's ready
    stream and the engine's group, lagCount = --concurrency / partitions, auth through a
    TriggerAuthentication to the Secret's keys, Redis reached at the `redis` Service."""
    from world_redis._keys import GROUP, Keys

    objects = manifests()
    scaled = objects["ScaledObject/wf-worker"]["spec"]
    deployment = objects["Deployment/wf-worker"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    _, argv, env = k8s_worker()
    concurrency = parse_wf(argv[1:], env, monkeypatch).concurrency
    triggers = scaled["triggers"]
    keys = Keys(prefix="wf", partitions=len(triggers))
    service = objects["Service/redis"]
    for partition, trigger in enumerate(triggers):
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert meta["stream"] == keys.ready(partition) and meta["consumerGroup"] == GROUP
        assert int(meta["lagCount"]) * len(triggers) == concurrency
        assert not {"password", "passwordFromEnv", "username"} & set(meta)
        host, port = meta["address"].rsplit(":", 1)
        assert host.split(".")[0] == service["metadata"]["name"]
        assert int(port) == service["spec"]["ports"][0]["port"]
        auth = objects[f"TriggerAuthentication/{trigger['authenticationRef']['name']}"]
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert set(refs) == {"username", "password"}
        secret = yaml.safe_load((K8S / "redis-auth-secret.example.yaml").read_text())
        for ref in refs.values():
            assert ref["name"] == secret["metadata"]["name"] == "redis-auth"
            assert ref["key"] in secret["stringData"]


def test_keda_acl_user_reads_only() -> None:
    """The ACL user `keda` (the scaler) has read-only keys and only the lag mode's commands."""
    (keda,) = (r.split() for r in acl_rules() if r.startswith("user keda "))
    assert "#@KEDA_PASSWORD_SHA256@" in keda and "resetkeys" in keda and "-@all" in keda
    assert [w for w in keda if w[0] in "~%"] == ["%R~wf:*"]
    assert sorted(w for w in keda if w.startswith("+")) == [
        "+info",
        "+ping",
        "+xinfo|groups",
        "+xlen",
    ]


def test_entrypoint_writes_the_keda_user_only_with_its_password(tmp_path: Path) -> None:
    """redis-entrypoint.sh: hashes both passwords into the ACL file; without KEDA_PASSWORD the
    `keda` user is left out; a short KEDA_PASSWORD is refused."""
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    acl = tmp_path / "users.acl"
    base = {
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "REDIS_ACL_FILE": str(acl),
        "REDIS_ACL_TEMPLATE": str(DEPLOY / "redis-users.acl"),
        "REDIS_PASSWORD": "w" * 32,
    }
    sha = {p: hashlib.sha256(p.encode()).hexdigest() for p in ("w" * 32, "k" * 32)}

    def start(**extra: str) -> subprocess.CompletedProcess[str]:
        env = base | extra
        return subprocess.run(
            ["sh", str(DEPLOY / "redis-entrypoint.sh")], env=env, capture_output=True, text=True
        )

    done = start(KEDA_PASSWORD="k" * 32)
    assert done.returncode == 0, done.stderr
    assert f"--aclfile {acl}" in done.stdout
    users = acl.read_text().splitlines()
    assert [u.split()[1] for u in users] == ["default", "wf", "keda"]
    assert f"#{sha['w' * 32]}" in users[1] and f"#{sha['k' * 32]}" in users[2]
    assert "@" not in acl.read_text().replace("-@all", "")
    assert start().returncode == 0
    assert [u.split()[1] for u in acl.read_text().splitlines()] == ["default", "wf"]
    acl.unlink()
    refused = start(KEDA_PASSWORD="short")
    assert refused.returncode == 1 and "KEDA_PASSWORD" in refused.stderr and not acl.exists()

"""deploy/ keeps Redis closed: auth required, protected mode, secrets, network policy (read statically)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

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
    assert set(example["stringData"]) == {"password", "url"}
    assert all(PLACEHOLDER in v for v in example["stringData"].values())


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
    sources = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    ]
    assert sources and all(set(peer) == {"app.kubernetes.io/name"} for peer in sources)
    assert {peer["app.kubernetes.io/name"] for peer in sources} <= {"wf-worker", "wf-serve"}
    assert any(peer.items() <= worker_labels.items() for peer in sources)


def test_k8s_configmap_is_a_copy_of_the_deploy_files() -> None:
    """redis-configmap.yaml holds exactly deploy/redis.conf, redis-users.acl, redis-entrypoint.sh."""
    data = manifests()["ConfigMap/redis-config"]["data"]
    for name in ("redis.conf", "redis-users.acl", "redis-entrypoint.sh"):
        assert data[name] == (DEPLOY / name).read_text(), f"regenerate the ConfigMap: {name}"


def test_readme_shows_the_deployed_acl_rule() -> None:
    """The README's "Securing Redis" rule is the one in deploy/redis-users.acl."""
    readme = (DEPLOY.parent / "README.md").read_text()
    for rule in acl_rules():
        assert rule.replace("#@WF_PASSWORD_SHA256@", ">PASSWORD") in readme, rule


def test_k8s_worker_liveness_probe_reads_its_health_endpoint_on_loopback() -> None:
    """k8s: the worker serves /healthz on 127.0.0.1 only, and its liveness probe reads it from
    inside the pod (an exec probe), so nothing listens beyond loopback unauthenticated."""
    (worker,) = manifests()["Deployment/wf-worker"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    port = env["WORKFLOW_HEALTH_PORT"]
    assert env.get("WORKFLOW_HEALTH_HOST", "127.0.0.1") == "127.0.0.1"
    probe = worker["livenessProbe"]
    assert "httpGet" not in probe and "tcpSocket" not in probe
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(probe["exec"]["command"])

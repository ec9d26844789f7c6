"""The engine on the Redis of deploy/: as the ACL user of deploy/redis-users.acl, and over TLS.

Redis is started by deploy/redis-entrypoint.sh with deploy/redis.conf, as in compose and
Kubernetes, only moved to a free loopback port and a temporary directory. The test's template is
deploy/redis-users.acl verbatim plus one admin user, which only the test uses (ACL LOG, ACL CAT).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import secrets
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e import acl_workflows as aw
from tests.e2e import fault_workflows as fw
from tests.support import (
    REPO,
    RedisServer,
    WorkerProcess,
    eventually,
    free_port,
    redis_binary,
    redis_cli_binary,
    redis_cli_errors,
    wait_for,
    wf_json,
)
from worker import ReplicaAckTimeoutError, create_schedule, get_run, resume_hook, start
from world_redis import RedisWorld

DEPLOY = REPO / "deploy"
ADMIN = "admin"


@dataclass
class DeployedRedis:
    """A Redis started like deploy/ starts it; ``wf_url`` logs in as the engine's user."""

    server: RedisServer
    password: str
    admin_password: str
    log: Path
    scheme: str = "redis"
    ca: Path | None = None

    def url(self, user: str, password: str, query: str = "") -> str:
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.server.port}/0{query}"

    @property
    def wf_url(self) -> str:
        return self.url("wf", self.password)

    def admin(self) -> redis.Redis:
        tls: dict[str, Any] = {"ssl_ca_certs": str(self.ca)} if self.ca else {}
        return redis.Redis.from_url(
            self.url(ADMIN, self.admin_password), decode_responses=True, **tls
        )


def start_deployed_redis(directory: Path, port: int, *server_args: str) -> DeployedRedis:
    """deploy/redis-entrypoint.sh with a generated password; ``server_args`` go to redis-server."""
    password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    template = directory / "users.acl.template"
    template.write_text(
        (DEPLOY / "redis-users.acl").read_text()
        + f"user {ADMIN} on >{admin_password} ~* &* +@all\n"
    )
    data = directory / "data"
    data.mkdir()
    log = directory / "redis.log"
    env = {
        "PATH": f"{Path(redis_binary()).parent}:{os.environ['PATH']}",
        "REDIS_PASSWORD": password,
        "REDIS_CONF": str(DEPLOY / "redis.conf"),
        "REDIS_ACL_TEMPLATE": str(template),
        "REDIS_ACL_FILE": str(directory / "users.acl"),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", str(DEPLOY / "redis-entrypoint.sh"), "--bind", "127.0.0.1", "--dir", str(data),
             "--appendonly", "no", *server_args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return DeployedRedis(RedisServer(port, str(data), proc), password, admin_password, log)


def wait_until_up(deployed: DeployedRedis) -> None:
    def up() -> bool:
        if deployed.server.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{deployed.log.read_text()}")
        try:
            with deployed.admin() as admin:
                return bool(admin.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, what="the deployed redis-server to answer")


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[DeployedRedis]:
    """deploy/'s Redis on a free loopback port: default user off, the engine as user `wf`."""
    port = free_port()
    deployed = start_deployed_redis(tmp_path, port, "--port", str(port))
    try:
        wait_until_up(deployed)
        yield deployed
    finally:
        deployed.server.stop()


def engine_env(url: str, **extra: str) -> dict[str, str]:
    """A worker's or `wf` command's environment: default prefix `wf`, the one the ACL allows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_")}
    env.update(WORKFLOW_REDIS_URL=url, WORKFLOW_LOG_FORMAT="json", PYTHONUNBUFFERED="1", **extra)
    return env


async def tour(world: RedisWorld, env: dict[str, str], cli_args: list[str]) -> None:
    """Steps, retries, sleeps, hooks, output streams, start, resume and bad requests, health, listing."""
    token = f"acl-{secrets.token_hex(4)}"
    run = await start(aw.acl_tour, token, 21, world=world)
    first = await asyncio.wait_for(anext(aiter(run.readable())), 30)
    assert first == {"doubled": 42}
    await eventually(lambda: world.find_hook(token), what="the hook to be created")
    await resume_hook(token, {"via": "python"}, world=world)
    cli = redis_cli_binary()
    assert cli is not None, "redis-cli is needed for the start and resume requests"

    def redis_cli(*command: str) -> str:
        done = subprocess.run(
            [cli, *cli_args, *command], capture_output=True, text=True, check=True
        )
        assert not redis_cli_errors(done.stdout + done.stderr), done.stdout + done.stderr
        return done.stdout

    await asyncio.to_thread(
        redis_cli, "XADD", "wf:hooks:resume", "*", "token", token, "payload", '{"via": "cli"}'
    )
    assert await run.result(timeout=30) == {
        "doubled": 42,
        "payloads": [{"via": "python"}, {"via": "cli"}],
    }
    started = "wrun_acl_" + secrets.token_hex(4)
    await asyncio.to_thread(
        redis_cli,
        "XADD",
        "wf:start",
        "*",
        "workflow",
        "acl_add",
        "args",
        "[1, 2]",
        "run_id",
        started,
    )
    await eventually(lambda: world.get_run(started), what="the requested run to be created")
    assert await get_run(started, world=world).result(timeout=30) == 3
    await asyncio.to_thread(redis_cli, "XADD", "wf:start", "*", "workflow", "no_such_workflow")
    await eventually(
        lambda: world.redis.xrange("wf:start:rejected"), what="the bad request to be rejected"
    )
    scheduled = await scheduled_run(world)
    health = await wf_json(env, "health", "--timeout", "20")
    assert isinstance(health, dict) and health["allHealthy"] is True, health
    listed = await wf_json(env, "inspect", "runs")
    assert isinstance(listed, list), listed
    ids = {row["run_id"] for row in listed}
    assert {run.run_id, started, scheduled} <= ids, listed
    # compaction and the janitor's walk of compacted runs, under the same rule
    assert await world.compact_runs([started]) == 1
    assert await get_run(started, world=world).result(timeout=5) == 3
    await world.expire_indexes()


async def scheduled_run(world: RedisWorld) -> str:
    """A schedule's tick starts a run (the worker's schedules duty and its scripts); its id."""
    schedule = await create_schedule("acl-every-second", aw.acl_add, 2, 3, every="1s", world=world)

    async def fired() -> str:
        recent = (await schedule.describe()).recent
        return next((t.run_id for t in recent if t.action == "fired"), "")

    run_id = str(await eventually(fired, 30, what="a tick of the schedule to fire"))
    await schedule.pause()
    assert await get_run(run_id, world=world).result(timeout=30) == 5
    await schedule.delete()
    return run_id


async def test_engine_runs_as_the_deploy_acl_user(acl_redis: DeployedRedis, tmp_path: Path) -> None:
    """As deploy's ACL user a worker, clients, `wf` and redis-cli do everything; only CONFIG GET is denied, and the worker says so."""
    env = engine_env(acl_redis.wf_url)
    worker = WorkerProcess.start(["tests.e2e.acl_workflows"], env, tmp_path / "worker.log")
    world = RedisWorld.from_url(acl_redis.wf_url)
    try:
        await tour(world, env, ["-u", acl_redis.wf_url, "--no-auth-warning"])
        wait_for(lambda: "ACL denies CONFIG GET" in worker.output(), 10, what="the CONFIG warning")
        warning = next(
            line for line in worker.output().splitlines() if "ACL denies CONFIG GET" in line
        )
        assert (
            "redis_configuration_risk" in warning and "configuration check could not run" in warning
        )
    finally:
        await world.close()
        assert worker.stop() == 0, worker.output()
    with acl_redis.admin() as admin:
        denied = {(e["reason"], e["object"]) for e in admin.acl_log()}
    # redis-py's handshake sends CLIENT SETINFO on Redis 7.2+ and ignores its refusal
    expected = {("command", "config|get"), ("command", "client|setinfo")}
    assert ("command", "config|get") in denied and denied <= expected, denied


async def test_replica_acks_are_allowed_to_the_acl_user(acl_redis: DeployedRedis) -> None:
    """WORKFLOW_REPLICA_ACKS under deploy's ACL: WAIT and the fence write are granted, so a start
    that asks for a replica this server does not have times out as such, not as a refusal."""
    world = RedisWorld.from_url(acl_redis.wf_url, replica_acks=1, replica_ack_timeout_ms=1500)
    run_id = "wrun_acl_acks_" + secrets.token_hex(4)
    try:
        with pytest.raises(ReplicaAckTimeoutError) as caught:
            await start(aw.acl_add, 1, 2, run_id=run_id, world=world)
        assert (caught.value.what, caught.value.acked, caught.value.run_id) == ("start", 0, run_id)
        assert await world.get_run(run_id) is not None  # written on the master all the same
    finally:
        await world.close()
    with acl_redis.admin() as admin:
        denied = {(e["reason"], e["object"]) for e in admin.acl_log()}
    assert not [d for d in denied if d[1] in ("wait", "set", "evalsha")], denied


async def test_worker_killed_as_the_acl_user_is_reclaimed(
    acl_redis: DeployedRedis, tmp_path: Path
) -> None:
    """As user `wf`, a run whose worker was SIGKILLed mid-step is reclaimed (XPENDING, XCLAIM) and finished."""
    env = engine_env(acl_redis.wf_url, WORKFLOW_LEASE_MS="1500", WORKFLOW_HEARTBEAT_MS="300")
    modules = ["tests.e2e.fault_workflows"]
    marker = tmp_path / "started"
    first = WorkerProcess.start(modules, env, tmp_path / "first.log")
    world = RedisWorld.from_url(acl_redis.wf_url)
    second = None
    try:
        run = await start(fw.killable, str(marker), 1.0, world=world)
        wait_for(marker.exists, 20, what="the step to start in the first worker")
        first.kill()
        marker.unlink()
        second = WorkerProcess.start(modules, env, tmp_path / "second.log")
        assert await run.result(timeout=30) == "finished: done"
        assert marker.read_text() == str(second.proc.pid)
    finally:
        await world.close()
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.output()
    with acl_redis.admin() as admin:
        denied = {e["object"] for e in admin.acl_log()}
    assert denied <= {"config|get", "client|setinfo"}, denied


async def test_deploy_acl_keeps_out_strangers_and_dangerous_commands(
    acl_redis: DeployedRedis,
) -> None:
    """No login without a password; user `wf` holds no @dangerous command and no key outside `wf:`."""
    with (
        redis.Redis(port=acl_redis.server.port) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.url("wf", "wrong-password")).ping()
    with redis.Redis.from_url(acl_redis.wf_url) as wf:
        for command in (("SET", "other:key", "1"), ("GET", "other:key"), ("FLUSHALL",),
                        ("KEYS", "*"), ("CONFIG", "SET", "appendonly", "no")):  # fmt: skip
            with pytest.raises(redis.exceptions.NoPermissionError):
                wf.execute_command(*command)
        sha = wf.script_load("return redis.call('HGET', KEYS[1], 'f')")
        assert wf.evalsha(sha, 1, "wf:key") is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            wf.evalsha(sha, 1, "other:key")
    with acl_redis.admin() as admin:
        rule = admin.acl_getuser("wf")
        dangerous = set(admin.acl_cat("dangerous"))
    assert rule["categories"] == ["-@all"] and rule["keys"] == ["~wf:*"], rule
    allowed = {c.removeprefix("+") for c in rule["commands"]}
    granted_dangerous = {d for d in dangerous if d in allowed or d.split("|")[0] in allowed}
    assert "evalsha" in allowed and not granted_dangerous, granted_dangerous


# -- TLS -----------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate it signs for 127.0.0.1 and localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis-workflows test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "redis.pem",
        directory / "redis.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[DeployedRedis]:
    """deploy/'s Redis (ACL included) reachable only over TLS, with a certificate from a test CA."""
    if b"SSL_CTX_new" not in Path(redis_binary()).read_bytes():
        pytest.skip(f"{redis_binary()} is built without TLS (it does not use OpenSSL)")
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    deployed = start_deployed_redis(
        tmp_path, port, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )  # fmt: skip
    deployed.scheme, deployed.ca = "rediss", ca
    try:
        wait_until_up(deployed)
        yield deployed
    finally:
        deployed.server.stop()


async def test_engine_runs_over_tls(tls_redis: DeployedRedis, tmp_path: Path) -> None:
    """Over rediss:// with the CA from WORKFLOW_REDIS_CA_CERTS or ?ssl_ca_certs=, the engine does everything; without the CA it cannot connect."""
    assert tls_redis.ca is not None
    worker_env = engine_env(tls_redis.wf_url, WORKFLOW_REDIS_CA_CERTS=str(tls_redis.ca))
    worker = WorkerProcess.start(["tests.e2e.acl_workflows"], worker_env, tmp_path / "worker.log")
    query = "?ssl_ca_certs=" + urllib.parse.quote(str(tls_redis.ca))
    cli_env = engine_env(tls_redis.url("wf", tls_redis.password, query))
    world = RedisWorld.from_url(tls_redis.wf_url, ssl_ca_certs=str(tls_redis.ca))
    untrusted = RedisWorld.from_url(tls_redis.wf_url)
    try:
        cli_args = [
            "--tls",
            "--cacert",
            str(tls_redis.ca),
            "-u",
            tls_redis.wf_url,
            "--no-auth-warning",
        ]
        await tour(world, cli_env, cli_args)
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            await untrusted.redis.ping()
    finally:
        await world.close()
        await untrusted.close()
        assert worker.stop() == 0, worker.output()


def test_ca_certs_need_a_tls_url() -> None:
    """ssl_ca_certs with a plain redis:// URL is refused when the World is built, not at first use."""
    with pytest.raises(ValueError, match="rediss://"):
        RedisWorld.from_url("redis://127.0.0.1:6379/0", ssl_ca_certs="/etc/ssl/certs/ca.pem")

"""The replica acknowledgement settings (``replica_acks``/``WORKFLOW_REPLICA_ACKS``,
``replica_ack_timeout_ms``/``WORKFLOW_REPLICA_ACK_TIMEOUT_MS``): defaults, precedence, bad values
refused by name at construction, and the error a short acknowledgement raises."""

from __future__ import annotations

import pytest

import worker
import worker.world
from world_redis import RedisWorld
from world_redis._core import replica_ack_settings

ACKS = "WORKFLOW_REPLICA_ACKS"
TIMEOUT = "WORKFLOW_REPLICA_ACK_TIMEOUT_MS"


@pytest.fixture(autouse=True)
def no_settings_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without either setting."""
    monkeypatch.delenv(ACKS, raising=False)
    monkeypatch.delenv(TIMEOUT, raising=False)


def test_defaults_are_no_acks_and_no_timeout() -> None:
    """Off by default (Redis's asynchronous replication); with acks, no timeout by default (0:
    wait as long as it takes)."""
    assert replica_ack_settings(None, None) == (0, 0)


def test_empty_env_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACKS, "")
    monkeypatch.setenv(TIMEOUT, "")
    assert replica_ack_settings(None, None) == (0, 0)


def test_the_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACKS, "2")
    monkeypatch.setenv(TIMEOUT, "250")
    assert replica_ack_settings(None, None) == (2, 250)
    monkeypatch.setenv(ACKS, " 1 ")  # surrounding blanks are tolerated
    assert replica_ack_settings(None, None) == (1, 250)


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACKS, "2")
    monkeypatch.setenv(TIMEOUT, "250")
    assert replica_ack_settings(1, 50) == (1, 50)
    assert replica_ack_settings(0, None) == (0, 250)  # an explicit 0 turns acks off
    assert replica_ack_settings(None, 700) == (2, 700)
    # a bad value in the environment does not matter when an argument replaces it
    monkeypatch.setenv(ACKS, "x")
    monkeypatch.setenv(TIMEOUT, "-1")
    assert replica_ack_settings(3, 10) == (3, 10)


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "1e3", "true"])
def test_a_bad_acks_value_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(ACKS, bad)
    with pytest.raises(ValueError, match=ACKS):
        replica_ack_settings(None, None)


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "-5"])
def test_a_bad_timeout_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv(TIMEOUT, bad)
    with pytest.raises(ValueError, match=TIMEOUT):
        replica_ack_settings(None, None)


def test_bad_arguments_name_their_setting() -> None:
    with pytest.raises(ValueError, match=ACKS):
        replica_ack_settings(-1, None)
    with pytest.raises(ValueError, match=ACKS):
        replica_ack_settings(True, None)  # a bool is not a count
    with pytest.raises(ValueError, match=ACKS):
        replica_ack_settings(1.5, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=TIMEOUT):
        replica_ack_settings(None, -1)
    assert replica_ack_settings(None, 0) == (0, 0)  # 0: no timeout


def test_a_world_refuses_bad_settings_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 1 has no server: the ValueError comes from the constructor, before any connection
    (from_url makes none)."""
    with pytest.raises(ValueError, match=ACKS):
        RedisWorld.from_url("redis://127.0.0.1:1", replica_acks=-1)
    with pytest.raises(ValueError, match=TIMEOUT):
        RedisWorld.from_url("redis://127.0.0.1:1", replica_ack_timeout_ms=-1)
    monkeypatch.setenv(ACKS, "many")
    with pytest.raises(ValueError, match=ACKS):
        RedisWorld.from_url("redis://127.0.0.1:1")


async def test_a_world_keeps_its_settings() -> None:
    """Good settings are kept on the World's core (no connection is made to read them)."""
    world = RedisWorld.from_url("redis://127.0.0.1:1", replica_acks=2, replica_ack_timeout_ms=75)
    try:
        assert (world.core.replica_acks, world.core.replica_ack_timeout_ms) == (2, 75)
    finally:
        await world.close()
    world = RedisWorld.from_url("redis://127.0.0.1:1")
    try:
        assert (world.core.replica_acks, world.core.replica_ack_timeout_ms) == (0, 0)
    finally:
        await world.close()


def test_the_error_is_public_and_a_world_unavailable_error() -> None:
    assert worker.ReplicaAckTimeoutError is worker.world.ReplicaAckTimeoutError
    assert "ReplicaAckTimeoutError" in worker.__all__
    assert "ReplicaAckTimeoutError" in worker.world.__all__
    assert issubclass(worker.ReplicaAckTimeoutError, worker.world.WorldUnavailableError)
    assert issubclass(worker.ReplicaAckTimeoutError, worker.WorkflowError)


def test_the_error_carries_what_was_acknowledged_and_names_the_run() -> None:
    err = worker.ReplicaAckTimeoutError("start", 0, 1, 300, "run-123")
    assert (err.what, err.acked, err.wanted, err.timeout_ms, err.run_id) == (
        "start",
        0,
        1,
        300,
        "run-123",
    )
    text = str(err)
    assert "run-123" in text and "0 of the 1" in text and "300 ms" in text and ACKS in text
    anonymous = worker.ReplicaAckTimeoutError("commit", 1, 2, 1000)
    assert anonymous.run_id == "" and "of run" not in str(anonymous)


def test_the_fence_shares_the_slot_of_the_key_it_follows() -> None:
    """The fence written while a write waits for its replicas lands on the same master: the
    same hash tag as the script's first key, whichever key that is."""
    from redis.crc import key_slot

    from world_redis._keys import Keys

    keys = Keys("wf", 16)
    for key in (keys.run("wrun_abc"), keys.ready(7), keys.timers(15), keys.partition_keys(3)[0]):
        fence = keys.replica_fence(key)
        assert fence.startswith("wf:{p") and fence.endswith("}:replica-fence"), fence
        assert key_slot(fence.encode()) == key_slot(key.encode()), (key, fence)
    assert keys.replica_fence("wf:plain") == "wf:replica-fence"  # no tag: one server

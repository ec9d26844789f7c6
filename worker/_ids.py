"""Identifiers: a 4-letter prefix, an underscore and a ULID (time-sortable)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from _random import Random as _MersenneTwister

from ._errors import InvalidRunIdError

_RUN_ID = re.compile(r"wrun_[A-Za-z0-9_-]{1,120}")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # every 10-bit value as 2 characters
_SHIFTS = range(120, -1, -10)
_TAIL_SHIFTS = range(70, -1, -10)  # the 80 random bits of a ULID: its last 16 characters


def _ulid_text(value: int) -> str:
    """Crockford base32 of a 128-bit value, as ULID spells it (26 characters)."""
    # 26 characters hold 130 bits: the value with two leading zero bits, i.e. 13 groups of 10
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    """A fresh id: prefix, underscore, ULID (48-bit ms timestamp + 80 random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_ulid_text(ms << 80 | rand)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` fresh ids sharing one timestamp (cheaper than ``count`` calls of ``new_id``)."""
    if count == 0:
        return []
    ms = time.time_ns() // 1_000_000
    head = f"{prefix}_{_ulid_text(ms << 80)[:10]}"
    rand = int.from_bytes(os.urandom(10 * count), "big")
    out = []
    for _ in range(count):
        r = rand & ((1 << 80) - 1)
        rand >>= 80
        out.append(head + "".join([_PAIRS[(r >> shift) & 1023] for shift in _TAIL_SHIFTS]))
    return out


def hook_token(run_id: str, seed: str, n: int) -> str:
    """The n-th default hook token of a run: 160 bits from HMAC(run seed, run id and n).

    The same on every replay, unguessable without the run's secret seed.
    """
    digest = hmac.new(seed.encode(), f"{run_id}:hook:{n}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:20]).decode().lower()


def check_run_id(run_id: str) -> str:
    """The run id, if it is safe inside key names; InvalidRunIdError otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunIdError(str(run_id))
    return run_id


def new_run_id() -> str:
    return new_id("wrun")


def new_event_id() -> str:
    return new_id("evnt")


class _IdBits(_MersenneTwister):
    """The C Mersenne Twister alone: seeded once, by ``__new__`` (``random.Random`` adds a
    Python-level ``__init__`` and ``seed`` around the same generator)."""


def _ids_seed(text: str) -> int:
    """The int ``random.Random(text)`` seeds its generator with (``Random.seed``, version 2)."""
    data = text.encode()
    return int.from_bytes(data + hashlib.sha512(data).digest())


class DeterministicIds:
    """Correlation ids that depend only on the run and the order of calls in the workflow.

    The time part is the run's start time; the random part comes from a generator seeded by the
    run id (separate from the workflow's user-facing random generator). That generator is the
    one ``random.Random(f"{run_id}:ids")`` holds, made without the Python layer: its
    ``getrandbits`` gives the same bits (a test holds the two and a few spelled ids together).
    """

    __slots__ = ("_bits", "_head")

    def __init__(self, run_id: str, started_at_ms: int) -> None:
        self._bits = _IdBits(_ids_seed(f"{run_id}:ids")).getrandbits
        # the ULID's first 10 characters spell the time alone: the same for every id of the run
        # (_ulid_text(started_at_ms << 80)[:10]: its first 5 groups of 10 bits)
        ms, p = started_at_ms, _PAIRS
        self._head = (
            f"{p[(ms >> 40) & 1023]}{p[(ms >> 30) & 1023]}{p[(ms >> 20) & 1023]}"
            f"{p[(ms >> 10) & 1023]}{p[ms & 1023]}"
        )

    def next(self, prefix: str) -> str:
        r = self._bits(80)
        p = _PAIRS
        # the 80 bits as 8 pairs of Crockford characters, from the top (as _TAIL_SHIFTS spells
        # them), unrolled: no list is built
        return (
            f"{prefix}_{self._head}{p[r >> 70]}{p[(r >> 60) & 1023]}{p[(r >> 50) & 1023]}"
            f"{p[(r >> 40) & 1023]}{p[(r >> 30) & 1023]}{p[(r >> 20) & 1023]}"
            f"{p[(r >> 10) & 1023]}{p[r & 1023]}"
        )


def lease_token(worker: str) -> str:
    """A worker's lease token: its name (its consumer name in the queues) and a fresh nonce, so a
    restarted process with the same name never holds the leases of its predecessor."""
    return f"{worker}#{new_id('lease')[6:]}"


def token_worker(token: str) -> str:
    """The worker (consumer) name inside a lease token made by :func:`lease_token`."""
    return token.split("#", 1)[0]

"""Payload encryption at rest: AES-256-GCM envelopes for the payload texts the engine stores.

``WORKFLOW_ENCRYPTION_KEY`` holds one or more keys, ``<key id>:<base64 of 32 bytes>`` separated by
commas. The first key encrypts; every key decrypts, so a key is rotated by putting a new one first
and keeping the old ones after it until nothing they encrypted is left (runs expire after their
retention).

An encrypted value is one line of text::

    $enc:v1:<key id>:<base64 of nonce (12 bytes) + ciphertext + tag (16 bytes)>

It is not JSON, so a reader without the key cannot mistake it for a value: ``redis-cli`` shows the
envelope, ``worker._serde`` refuses it with a message naming the key id. A text that is not an
envelope passes through :meth:`PayloadCodec.decrypt` unchanged: plaintext written by other services
(a start request's JSON arguments) and data stored before encryption was enabled stay readable.

The associated data binds a value to its place: the envelope version and key id, the run id, the
field name and a context (the correlation id of an event, the hook id of hook metadata, the stream
name of a stream chunk). A ciphertext copied to another run, field, step or stream fails
authentication. Within one place (the chunks of one stream, the retries of one step) values are
not ordered by the encryption: the log's own sequence numbers do that.

Only payload texts are encrypted (:data:`PAYLOAD_FIELDS`); names, statuses, times, step names,
hook tokens and correlation ids stay readable. ``cryptography`` is imported only when a key is
configured (the ``redis-workflows[encryption]`` extra).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from ._errors import DecryptionError, EncryptionKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_VAR",
    "PAYLOAD_FIELDS",
    "PREFIX",
    "PayloadCodec",
    "envelope_key_id",
    "generate_key",
    "is_envelope",
]

ENV_VAR = "WORKFLOW_ENCRYPTION_KEY"
PREFIX = "$enc:"
VERSION = "v1"
_HEAD = f"{PREFIX}{VERSION}:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, fresh and random for every value
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# event and run-hash fields that carry payloads (JSON text from worker._serde)
PAYLOAD_FIELDS = frozenset({"input", "result", "output", "error", "payload", "metadata"})
_AAD = msgspec.json.Encoder()


def is_envelope(text: str) -> bool:
    """Whether ``text`` is an encrypted value (of any version)."""
    return text.startswith(PREFIX)


def envelope_key_id(text: str) -> str:
    """The key id an envelope names ("" when ``text`` is not a v1 envelope)."""
    if not text.startswith(_HEAD):
        return ""
    return text[len(_HEAD) :].partition(":")[0]


def generate_key(key_id: str = "k1") -> str:
    """A fresh key entry for ``WORKFLOW_ENCRYPTION_KEY``: ``<key id>:<base64 of 32 random bytes>``."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def _aad(key_id: str, run_id: str, field: str, context: str) -> bytes:
    return _AAD.encode([VERSION, key_id, run_id, field, context])


class PayloadCodec:
    """Encrypts payload texts with the first key; decrypts with any key it holds."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise EncryptionKeyError(f"{ENV_VAR}: no key given")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise EncryptionKeyError(
                f"{ENV_VAR} is set but the 'cryptography' package is not installed: "
                "pip install 'redis-workflows[encryption]'"
            ) from None
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID.fullmatch(key_id):
                raise EncryptionKeyError(
                    f"{ENV_VAR}: key id {key_id!r} is not 1-64 of [A-Za-z0-9_.-]"
                )
            if key_id in self._ciphers:
                raise EncryptionKeyError(f"{ENV_VAR}: key id {key_id!r} is given twice")
            if len(key) != KEY_BYTES:
                raise EncryptionKeyError(
                    f"{ENV_VAR}: key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}"
                )
            self._ciphers[key_id] = AESGCM(key)
        self.key_id = keys[0][0]
        self._cipher = self._ciphers[self.key_id]
        self._head = f"{_HEAD}{self.key_id}:"

    @classmethod
    def parse(cls, spec: str) -> PayloadCodec:
        """The codec of a ``WORKFLOW_ENCRYPTION_KEY`` value; EncryptionKeyError says what is wrong."""
        keys: list[tuple[str, bytes]] = []
        for n, entry in enumerate(spec.split(","), 1):
            entry = entry.strip()
            key_id, sep, text = entry.partition(":")
            key_id, text = key_id.strip(), text.strip()
            if not sep or not key_id or not text:
                raise EncryptionKeyError(
                    f"{ENV_VAR}: entry {n} is not '<key id>:<base64 key>' "
                    "(several keys are separated by commas, the first one encrypts)"
                )
            try:
                key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise EncryptionKeyError(f"{ENV_VAR}: key {key_id!r} is not valid base64") from None
            keys.append((key_id, key))
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PayloadCodec | None:
        """The codec configured by ``WORKFLOW_ENCRYPTION_KEY``; None when it is unset or empty."""
        spec = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
        return cls.parse(spec) if spec else None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys held, the encrypting one first."""
        return tuple(self._ciphers)

    def encrypt(self, text: str, *, run_id: str, field: str, context: str = "") -> str:
        """The envelope of ``text``, bound to the run, the field and the context."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._cipher.encrypt(
            nonce,
            text.encode("utf-8", "surrogatepass"),
            _aad(self.key_id, run_id, field, context),
        )
        return self._head + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, text: str, *, run_id: str, field: str, context: str = "") -> str:
        """The plaintext of an envelope; any other text unchanged. DecryptionError when the envelope
        names an unknown key, is malformed, or fails authentication (tampered, or moved from
        another run, field or context)."""
        if not text.startswith(PREFIX):
            return text
        key_id = envelope_key_id(text)
        where = f"run {run_id}: field {field!r}" + (f" ({context})" if context else "")
        if not key_id:
            raise DecryptionError(run_id, field, "", f"{where}: unknown envelope format")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                run_id,
                field,
                key_id,
                f"{where}: encrypted with key id {key_id!r}, which {ENV_VAR} does not hold "
                f"(it holds {', '.join(map(repr, self._ciphers))})",
            )
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(text[len(_HEAD) + len(key_id) + 1 :], validate=True)
            if len(raw) < NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = cipher.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(key_id, run_id, field, context)
            )
        except (binascii.Error, ValueError):
            raise DecryptionError(
                run_id, field, key_id, f"{where}: the envelope (key id {key_id!r}) is malformed"
            ) from None
        except InvalidTag:
            raise DecryptionError(
                run_id,
                field,
                key_id,
                f"{where}: the value encrypted with key id {key_id!r} fails authentication "
                "(altered, or copied from another run or field)",
            ) from None
        return plain.decode("utf-8", "surrogatepass")

    def seal_fields(self, run_id: str, context: str, fields: Mapping[str, str]) -> dict[str, str]:
        """``fields`` with every payload field encrypted (the others as they are)."""
        return {
            k: self.encrypt(v, run_id=run_id, field=k, context=context)
            if k in PAYLOAD_FIELDS
            else v
            for k, v in fields.items()
        }

    def open_fields(self, run_id: str, fields: Mapping[str, str]) -> dict[str, str]:
        """A stored log entry's fields with payload fields decrypted (context: its ``corr``)."""
        context = fields.get("corr", "")
        return {
            k: self.decrypt(v, run_id=run_id, field=k, context=context)
            if k in PAYLOAD_FIELDS
            else v
            for k, v in fields.items()
        }

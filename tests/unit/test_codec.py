"""Unit tests for worker._codec: AES-256-GCM envelopes of stored payloads and key configuration."""

from __future__ import annotations

import base64

import pytest

from worker import DecryptionError, EncryptionKeyError, PayloadCodec, _serde
from worker._codec import envelope_key_id, generate_key, is_envelope

KEY_A = "ka:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "kb:" + base64.b64encode(bytes(range(32, 64))).decode()
MARKER = '{"secret": "zebra-marker-4711"}'


def test_round_trip_produces_readable_envelope_without_plaintext() -> None:
    """A payload encrypts to `$enc:v1:<key id>:...` with no plaintext and decrypts back exactly."""
    codec = PayloadCodec.parse(KEY_A)
    sealed = codec.encrypt(MARKER, run_id="wrun_1", field="input")
    assert sealed.startswith("$enc:v1:ka:")
    assert "zebra" not in sealed
    assert is_envelope(sealed) and envelope_key_id(sealed) == "ka"
    assert codec.decrypt(sealed, run_id="wrun_1", field="input") == MARKER


def test_each_value_gets_a_fresh_nonce() -> None:
    """Encrypting the same text twice gives two different envelopes."""
    codec = PayloadCodec.parse(KEY_A)
    one = codec.encrypt(MARKER, run_id="wrun_1", field="input")
    two = codec.encrypt(MARKER, run_id="wrun_1", field="input")
    assert one != two


def test_text_that_is_no_envelope_passes_through() -> None:
    """Plaintext JSON (written by other services or before encryption) decrypts to itself."""
    codec = PayloadCodec.parse(KEY_A)
    assert codec.decrypt('[1, "x"]', run_id="wrun_1", field="input") == '[1, "x"]'


def test_lone_surrogates_and_nul_round_trip() -> None:
    """Any str the serializer produces, NUL and lone surrogates included, survives the round trip."""
    codec = PayloadCodec.parse(KEY_A)
    text = '"a\x00b\udcff"'
    assert codec.decrypt(codec.encrypt(text, run_id="r", field="v"), run_id="r", field="v") == text


def test_tampered_ciphertext_raises_decryption_error() -> None:
    """Changing one byte of an envelope fails authentication with a typed error."""
    codec = PayloadCodec.parse(KEY_A)
    sealed = codec.encrypt(MARKER, run_id="wrun_1", field="result", context="step_1")
    head, _, body = sealed.rpartition(":")
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    tampered = f"{head}:{base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(DecryptionError, match="fails authentication") as info:
        codec.decrypt(tampered, run_id="wrun_1", field="result", context="step_1")
    assert (info.value.run_id, info.value.field, info.value.key_id) == ("wrun_1", "result", "ka")


@pytest.mark.parametrize(
    ("run_id", "field", "context"),
    [("wrun_2", "input", ""), ("wrun_1", "output", ""), ("wrun_1", "input", "step_1")],
)
def test_ciphertext_moved_to_another_place_is_refused(
    run_id: str, field: str, context: str
) -> None:
    """A value copied to another run, field or step fails authentication."""
    codec = PayloadCodec.parse(KEY_A)
    sealed = codec.encrypt(MARKER, run_id="wrun_1", field="input")
    with pytest.raises(DecryptionError, match="fails authentication"):
        codec.decrypt(sealed, run_id=run_id, field=field, context=context)


def test_unknown_key_id_names_run_field_and_key() -> None:
    """An envelope of a key the codec does not hold raises DecryptionError naming all three."""
    sealed = PayloadCodec.parse(KEY_B).encrypt(MARKER, run_id="wrun_9", field="payload")
    with pytest.raises(DecryptionError) as info:
        PayloadCodec.parse(KEY_A).decrypt(sealed, run_id="wrun_9", field="payload")
    message = str(info.value)
    assert "wrun_9" in message and "'payload'" in message and "'kb'" in message
    assert info.value.key_id == "kb"


def test_malformed_envelope_raises_decryption_error() -> None:
    """An envelope whose body is not base64, or is too short, is refused with a typed error."""
    codec = PayloadCodec.parse(KEY_A)
    for bad in ("$enc:v1:ka:!!!", "$enc:v1:ka:AAAA", "$enc:v9:whatever"):
        with pytest.raises(DecryptionError):
            codec.decrypt(bad, run_id="r", field="input")


def test_rotation_first_key_encrypts_all_keys_decrypt() -> None:
    """With `B,A` new values use B while values written with A stay readable."""
    old = PayloadCodec.parse(KEY_A).encrypt(MARKER, run_id="r", field="output")
    rotated = PayloadCodec.parse(f"{KEY_B}, {KEY_A}")
    assert rotated.key_ids == ("kb", "ka")
    assert rotated.decrypt(old, run_id="r", field="output") == MARKER
    assert envelope_key_id(rotated.encrypt(MARKER, run_id="r", field="output")) == "kb"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("ka", "is not '<key id>:<base64 key>'"),
        ("ka:not*base64", "'ka' is not valid base64"),
        ("ka:" + base64.b64encode(b"short").decode(), "'ka' is 5 bytes; AES-256 needs 32"),
        (f"{KEY_A},{KEY_A}", "'ka' is given twice"),
        ("k a:" + KEY_A.split(":")[1], "key id 'k a'"),
        (f"{KEY_A},", "entry 2"),
    ],
)
def test_bad_key_configuration_names_variable_and_problem(spec: str, complaint: str) -> None:
    """A malformed WORKFLOW_ENCRYPTION_KEY raises EncryptionKeyError saying what is wrong."""
    with pytest.raises(EncryptionKeyError, match="WORKFLOW_ENCRYPTION_KEY") as info:
        PayloadCodec.parse(spec)
    assert complaint in str(info.value)


def test_from_env_is_none_when_unset_and_accepts_generated_keys() -> None:
    """No variable means no codec; a key made by generate_key() is accepted (url-safe too)."""
    assert PayloadCodec.from_env({}) is None
    assert PayloadCodec.from_env({"WORKFLOW_ENCRYPTION_KEY": "  "}) is None
    generated = generate_key("k7")
    assert PayloadCodec.from_env({"WORKFLOW_ENCRYPTION_KEY": generated}) is not None
    kid, _, key = generated.partition(":")
    urlsafe = f"{kid}:{base64.urlsafe_b64encode(base64.b64decode(key)).decode()}"
    assert PayloadCodec.parse(urlsafe).key_id == "k7"


def test_serde_names_an_envelope_it_cannot_read() -> None:
    """Loading an envelope without the key fails with a message naming encryption and key id."""
    sealed = PayloadCodec.parse(KEY_A).encrypt("1", run_id="r", field="input")
    with pytest.raises(_serde.SerializationError, match="encrypted \\(key id 'ka'\\)"):
        _serde.loads(sealed, what="input")


def test_decryption_error_is_a_corrupt_event_error_and_pickles() -> None:
    """DecryptionError is handled like any corrupt entry and survives a pickle round trip."""
    import pickle

    from worker._errors import CorruptEventError

    err = DecryptionError("wrun_1", "input", "ka", "boom")
    assert isinstance(err, CorruptEventError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.run_id, back.field, back.key_id, str(back)) == ("wrun_1", "input", "ka", "boom")

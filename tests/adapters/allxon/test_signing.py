"""Allxon Octo signatures: sign/verify round trip, tampering, raw-text verification, format."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type, hash_secret, hash_secret_raw, verify_secret
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.allxon import signing
from adapters.allxon.signing import (
    SIGNATURE_OVERHEAD,
    SignatureError,
    SignatureFailure,
    SigningInputError,
    sign_frame,
    verify_frame,
)

KEY = "0123456789abcdef0123456789abcdef"
FRAME = (
    '{"jsonrpc":"2.0","method":"v2/notifyPluginState","params":{"appGUID":"g-1",'
    '"moduleName":"room","epoch":"1664185099","states":[{"name":"power","value":"on"}]}}'
)
ENCODED_RE = re.compile(r"\$argon2id\$v=19\$m=64,t=16,p=8\$([A-Za-z0-9+/]{22})\$[A-Za-z0-9+/]{22}")


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _hand_sign(text: str, key: str, salt: bytes = b"fixed salt 16 B!") -> str:
    """An encoded signature computed without the module under test."""
    digest = hashlib.sha1(text.encode()).hexdigest()
    return hash_secret(
        f"{digest}|{key}".encode(),
        salt,
        time_cost=16,
        memory_cost=64,
        parallelism=8,
        hash_len=16,
        type=Type.ID,
        version=19,
    ).decode()


def test_sign_then_verify_round_trip() -> None:
    signed = sign_frame(FRAME, KEY)
    verified = verify_frame(signed, KEY)
    assert verified.method == "v2/notifyPluginState"
    assert verified.unsigned_text == FRAME
    assert verified.digest == hashlib.sha1(FRAME.encode()).hexdigest()


def test_signed_frame_only_inserts_the_suffix_in_the_method() -> None:
    signed = sign_frame(FRAME, KEY)
    marker = '"method":"v2/notifyPluginState?authorization='
    assert marker in signed
    start = signed.index("?authorization=")
    end = signed.index('"', start)
    encoded = signed[start + len("?authorization=") : end]
    assert signed[:start] + signed[end:] == FRAME  # no other byte changed
    assert len(signed.encode()) - len(FRAME.encode()) == SIGNATURE_OVERHEAD == 89
    match = ENCODED_RE.fullmatch(encoded)
    assert match is not None, encoded
    salt = _b64(match.group(1))
    assert len(salt) == 16 and all(0x20 <= b <= 0x7D for b in salt)
    # Independent check of the password composition: sha1-hex(text) + "|" + key.
    digest = hashlib.sha1(FRAME.encode()).hexdigest()
    assert verify_secret(encoded.encode(), f"{digest}|{KEY}".encode(), Type.ID)


def test_one_byte_change_is_a_mismatch() -> None:
    signed = sign_frame(FRAME, KEY)
    tampered = signed.replace('"value":"on"', '"value":"of"')
    assert tampered != signed
    with pytest.raises(SignatureError) as info:
        verify_frame(tampered, KEY)
    assert info.value.reason is SignatureFailure.MISMATCH


def test_wrong_key_is_a_mismatch_and_key_not_in_message() -> None:
    signed = sign_frame(FRAME, KEY)
    other = "f" * 32
    with pytest.raises(SignatureError) as info:
        verify_frame(signed, other)
    assert info.value.reason is SignatureFailure.MISMATCH
    assert other not in str(info.value) and KEY not in str(info.value)


def test_verifies_hand_written_json_with_other_order_spacing_and_escaped_slashes() -> None:
    # What another serializer could send: keys reordered, spaces and newlines, `\/` escapes
    # in the method and in the params. The signer hashed exactly these bytes (plain method).
    unsigned = (
        '{ "params" : { "epoch": "1664185099", "appGUID" : "a\\/b",\n'
        '  "moduleName":"room", "commandId": "c1", "commandSource":"remote",\n'
        '  "commands": [ { "name" : "say_hello", "params" : [] } ] },\n'
        '  "method" :  "v2\\/notifyPluginCommand" , "jsonrpc" : "2.0" }'
    )
    encoded = _hand_sign(unsigned, KEY, salt=b"fixed salt 04 B!")  # a hash holding "/"
    assert "/" in encoded.rsplit("$", 1)[1]
    # That serializer also escapes the `/` of the base64 inside the signature.
    suffix = "?authorization=" + encoded.replace("/", "\\/")
    raw = unsigned.replace('"v2\\/notifyPluginCommand"', f'"v2\\/notifyPluginCommand{suffix}"')
    verified = verify_frame(raw, KEY)
    assert verified.method == "v2/notifyPluginCommand"
    assert verified.unsigned_text == unsigned


def test_signature_lands_in_the_method_even_if_params_repeat_it_first() -> None:
    text = (
        '{"params":{"note":"v2/notifyPluginEvent"},"jsonrpc":"2.0","method":"v2/notifyPluginEvent"}'
    )
    signed = sign_frame(text, KEY)
    assert signed.startswith('{"params":{"note":"v2/notifyPluginEvent"},')
    assert '"method":"v2/notifyPluginEvent?authorization=$argon2id$' in signed
    assert verify_frame(signed, KEY).unsigned_text == text


def test_unsigned_frame_is_rejected() -> None:
    with pytest.raises(SignatureError) as info:
        verify_frame(FRAME, KEY)
    assert info.value.reason is SignatureFailure.UNSIGNED


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"jsonrpc":"2.0"}',
        '{"method": 5}',
        '{"method":"v2/x?authorization=$argon2id$v=19$m=65536,t=16,p=8$'
        'YWJjZGVmZ2hpamtsbW5vcA$/m2nXXMMs/cxd/x1UQRM1A"}',
        '{"method":"v2/x?authorization=garbage"}',
    ],
)
def test_malformed_frames_are_rejected_before_argon2(raw: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify_frame(raw, KEY)
    assert info.value.reason is SignatureFailure.MALFORMED


def test_seed_signature_has_our_format_and_fails_only_on_the_key() -> None:
    # The signed command of the vendor's Commands page, as the real agent sent it (we do not
    # know its key): docs/protocols/allxon.md, "Message signing".
    seed = (
        '{"jsonrpc": "2.0", "method": "v2/notifyPluginCommand?authorization=$argon2id$v=19$'
        'm=64,t=16,p=8$YnFaWiIoX1ckSmE9Tkp5YQ$XLS6riVCcBj/EUr5lYnJ8Q", "params": '
        '{"appGUID": "a8e873a1-e5df-43a2-928a-745ff9c94dfb", "moduleName": "plugin-hello"}}'
    )
    salt = _b64("YnFaWiIoX1ckSmE9Tkp5YQ")
    assert len(salt) == 16 and all(0x20 <= b <= 0x7D for b in salt)
    with pytest.raises(SignatureError) as info:
        verify_frame(seed, KEY)
    assert info.value.reason is SignatureFailure.MISMATCH  # parsed fine, argon2 ran


def test_sign_refuses_signed_or_methodless_text() -> None:
    with pytest.raises(SigningInputError):
        sign_frame('{"method":"v2/notifyPluginState?authorization=x"}', KEY)
    with pytest.raises(SigningInputError):
        sign_frame('{"params":{}}', KEY)
    with pytest.raises(SigningInputError):
        sign_frame("{", KEY)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_signature_error(text: str) -> None:
    with pytest.raises(SignatureError):
        verify_frame(text, KEY)


# --- the one-thread Argon2id (signing._argon2id) against argon2-cffi's own API -------------


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.binary(min_size=16, max_size=16))
def test_one_thread_hash_equals_the_librarys(password: bytes, salt: bytes) -> None:
    library = hash_secret_raw(
        password, salt, time_cost=16, memory_cost=64, parallelism=8, hash_len=16, type=Type.ID
    )
    assert signing._argon2id_one_thread(password, salt) == library
    assert signing._argon2id is signing._argon2id_one_thread  # the self-check chose it


def test_encoded_signature_is_the_librarys_for_the_same_salt() -> None:
    salt = b"fixed salt 16 B!"
    digest = hashlib.sha1(FRAME.encode()).hexdigest()
    ours = signing.encode_signature(FRAME, KEY, salt=salt)
    assert ours == _hand_sign(FRAME, KEY, salt)
    assert verify_secret(ours.encode(), f"{digest}|{KEY}".encode(), Type.ID)


def test_non_canonical_base64_is_malformed_as_argon2_says() -> None:
    signed = sign_frame(FRAME, KEY)
    encoded = signed.split("?authorization=")[1].split('"')[0]
    # the 22nd character of a 16-byte value carries 2 bits of padding: "B" sets one of them
    prefix, hash_text = encoded.rsplit("$", 1)
    odd = prefix + "$" + hash_text[:-1] + ("B" if hash_text[-1] != "B" else "C")
    digest = hashlib.sha1(FRAME.encode()).hexdigest()
    with pytest.raises((VerificationError, InvalidHashError)):  # argon2 refuses it too
        verify_secret(odd.encode(), f"{digest}|{KEY}".encode(), Type.ID)
    with pytest.raises(SignatureError) as info:
        verify_frame(signed.replace(encoded, odd), KEY)
    assert info.value.reason is SignatureFailure.MALFORMED


def test_a_build_whose_context_differs_falls_back_to_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signing, "_KNOWN_VECTOR", b"\0" * 16)
    assert signing._pick_argon2id() is signing._argon2id_library

    def broken(password: bytes, salt: bytes) -> bytes:
        raise TypeError("unknown field 'threads'")

    monkeypatch.setattr(signing, "_argon2id_one_thread", broken)
    assert signing._pick_argon2id() is signing._argon2id_library

"""Allxon Octo message signatures: Argon2id over the SHA-1 of the frame text.

Every Octo frame, in both directions, carries its signature inside the JSON-RPC ``method``
value: ``"v2/notifyPluginState?authorization=$argon2id$v=19$m=64,t=16,p=8$<salt>$<hash>"``.

Signing (``sign_frame``), exactly as ``docs/protocols/allxon.md``, "Message signing" says:

1. the caller serializes the frame with the plain method, exactly as it will be sent;
2. ``digest`` = lowercase hex SHA-1 of the UTF-8 bytes of that text;
3. ``password`` = ``digest + "|" + access_key``;
4. salt = 16 random printable ASCII bytes (0x20..0x7D);
5. Argon2id v0x13, t=16, m=64 KiB, p=8, 16-byte hash, encoded with unpadded base64;
6. ``?authorization=<encoded>`` is inserted at the end of the method value; no other byte of
   the text changes.

Verifying (``verify_frame``) works on the RAW received text, never on a re-serialization, so a
peer's key order, spacing or ``\\/`` escapes do not matter:

1. the top-level ``method`` value is located in the raw text by a small JSON tokenizer, and read
   twice: *raw M* (the string contents as they appear between the quotes, escapes untouched) and
   *decoded M* (its JSON value);
2. ``base`` = raw M up to its first ``?``; ``sig`` = decoded M after its last ``?authorization=``
   (decoded, because a peer that escapes ``/`` also escapes the ``/`` of the base64);
3. the first occurrence of raw M in the raw text is replaced by raw base. Using the *raw* form is
   the decision that makes escaped slashes work: a signer whose serializer writes
   ``"v2\\/notifyPluginCommand"`` hashed exactly those bytes, and raw M carries the same escapes;
4. the frame is valid when Argon2id-verify(sig, SHA-1-hex(result) + "|" + access_key) succeeds.

The method value contains a random 74-character signature, so in any frame a signer can produce
its first occurrence *is* the method value; the "first occurrence" rule of the protocol and
"the method value" agree.

Only the exact parameter set above is accepted for verification (``$argon2id$v=19$m=64,t=16,
p=8$``): an encoded hash naming other costs is rejected as malformed *before* Argon2 runs, so a
hostile peer cannot make us allocate gigabytes or spin for seconds.

Both functions are pure and CPU-bound (about 0.6 ms each here). Do not call them on an
event-loop thread: under trio use ``await trio.to_thread.run_sync(sign_frame, text, key)``.

Why 0.6 ms and not 20: the parameters ask for 8 lanes, and argon2-cffi's ``hash_secret``
computes 8 lanes with 8 threads -- the reference code starts and joins them for every slice
of every pass, 512 threads per hash -- which cost 19 ms of wall time and 30 ms of CPU over both
cores on a 2-core machine, and starved everything else on it for that long. The lanes are the
hash's definition; the threads are only how it is computed: :func:`_argon2id` fills the same
8 lanes on the calling thread through argon2-cffi's ``argon2_ctx`` binding, and gives
byte-identical hashes (checked at import against a vector from ``hash_secret_raw``, with that
function as the fallback, and in the tests against the library for random inputs).

Errors: ``SignatureError(ValueError)`` with ``.reason`` (``SignatureFailure.UNSIGNED``,
``MALFORMED``, ``MISMATCH``) for verification; ``SigningInputError(ValueError)`` when asked to
sign text that is not a signable frame (not a JSON object, no string ``method``, already signed).
The access key never appears in an exception message.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from _argon2_cffi_bindings import ffi, lib  # argon2-cffi's own CFFI build of libargon2
from argon2.low_level import Type, core, hash_secret_raw

__all__ = [
    "AUTHORIZATION_MARKER",
    "ENCODED_HASH_LENGTH",
    "ENCODED_PREFIX",
    "SIGNATURE_OVERHEAD",
    "SignatureError",
    "SignatureFailure",
    "SigningInputError",
    "VerifiedFrame",
    "sign_frame",
    "verify_frame",
]

logger = logging.getLogger(__name__)

# The Argon2id parameters the Octo agent uses (docs/protocols/allxon.md, "Message signing").
TIME_COST = 16
MEMORY_COST_KIB = 64
PARALLELISM = 8
HASH_LEN = 16
SALT_LEN = 16
ARGON2_VERSION = 19  # 0x13
_SALT_ALPHABET = bytes(range(0x20, 0x7E))  # printable ASCII 0x20..0x7D inclusive

AUTHORIZATION_MARKER = "?authorization="
ENCODED_PREFIX = f"$argon2id$v={ARGON2_VERSION}$m={MEMORY_COST_KIB},t={TIME_COST},p={PARALLELISM}$"


def _b64_unpadded_len(n_bytes: int) -> int:
    return len(base64.b64encode(b"\0" * n_bytes).rstrip(b"="))


ENCODED_HASH_LENGTH = (
    len(ENCODED_PREFIX) + _b64_unpadded_len(SALT_LEN) + 1 + _b64_unpadded_len(HASH_LEN)
)
"""Length of every encoded hash we produce (74): fixed parameters, salt and hash lengths."""

SIGNATURE_OVERHEAD = len(AUTHORIZATION_MARKER) + ENCODED_HASH_LENGTH
"""Bytes that ``sign_frame`` adds to a frame (89). The encoded hash holds only base64, ``$``,
``,`` and ``=``, none of which JSON escapes, so the overhead is exact in bytes too."""


def _argon2id_library(password: bytes, salt: bytes) -> bytes:
    """The raw hash by argon2-cffi's supported API (one thread per lane)."""
    return hash_secret_raw(
        password,
        salt,
        time_cost=TIME_COST,
        memory_cost=MEMORY_COST_KIB,
        parallelism=PARALLELISM,
        hash_len=HASH_LEN,
        type=Type.ID,
        version=ARGON2_VERSION,
    )


def _argon2id_one_thread(password: bytes, salt: bytes) -> bytes:
    """The same raw hash, its 8 lanes filled on the calling thread (see the module docstring)."""
    out = ffi.new("uint8_t[]", HASH_LEN)
    pwd = ffi.new("uint8_t[]", password)
    salt_buf = ffi.new("uint8_t[]", salt)
    context = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": HASH_LEN,
            "pwd": pwd,
            "pwdlen": len(password),
            "salt": salt_buf,
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": TIME_COST,
            "m_cost": MEMORY_COST_KIB,
            "lanes": PARALLELISM,
            "threads": 1,
            "version": ARGON2_VERSION,
            "allocate_cbk": ffi.NULL,
            "free_cbk": ffi.NULL,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    code = core(context, Type.ID.value)
    if code != lib.ARGON2_OK:
        raise RuntimeError(f"argon2_ctx failed with code {code}")
    return bytes(ffi.buffer(out, HASH_LEN))


def _pick_argon2id() -> Callable[[bytes, bytes], bytes]:
    """The one-thread hash when it agrees with the library on a known vector, else the library.

    argon2-cffi warns that the context struct may change in any release: a build where it did
    falls back to the slow but supported path instead of signing wrongly.
    """
    password, salt = b"da39a3ee5e6b4b0d3255bfef95601890afd80709|self-check", b"0123456789ABCDEF"
    try:
        if _argon2id_one_thread(password, salt) == _KNOWN_VECTOR:
            return _argon2id_one_thread
    except Exception as err:  # any failure means: do not use it
        logger.warning("one-thread Argon2id unavailable (%s); using hash_secret_raw", err)
        return _argon2id_library
    logger.warning("one-thread Argon2id disagrees with argon2-cffi; using hash_secret_raw")
    return _argon2id_library


#: ``hash_secret_raw`` of the self-check input above, with the Octo parameters.
_KNOWN_VECTOR = bytes.fromhex("824c2da7ce5979eeca90c502955cbc79")

_argon2id = _pick_argon2id()


_ENCODED_RE = re.compile(
    re.escape(ENCODED_PREFIX) + r"[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{22}",
)

# One JSON token: a string (with escapes) or a structural character. Numbers, literals and
# whitespace are skipped, which is enough to walk the structure of text already known valid.
_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]', re.DOTALL)


class SignatureFailure(enum.Enum):
    """Why a frame failed verification."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    MISMATCH = "mismatch"


class SignatureError(ValueError):
    """A received frame is unsigned, malformed or carries a signature that does not verify."""

    def __init__(self, reason: SignatureFailure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class SigningInputError(ValueError):
    """``sign_frame`` was given text that is not an unsigned JSON-RPC frame."""


@dataclass(frozen=True, slots=True)
class VerifiedFrame:
    """A frame whose signature verified.

    ``method`` is the base method (``"v2/notifyPluginCommand"``); ``unsigned_text`` is the raw
    text with the signature removed, i.e. exactly the text the peer hashed; ``digest`` is the
    SHA-1 hex of it.
    """

    method: str
    unsigned_text: str
    digest: str


class _MethodHeader(msgspec.Struct):
    method: object = None


_header_decoder = msgspec.json.Decoder(_MethodHeader)


@dataclass(frozen=True, slots=True)
class _MethodSpan:
    """Where the top-level method string sits in the text: contents only, quotes excluded."""

    start: int
    end: int
    decoded: str


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _locate_method(text: str) -> _MethodSpan:
    """Find the single top-level ``"method": "<string>"`` of a JSON object in raw text.

    Raises ``ValueError`` (with a reason) when the text is not a JSON object, has no string
    ``method`` at the top level, or has more than one.
    """
    try:
        header = _header_decoder.decode(text)
    except msgspec.DecodeError as err:
        raise ValueError(f"not a JSON object ({err})") from err
    if not isinstance(header.method, str):
        raise ValueError("no string 'method' member at the top level")
    depth = 0
    expect_key = False
    pending_key: str | None = None
    spans: list[_MethodSpan] = []
    capture_next_value = False
    for match in _TOKEN_RE.finditer(text):
        tok = match.group()
        if tok in "{[":
            depth += 1
            expect_key = tok == "{" and depth == 1
            capture_next_value = False
        elif tok in "}]":
            depth -= 1
            capture_next_value = False
        elif tok == ",":
            expect_key = depth == 1
            capture_next_value = False
        elif tok == ":":
            capture_next_value = depth == 1 and pending_key == "method"
            pending_key = None
        else:  # a string token
            if depth == 1 and expect_key:
                pending_key = msgspec.json.decode(tok, type=str)
                expect_key = False
            elif capture_next_value:
                spans.append(
                    _MethodSpan(
                        match.start() + 1, match.end() - 1, msgspec.json.decode(tok, type=str)
                    )
                )
            capture_next_value = False
    if len(spans) != 1:
        raise ValueError(f"expected exactly one top-level 'method', found {len(spans)}")
    return spans[0]


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()  # SHA-1: the protocol's choice, not ours


def _password(digest: str, access_key: str) -> bytes:
    return f"{digest}|{access_key}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    """Unpadded base64 as argon2 reads it: None unless ``text`` is the canonical encoding."""
    data = base64.b64decode(text + "=" * (-len(text) % 4))
    return data if _b64(data) == text else None


def _random_salt() -> bytes:
    return bytes(secrets.choice(_SALT_ALPHABET) for _ in range(SALT_LEN))


def encode_signature(unsigned_text: str, access_key: str, *, salt: bytes | None = None) -> str:
    """Return the Argon2id encoded hash (``$argon2id$v=19$...``) that signs ``unsigned_text``.

    ``salt`` is for golden-vector tests only; by default a fresh random printable salt is used.
    CPU-bound (about 0.6 ms): run in a worker thread.
    """
    if salt is None:
        salt = _random_salt()
    elif len(salt) != SALT_LEN or any(b not in _SALT_ALPHABET for b in salt):
        raise SigningInputError(f"salt must be {SALT_LEN} bytes in 0x20..0x7D")
    raw = _argon2id(_password(_digest(unsigned_text), access_key), salt)
    return ENCODED_PREFIX + _b64(salt) + "$" + _b64(raw)


def sign_frame(unsigned_json_text: str, access_key: str) -> str:
    """Sign a serialized frame: return it with ``?authorization=<encoded>`` appended to the
    top-level method value and no other byte changed.

    The text must be exactly what will be sent (the digest covers every byte). CPU-bound
    (about 0.6 ms): call it through ``trio.to_thread.run_sync``.
    """
    try:
        span = _locate_method(unsigned_json_text)
    except ValueError as err:
        raise SigningInputError(f"cannot sign {_excerpt(unsigned_json_text)}: {err}") from None
    if "?" in span.decoded:
        raise SigningInputError(
            f"method {span.decoded[:60]!r} already carries a query/signature; sign the plain frame"
        )
    suffix = AUTHORIZATION_MARKER + encode_signature(unsigned_json_text, access_key)
    return unsigned_json_text[: span.end] + suffix + unsigned_json_text[span.end :]


def verify_frame(raw_text: str, access_key: str) -> VerifiedFrame:
    """Verify the signature of a frame as received (raw text) and return its unsigned form.

    Raises ``SignatureError`` with reason ``UNSIGNED`` (no ``?authorization=`` in the method),
    ``MALFORMED`` (not a JSON object with one string method, or an encoded hash that is not
    ``$argon2id$v=19$m=64,t=16,p=8$<22 b64>$<22 b64>``) or ``MISMATCH`` (wrong key or any byte
    changed). CPU-bound (about 0.6 ms): call it through ``trio.to_thread.run_sync``.
    """
    try:
        span = _locate_method(raw_text)
    except ValueError as err:
        raise SignatureError(
            SignatureFailure.MALFORMED, f"{err}; frame {_excerpt(raw_text)}"
        ) from None
    decoded_m = span.decoded
    if AUTHORIZATION_MARKER not in decoded_m:
        raise SignatureError(
            SignatureFailure.UNSIGNED, f"method {decoded_m[:60]!r} carries no signature"
        )
    signature = decoded_m.rsplit(AUTHORIZATION_MARKER, 1)[1]
    if _ENCODED_RE.fullmatch(signature) is None:
        raise SignatureError(
            SignatureFailure.MALFORMED,
            f"signature {signature[:90]!r} is not {ENCODED_PREFIX}<salt>$<hash>",
        )
    raw_m = raw_text[span.start : span.end]
    raw_base = raw_m.split("?", 1)[0]
    first = raw_text.find(raw_m)  # the protocol's "first occurrence of M"
    unsigned = raw_text[:first] + raw_base + raw_text[first + len(raw_m) :]
    digest = _digest(unsigned)
    salt_text, hash_text = signature[len(ENCODED_PREFIX) :].split("$")
    salt, expected = _unb64(salt_text), _unb64(hash_text)
    if salt is None or expected is None:  # argon2's own decoder refuses these too
        raise SignatureError(
            SignatureFailure.MALFORMED,
            f"signature {signature[:90]!r} has non-canonical base64 (stray low bits)",
        )
    if not hmac.compare_digest(_argon2id(_password(digest, access_key), salt), expected):
        raise SignatureError(
            SignatureFailure.MISMATCH,
            f"signature of {decoded_m.split('?', 1)[0]!r} does not match (digest {digest})",
        )
    return VerifiedFrame(method=decoded_m.split("?", 1)[0], unsigned_text=unsigned, digest=digest)

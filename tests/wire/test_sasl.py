"""Who is logging in: user names from LOGIN arguments and first SASL responses only."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapproxy.wire.sasl import login_user, sasl_user
from imapproxy.wire.tokens import encode_astring


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- LOGIN ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "user"),
    [
        (b"a LOGIN bob secret\r\n", "bob"),
        (b'a login "bob smith" "pw"\r\n', "bob smith"),
        (b'a LOGIN "b\\"o\\\\b" pw\r\n', 'b"o\\b'),
        (b"a LOGIN {3}\r\nbob {6}\r\nsecret\r\n", "bob"),
        (b"a LOGIN {4+}\r\nb\xc3\xb6b {2+}\r\npw\r\n", "böb"),
        (b"a LOGIN bob@example.org {6}\r\nsecret\r\n", "bob@example.org"),
    ],
)
def test_login_user(raw: bytes, user: str) -> None:
    assert login_user(raw) == user


@pytest.mark.parametrize(
    "raw", [b"a LOGIN\r\n", b'a LOGIN "bob\r\n', b"a LOGIN (bob) pw\r\n", b"garbage"]
)
def test_login_user_unreadable(raw: bytes) -> None:
    assert login_user(raw) is None


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
    st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
)
def test_login_user_is_the_first_argument_never_the_password(user: str, password: str) -> None:
    raw = b"a LOGIN " + encode_astring(user.encode()) + b" " + encode_astring(password.encode())
    assert login_user(raw + b"\r\n") == user


# --- SASL ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mechanism", "response", "user"),
    [
        ("PLAIN", b64(b"\x00bob\x00secret"), "bob"),
        ("PLAIN", b64(b"admin\x00bob\x00secret"), "bob"),  # authcid, not authzid
        ("PLAIN", b64(b"\x00bob\x00secret") + b"\r\n", "bob"),
        ("LOGIN", b64(b"bob"), "bob"),
        ("XOAUTH2", b64(b"user=bob@example.org\x01auth=Bearer tok\x01\x01"), "bob@example.org"),
        (
            "OAUTHBEARER",
            b64(b"n,a=bob@example.org,\x01host=x\x01auth=Bearer t\x01\x01"),
            "bob@example.org",
        ),
        ("PLAIN", b64("\x00jörg\x00pw".encode()), "jörg"),
    ],
)
def test_sasl_user(mechanism: str, response: bytes, user: str) -> None:
    assert sasl_user(mechanism, response) == user


@pytest.mark.parametrize(
    ("mechanism", "response"),
    [
        ("PLAIN", b"*"),  # cancellation
        ("PLAIN", b"not base64!"),
        ("PLAIN", b""),
        ("PLAIN", b64(b"bob\x00secret")),  # two fields: malformed
        ("PLAIN", b64(b"\x00\x00secret")),  # empty authcid
        ("XOAUTH2", b64(b"auth=Bearer tok\x01\x01")),
        ("OAUTHBEARER", b64(b"n,,\x01auth=Bearer t\x01\x01")),
        ("CRAM-MD5", b64(b"bob 0123456789abcdef")),  # unknown mechanism: no guess
        ("LOGIN", b64(b"")),
    ],
)
def test_sasl_user_none(mechanism: str, response: bytes) -> None:
    assert sasl_user(mechanism, response) is None


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=1, max_size=16).filter(lambda b: b"\x00" not in b),
    st.binary(min_size=1, max_size=16).filter(lambda b: b"\x00" not in b),
    st.binary(max_size=8).filter(lambda b: b"\x00" not in b),
)
def test_sasl_plain_never_returns_the_password(user: bytes, password: bytes, authz: bytes) -> None:
    got = sasl_user("PLAIN", b64(authz + b"\x00" + user + b"\x00" + password))
    assert got == user.decode("utf-8", "replace")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_sasl_user_never_raises(response: bytes) -> None:
    for mechanism in ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "OTHER"):
        result = sasl_user(mechanism, response)
        assert result is None or isinstance(result, str)

"""The SigV4 verifier of testkit/sigv4.py: it accepts what botocore signs
and AWS's own test vector, and refuses a request whose body, signed headers,
key, scope, date or session token differ from what was signed. The SageMaker
backend's tests rely on it to refuse anything AWS would."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from testkit.sigv4 import SIGNATURE_MISMATCH, Credential, SignatureError, verify

REGION = "eu-west-1"
KEY = Credential("AKIDTESTKEY", "test/secret+key")
TEMPORARY = Credential("ASIATEMPKEY", "temp-secret", "session-token-value")
KNOWN = {KEY.access_key: KEY, TEMPORARY.access_key: TEMPORARY}
HOST = "127.0.0.1:8123"
PATH = "/endpoints/my-endpoint/invocations"

Request = tuple[str, list[tuple[str, str]], bytes]  # path, headers, body


def signed(
    body: bytes = b'{"instances": [[1.0, 2.0]]}',
    credential: Credential = KEY,
    region: str = REGION,
    service: str = "sagemaker",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> Request:
    """A request as the gateway's client signs it: botocore's SigV4Auth over an AWSRequest."""
    url = f"http://{HOST}{PATH}" + (f"?{query}" if query else "")
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "content-type": "application/json",
            "accept": "application/json",
            **(headers or {}),
        },
    )
    frozen = ReadOnlyCredentials(credential.access_key, credential.secret_key, credential.token)
    SigV4Auth(frozen, service, region).add_auth(request)
    sent = [("Host", HOST), *request.headers.items(), ("Content-Length", str(len(body)))]
    return PATH, sent, body


def check(request: Request, query: str = "", now: datetime.datetime | None = None) -> Credential:
    path, headers, body = request
    return verify("POST", path, query, headers, body, KNOWN, REGION, now=now)


def refused(request: Request, query: str = "", now: datetime.datetime | None = None) -> str:
    with pytest.raises(SignatureError) as caught:
        check(request, query, now)
    return caught.value.code


def replace(request: Request, name: str, value: str) -> Request:
    path, headers, body = request
    return path, [(n, value if n.lower() == name else v) for n, v in headers], body


def test_aws_published_test_vector_verifies() -> None:
    # "get-vanilla" from AWS's SigV4 test suite: the verifier follows the
    # specification, not just whatever botocore does.
    vanilla = Credential("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    authorization = (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    headers = [
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
        ("Authorization", authorization),
    ]
    when = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.UTC)
    known = {vanilla.access_key: vanilla}
    assert verify("GET", "/", "", headers, b"", known, "us-east-1", "service", when) == vanilla
    with pytest.raises(SignatureError, match="does not match"):
        verify("GET", "/x", "", headers, b"", known, "us-east-1", "service", when)


def test_what_botocore_signs_verifies() -> None:
    assert check(signed()) == KEY
    assert check(signed(credential=TEMPORARY)) == TEMPORARY
    assert check(signed(b"")) == KEY
    assert check(signed(query="b=2&a=1%20x"), query="b=2&a=1%20x") == KEY
    body = b"1,2,3\n"
    extra = {
        "x-amzn-sagemaker-target-variant": "blue",
        "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    assert check(signed(body, headers=extra)) == KEY


def test_the_signature_covers_the_body() -> None:
    path, headers, body = signed(b'{"instances": [[1.0, 2.0]]}')
    assert refused((path, headers, b'{"instances": [[1.0, 2.5]]}')) == "InvalidSignatureException"
    assert refused((path, headers, body + b" ")) == "InvalidSignatureException"


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda r: replace(r, "content-type", "text/csv"), "InvalidSignatureException"),
        (lambda r: replace(r, "accept", "text/csv"), "InvalidSignatureException"),
        (lambda r: replace(r, "host", "127.0.0.1:9999"), "InvalidSignatureException"),
        (
            lambda r: (r[0], [*r[1], ("X-Amz-Target", "sneaked-in")], r[2]),
            "InvalidSignatureException",
        ),
        (lambda r: (r[0].replace("my-endpoint", "other"), r[1], r[2]), "InvalidSignatureException"),
        (
            lambda r: (r[0], [(n, v) for n, v in r[1] if n != "Authorization"], r[2]),
            "MissingAuthenticationTokenException",
        ),
        (
            lambda r: replace(r, "authorization", "Bearer not-sigv4"),
            "IncompleteSignatureException",
        ),
    ],
    ids=["content-type", "accept", "host", "unsigned-x-amz", "path", "no-auth", "not-sigv4"],
)
def test_a_request_changed_after_signing_is_refused(
    tamper: Callable[[Request], Request], code: str
) -> None:
    assert refused(tamper(signed())) == code


def test_a_wrong_secret_or_an_unknown_key_is_refused() -> None:
    with pytest.raises(SignatureError) as caught:
        check(signed(credential=Credential(KEY.access_key, "not-the-secret")))
    assert caught.value.message == SIGNATURE_MISMATCH
    assert refused(signed(credential=Credential("AKIDUNKNOWN", "x"))) == (
        "UnrecognizedClientException"
    )


def test_the_scope_must_be_this_region_and_sagemaker() -> None:
    assert refused(signed(region="us-east-1")) == "InvalidSignatureException"
    assert refused(signed(service="execute-api")) == "InvalidSignatureException"


def test_a_signature_older_or_newer_than_five_minutes_is_refused() -> None:
    request = signed()
    now = datetime.datetime.now(datetime.UTC)
    assert check(request, now=now + datetime.timedelta(minutes=4)) == KEY
    assert refused(request, now=now + datetime.timedelta(minutes=6)) == "InvalidSignatureException"
    assert refused(request, now=now - datetime.timedelta(minutes=6)) == "InvalidSignatureException"


def test_temporary_credentials_need_their_session_token() -> None:
    request = signed(credential=TEMPORARY)
    path, headers, body = request
    without = [(n, v) for n, v in headers if n.lower() != "x-amz-security-token"]
    assert refused((path, without, body)) == "InvalidSignatureException"  # signed, then absent
    assert refused(replace(request, "x-amz-security-token", "stolen")) == (
        "UnrecognizedClientException"
    )
    # A key without a token given one (the token is signed, so it verifies but for that).
    lying = signed(credential=Credential(KEY.access_key, KEY.secret_key, "a-token"))
    assert refused(lying) == "UnrecognizedClientException"


def test_a_body_hash_header_must_match_the_body() -> None:
    request = signed(headers={"x-amz-content-sha256": "0" * 64})
    assert refused(request) == "InvalidSignatureException"

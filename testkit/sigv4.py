"""Verifying an AWS Signature Version 4 as AWS does, for testkit/sigv4_server.py:
the canonical request, string to sign and key derivation of the SigV4
specification, written independently of botocore (which the gateway signs
with), so that a test compares two implementations, not one with itself.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

SERVICE = "sagemaker"
MAX_SKEW = datetime.timedelta(minutes=5)
ALGORITHM = "AWS4-HMAC-SHA256"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass(frozen=True)
class Credential:
    access_key: str
    secret_key: str
    token: str | None = None

    @classmethod
    def parse(cls, text: str) -> Credential:
        """AKID:SECRET or AKID:SECRET:TOKEN (the --credentials argument)."""
        parts = text.split(":", 2)
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"expected AKID:SECRET[:TOKEN], got {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def argument(self) -> str:
        return ":".join(p for p in (self.access_key, self.secret_key, self.token) if p)


class SignatureError(Exception):
    """Why a request is refused, as AWS names it (the x-amzn-ErrorType)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def verify(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    credentials: dict[str, Credential],
    region: str,
    service: str = SERVICE,
    now: datetime.datetime | None = None,
) -> Credential:
    """The credential that signed this request; SignatureError when it is not
    signed as SigV4 requires. `path` is the request's path as sent (encoded),
    `query` its raw query string."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    authorization = by_name.get("authorization")
    if not authorization:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    parsed = _AUTHORIZATION.fullmatch(authorization[0].strip())
    if parsed is None:
        raise SignatureError(
            "IncompleteSignatureException",
            f"Authorization header requires Credential, SignedHeaders and Signature ({ALGORITHM})",
        )
    scope = parsed["credential"].split("/")
    if len(scope) != 5:
        raise SignatureError("IncompleteSignatureException", "Credential is malformed")
    access_key, day, scope_region, scope_service, terminator = scope
    credential = credentials.get(access_key)
    if credential is None:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    stamp = (by_name.get("x-amz-date") or [""])[0]
    try:
        signed_at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException", "Authorization requires a valid X-Amz-Date header"
        ) from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - signed_at) > MAX_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {stamp} is not within 5 minutes of the server's time",
        )
    if day != stamp[:8] or scope_region != region or scope_service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to {stamp[:8]}/{region}/{service}, "
            f"not {day}/{scope_region}/{scope_service}",
        )
    if terminator != "aws4_request":
        raise SignatureError("InvalidSignatureException", "Credential should end in aws4_request")
    signed = parsed["signed"].split(";")
    if signed != sorted(set(signed)) or any(name != name.lower() for name in signed):
        raise SignatureError(
            "InvalidSignatureException", "SignedHeaders must be lowercase, sorted and unique"
        )
    # What says how to read the request, or who sends it, cannot be left unsigned.
    must_sign = {"host", "x-amz-date"}
    must_sign |= {n for n in by_name if n.startswith("x-amz-") or n == "content-type"}
    missing = sorted(must_sign - set(signed))
    if missing:
        raise SignatureError("InvalidSignatureException", f"Headers must be signed: {missing}")
    absent = [n for n in signed if n not in by_name]
    if absent:
        raise SignatureError("InvalidSignatureException", f"Signed headers are absent: {absent}")
    token = by_name["x-amz-security-token"][0] if "x-amz-security-token" in by_name else None
    if token != credential.token:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = by_name.get("x-amz-content-sha256", [None])[0]
    if declared is not None and declared != payload_hash:
        raise SignatureError(
            "InvalidSignatureException", "x-amz-content-sha256 does not match the body"
        )
    canonical_headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in by_name[name])}\n" for name in signed
    )
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(query, keep_blank_values=True)
    )
    canonical_request = "\n".join(
        [
            method.upper(),
            quote(path, safe="/~"),  # the path as sent, encoded once more (not S3)
            "&".join(f"{k}={v}" for k, v in pairs),
            canonical_headers,
            ";".join(signed),
            payload_hash,
        ]
    )
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            stamp,
            f"{day}/{region}/{service}/aws4_request",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + credential.secret_key).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parsed["signature"]):
        raise SignatureError("InvalidSignatureException", SIGNATURE_MISMATCH)
    return credential

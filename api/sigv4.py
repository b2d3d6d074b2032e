"""AWS Signature Version 4, verified on the server with botocore's own signer (nothing of SigV4 is hand-written).

Both forms AWS accepts:

- **header**: ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/kafka/aws4_request,
  SignedHeaders=..., Signature=...`` with ``X-Amz-Date`` (boto3, the AWS CLI, Terraform's aws provider);
- **query string** (presigned): ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
  ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` in the query; only for requests without a body, whose payload a
  presigned URL does not sign.

The signature is recomputed over exactly what arrived: the raw (still percent-encoded) path, the raw query
string, the headers the client listed in ``SignedHeaders`` with their received values, and the body's SHA-256
(an ``X-Amz-Content-SHA256`` header must equal it). The credential scope must name service ``kafka`` and
Ferry's region; the signing time must be within five minutes of the server's clock (a presigned URL also within
its ``X-Amz-Expires``). Comparison is constant-time.

``parse`` checks the request's shape and time without any secret; ``verify`` checks the signature with the
secret of the key ``parse`` named. Every refusal is an ``AuthenticationError`` with AWS's own wording, which
never says more than AWS says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from botocore.utils import normalize_url_path

from models.errors import AuthenticationError

SERVICE = "kafka"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_PRESIGNED_EXPIRY_SECONDS = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_SIGNED_HEADER = re.compile(r"^[a-z0-9-]+$")
_TIMESTAMP = re.compile(r"^\d{8}T\d{6}Z\Z", re.ASCII)

MISSING = "Missing Authentication Token"
INCOMPLETE = "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters."
INVALID_TOKEN = "The security token included in the request is invalid."
# (percent-encode the path again, sort the query): the SDKs' form first, then curl's.
_CANONICAL_FORMS = ((True, True), (False, True), (False, False))
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)


@dataclass(frozen=True)
class SignedRequest:
    """A request whose signature has the right shape, scope and time; its signature is not checked yet."""

    access_key_id: str
    method: str
    raw_path: str
    raw_query: str
    headers: HTTPHeaders
    body: bytes
    timestamp: str
    region: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned_expires: int | None


class _ListedHeadersSigner(SigV4Auth):  # type: ignore[misc]
    """botocore's signer, signing exactly the headers the client listed (botocore itself would take all but a
    few). ``encode_path_again`` False canonicalises the path as it arrived instead of percent-encoding it once more,
    as curl's ``--aws-sigv4`` (S3's convention) does; AWS SDKs encode it again."""

    def __init__(
        self,
        credentials: Credentials,
        region: str,
        signed: tuple[str, ...],
        *,
        encode_path_again: bool = True,
        sort_query: bool = True,
    ) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed
        self._encode_path_again = encode_path_again
        self._sort_query = sort_query

    def _normalize_url_path(self, path: str) -> str:
        if self._encode_path_again:
            return str(super()._normalize_url_path(path))
        return str(normalize_url_path(path))

    def canonical_query_string(self, request: AWSRequest) -> str:
        if self._sort_query:
            return str(super().canonical_query_string(request))
        return str(urlsplit(request.url).query)

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        picked = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                picked[name] = value
        return picked


class _ListedHeadersQuerySigner(SigV4QueryAuth):  # type: ignore[misc]
    def __init__(self, credentials: Credentials, region: str, signed: tuple[str, ...], expires: int) -> None:
        super().__init__(credentials, SERVICE, region, expires=expires)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        picked = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                picked[name] = value
        return picked


def _refuse(message: str) -> AuthenticationError:
    return AuthenticationError(message)


def _scope(credential: str, region: str) -> tuple[str, str, str]:
    """(access key id, date, region) of a credential ``AKID/yyyymmdd/region/kafka/aws4_request``."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise _refuse(f"Credential should be scoped to a valid region, not '{region if len(parts) < 3 else parts[2]}'.")
    access_key_id, date, scope_region, service = parts[0], parts[1], parts[2], parts[3]
    if service != SERVICE:
        raise _refuse(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if scope_region != region:
        raise _refuse(f"Credential should be scoped to a valid region, not '{scope_region[:40]}'.")
    return access_key_id, date, scope_region


def _signing_time(stamp: str, date: str) -> dt.datetime:
    # SIGV4_TIMESTAMP (%Y%m%dT%H%M%SZ) read by hand: strptime is a tenth of a request's authentication.
    if not _TIMESTAMP.match(stamp):
        raise _refuse(INCOMPLETE)
    try:
        when = dt.datetime(
            int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]),
            int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15]), tzinfo=dt.UTC,
        )  # fmt: skip
    except ValueError:
        raise _refuse(INCOMPLETE) from None
    if stamp[:8] != date:
        raise _refuse("Credential should be scoped to a valid date.")
    return when


def _signed_header_names(listed: str) -> tuple[str, ...]:
    names = tuple(listed.split(";"))
    if not names or not all(_SIGNED_HEADER.match(name) for name in names) or "host" not in names:
        raise _refuse(INCOMPLETE)
    return names


def parse(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    region: str,
    now: dt.datetime | None = None,
) -> SignedRequest:
    """Check the request's signature shape, scope and time; raise ``AuthenticationError`` otherwise."""
    received = HTTPHeaders()
    for name, value in headers:
        received.add_header(name.lower(), value)
    now = now or dt.datetime.now(dt.UTC)
    query = _query_pairs(raw_query)
    authorization = received.get("authorization")
    if authorization is None and "X-Amz-Signature" not in query:
        raise _refuse(MISSING)
    if authorization is not None:
        match = _AUTHORIZATION.match(authorization.strip())
        if match is None:
            raise _refuse(INCOMPLETE)
        access_key_id, date, scope_region = _scope(match["credential"], region)
        signed = _signed_header_names(match["signed"])
        if "x-amz-date" not in signed:
            raise _refuse(INCOMPLETE)
        stamp = received.get("x-amz-date") or ""
        when = _signing_time(stamp, date)
        if abs(now - when) > MAX_CLOCK_SKEW:
            raise _refuse(_expired(stamp, now))
        content_sha256 = received.get("x-amz-content-sha256")
        if content_sha256 is not None and content_sha256 != hashlib.sha256(body).hexdigest():
            # UNSIGNED-PAYLOAD included: every payload Ferry accepts is signed.
            raise _refuse(MISMATCH)
        return SignedRequest(
            access_key_id=access_key_id,
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=received,
            body=body,
            timestamp=stamp,
            region=scope_region,
            signed_headers=signed,
            signature=match["signature"],
            presigned_expires=None,
        )
    # Presigned: everything in the query string.
    if query.get("X-Amz-Algorithm") != ALGORITHM or body:
        raise _refuse(INCOMPLETE)
    try:
        credential = unquote(query["X-Amz-Credential"])
        stamp = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
        signed = _signed_header_names(unquote(query["X-Amz-SignedHeaders"]))
        signature = query["X-Amz-Signature"]
    except (KeyError, ValueError):
        raise _refuse(INCOMPLETE) from None
    if not 1 <= expires <= MAX_PRESIGNED_EXPIRY_SECONDS or not re.fullmatch(r"[0-9a-f]{64}", signature):
        raise _refuse(INCOMPLETE)
    access_key_id, date, scope_region = _scope(credential, region)
    when = _signing_time(stamp, date)
    if now < when - MAX_CLOCK_SKEW or now > when + dt.timedelta(seconds=expires):
        raise _refuse("Request has expired")
    return SignedRequest(
        access_key_id=access_key_id,
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=received,
        body=body,
        timestamp=stamp,
        region=scope_region,
        signed_headers=signed,
        signature=signature,
        presigned_expires=expires,
    )


def verify(request: SignedRequest, secret_access_key: str) -> None:
    """Recompute the signature with the key's secret; raise ``AuthenticationError`` when it differs."""
    credentials = Credentials(request.access_key_id, secret_access_key)
    host = request.headers.get("host", "")
    if request.presigned_expires is None:
        url = f"http://{host}{request.raw_path}" + (f"?{request.raw_query}" if request.raw_query else "")
        aws_request = AWSRequest(method=request.method, url=url, data=request.body, headers=request.headers)
        aws_request.context["timestamp"] = request.timestamp
        # AWS SDKs percent-encode the (already encoded) path once more; curl does not, and curl before 8.1 signs
        # the query string in the order it sends it. Each form covers the same bytes the request carries.
        for encode_path_again, sort_query in _CANONICAL_FORMS:
            signer = _ListedHeadersSigner(
                credentials,
                request.region,
                request.signed_headers,
                encode_path_again=encode_path_again,
                sort_query=sort_query,
            )
            if _matches(signer, aws_request, request.signature):
                return
        raise _refuse(MISMATCH)
    # The canonical query string holds every parameter but the signature itself.
    kept = "&".join(pair for pair in request.raw_query.split("&") if not pair.startswith("X-Amz-Signature="))
    url = f"http://{host}{request.raw_path}" + (f"?{kept}" if kept else "")
    query_signer = _ListedHeadersQuerySigner(
        credentials, request.region, request.signed_headers, request.presigned_expires
    )
    aws_request = AWSRequest(method=request.method, url=url, headers=request.headers)
    aws_request.context["timestamp"] = request.timestamp
    if not _matches(query_signer, aws_request, request.signature):
        raise _refuse(MISMATCH)


def _matches(signer: SigV4Auth, aws_request: AWSRequest, signature: str) -> bool:
    expected = signer.signature(signer.string_to_sign(aws_request, signer.canonical_request(aws_request)), aws_request)
    return hmac.compare_digest(str(expected), signature)


def _query_pairs(raw_query: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for pair in raw_query.split("&") if raw_query else ():
        key, _, value = pair.partition("=")
        pairs.setdefault(unquote(key), value)
    return pairs


def _expired(stamp: str, now: dt.datetime) -> str:
    """AWS's wording for a signing time outside the allowed skew."""
    current = now.strftime(SIGV4_TIMESTAMP)
    earliest = (now - MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)
    if stamp < earliest:
        return f"Signature expired: {stamp} is now earlier than {earliest} ({current} - 5 min.)"
    latest = (now + MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)
    return f"Signature not yet current: {stamp} is still later than {latest} ({current} + 5 min.)"

"""The console's session cookie and form readers, without a browser or services."""

from __future__ import annotations

import hashlib
import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from pydantic import ValidationError
from starlette.responses import Response

from api.console import views
from api.console.session import COOKIE_NAME, SessionCodec, anonymous
from api.errors import validation_message
from models.replicator_shapes import CreateReplicatorRequest

SECRET = "console-test-secret-key-0123456789-abcdefgh"


class TwoMinutesAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 120


def cookie_headers(response: Response) -> list[tuple[bytes, bytes]]:
    (set_cookie,) = [v for k, v in response.raw_headers if k == b"set-cookie"]
    return [(b"cookie", set_cookie.split(b";")[0])]


def test_a_session_reads_back_with_its_key_and_token() -> None:
    codec = SessionCodec(SECRET, 3600)
    session = anonymous().signed_in_as("FKIAAAAAAAAAAAAAAAAA")
    response = Response()
    codec.write(response, session, secure=True)
    header = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Secure", "Path=/console", "Max-Age=3600"):
        assert attribute in header
    assert codec.read(cookie_headers(response)) == session


def test_forged_altered_and_expired_sessions_are_not_read() -> None:
    codec = SessionCodec(SECRET, 60)
    response = Response()
    codec.write(response, anonymous().signed_in_as("FKIAAAAAAAAAAAAAAAAA"), secure=False)
    (header,) = cookie_headers(response)
    value = header[1].split(b"=", 1)[1]
    assert codec.read([(b"cookie", COOKIE_NAME.encode() + b"=" + value[:-2] + b"xx")]) is None
    forged = URLSafeTimedSerializer(
        "another-secret-key-0123456789-abcdefghijk",
        salt="ferry.console.session.v1",
        signer_kwargs={"digest_method": hashlib.sha256},
    )
    signed_elsewhere = forged.dumps({"csrf": "x", "key": "FKIABBBBBBBBBBBBBBBB"}).encode()
    assert codec.read([(b"cookie", COOKIE_NAME.encode() + b"=" + signed_elsewhere)]) is None
    # Signed with the right key 2 minutes ago: past the 60 s a session lasts.
    old = URLSafeTimedSerializer(
        SECRET, salt="ferry.console.session.v1", signer=TwoMinutesAgo, signer_kwargs={"digest_method": hashlib.sha256}
    )
    stale = old.dumps({"csrf": "x", "key": "FKIAAAAAAAAAAAAAAAAA"}).encode()
    assert codec.read([(b"cookie", COOKIE_NAME.encode() + b"=" + stale)]) is None
    assert codec.read([]) is None


def test_a_csrf_token_is_accepted_only_as_issued() -> None:
    session = anonymous()
    assert session.accepts(session.csrf_token)
    assert not session.accepts(None)
    assert not session.accepts("")
    assert not session.accepts(anonymous().csrf_token)
    signed_in = session.signed_in_as("FKIAAAAAAAAAAAAAAAAA")
    assert not signed_in.accepts(session.csrf_token)  # a new token at sign-in
    assert not signed_in.signed_out().accepts(signed_in.csrf_token)


@pytest.mark.parametrize(
    ("topics", "member_field"),
    [("(?<=x)orders", "topics"), ("", "topics")],
)
def test_the_create_form_is_refused_as_the_api_refuses_it(topics: str, member_field: str) -> None:
    form = {
        "name": "orders-dr",
        "source_id": "source",
        "target_id": "target",
        "source_bootstrap": "a:9092",
        "target_bootstrap": "b:9092",
        "topics": topics,
        "groups": ".*",
        "role": "arn:aws:iam::000000000000:role/r",
    }
    request = views.create_request_of(form)
    try:
        CreateReplicatorRequest.model_validate(request)
    except ValidationError as exc:  # the shape's own checks
        message, member = validation_message(exc.errors())
        assert views.field_of(member) == member_field, message
    else:  # the rest is checked by models/replicator_spec.py when the API's handler runs (the browser tests)
        assert request["replicationInfoList"][0]["topicReplication"]["topicsToReplicate"] == views.lines(topics)


def test_form_lines_and_error_fields() -> None:
    assert views.lines(" a \n\n b\r\n") == ["a", "b"]
    assert views.field_of("replicationInfoList[0].topicReplication.topicsToExclude[1]") == "topics_exclude"
    assert views.field_of("kafkaClusters[1].apacheKafkaCluster.bootstrapBrokerString") == "target_bootstrap"
    assert views.field_of("replicatorName") == "name"
    assert views.field_of(None) is None

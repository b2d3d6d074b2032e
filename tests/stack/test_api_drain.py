"""``ferry api`` on SIGTERM: the request in flight still gets its response, and new connections are refused.

The request is held open by its client, not by the server: a signed CreateReplicator sent with ``Expect:
100-continue``, whose body follows only after the signal. uvicorn answers ``100 Continue`` once the application
reads the body (the authentication middleware does, to check the signature over it), so the request is known to be
inside the application before the signal is sent; nothing waits on time.
"""

from __future__ import annotations

import json
import signal
import socket
import uuid
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from models.access_keys import IssuedKey
from tests.conftest import REGION
from tests.stack.roles import Role, accepts_connections, free_port


def signed_create_request(port: int, key: IssuedKey, body: bytes) -> tuple[bytes, bytes]:
    """(request line and headers, body) of a CreateReplicator signed as boto3 signs it."""
    url = f"http://127.0.0.1:{port}/replication/v1/replicators"
    aws = AWSRequest(
        method="POST", url=url, data=body, headers={"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), "kafka", REGION).add_auth(aws)
    headers = ["POST /replication/v1/replicators HTTP/1.1", f"Content-Length: {len(body)}", "Expect: 100-continue"]
    headers += [f"{name}: {value}" for name, value in aws.headers.items()]
    return ("\r\n".join(headers) + "\r\n\r\n").encode(), body


def read_until(conn: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(
    test_env: dict[str, str], migrated_test_database: str, test_key: IssuedKey, tmp_path: Path
) -> None:
    port = free_port()
    api = Role(["api", "--host", "127.0.0.1", "--port", str(port)], test_env, tmp_path, "api")
    try:
        api.wait_until("the API serving", lambda: "Application startup complete" in api.output(), 60)
        api.wait_until("the API accepting connections", lambda: accepts_connections(port), 30)
        # Valid JSON that CreateReplicator refuses (required members missing): the whole body must arrive, be
        # checked against the signature and parsed before the answer names what is missing.
        body = json.dumps({"replicatorName": f"drain-{uuid.uuid4().hex[:8]}"}).encode()
        head, body = signed_create_request(port, test_key, body)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head)
            interim = read_until(conn, b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
            api.proc.send_signal(signal.SIGTERM)
            api.wait_until("new connections refused after SIGTERM", lambda: refuses_connections(port), 30)
            assert api.proc.poll() is None, "the process waits for the request in flight"
            conn.sendall(body)
            response = read_until(conn, b"\r\n\r\n")
            head_text, _, rest = response.partition(b"\r\n\r\n")
            fields = (line.split(": ", 1) for line in head_text.decode().split("\r\n")[1:] if ": " in line)
            headers = {name.lower(): value for name, value in fields}
            rest = rest or b""
            while len(rest) < int(headers["content-length"]):
                chunk = conn.recv(65536)
                assert chunk, f"the connection closed before the whole response: {response!r}"
                rest += chunk
        status_line = head_text.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 400 Bad Request", response
        assert headers["x-amzn-errortype"].startswith("BadRequestException")
        assert headers["x-amzn-requestid"]
        assert headers.get("connection") == "close", "a draining server closes the connection after the response"
        assert json.loads(rest)["invalidParameter"] == "kafkaClusters", rest
        exit_status = api.proc.wait(timeout=60)
    finally:
        api.kill()
    assert exit_status in (0, -signal.SIGTERM), api.tail()
    assert refuses_connections(port)

"""The local stack's OAuth 2.0 identity provider: ``python -m dev.idp --port 14443`` (HTTPS, the stack's CA).

It issues the access tokens the brokers' OAUTHBEARER listeners accept (RS256, signed with ``.run/oauth/issuer.key``
whose public half is the brokers' ``jwks.json``; ``iss`` https://idp.ferry.test, ``aud`` kafka), at ``POST /token``
for three grants:

- ``client_credentials`` with a client id and secret, sent in the form body (POST) or as HTTP Basic (BASIC);
- ``client_credentials`` with a JWT client assertion (``client_assertion_type`` ...:jwt-bearer), signed with a
  client key the provider trusts (RFC 7523 section 2.2);
- ``urn:ietf:params:oauth:grant-type:jwt-bearer`` with a JWT ``assertion`` signed with such a key (RFC 7523 2.1).

Clients are read from ``.run/oauth/clients.json`` at every request (``{client id: {"secret": ..., "keys": [PEM
public keys], "tokenSeconds": ...}}``), so a test can change or revoke a client without restarting the provider.
Development only: nothing here is part of Ferry.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import ssl
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt

ISSUER = "https://idp.ferry.test"
AUDIENCE = "kafka"
SUBJECT = "ferry"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_SECONDS = 3600


class TokenRefused(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class IdentityProvider:
    def __init__(self, oauth_dir: Path, token_url: str) -> None:
        self.oauth_dir = oauth_dir
        self.token_url = token_url
        self.issuer_key = (oauth_dir / "issuer.key").read_bytes()
        self.kid = json.loads((oauth_dir / "jwks.json").read_text())["keys"][0]["kid"]

    def clients(self) -> dict[str, Any]:
        path = self.oauth_dir / "clients.json"
        loaded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return loaded

    def token(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        grant = form.get("grant_type", "")
        clients = self.clients()
        if grant == "client_credentials":
            if form.get("client_assertion_type") == ASSERTION_TYPE:
                client_id = self._verified_assertion(form.get("client_assertion", ""), clients)
            else:
                client_id = self._verified_secret(form, authorization, clients)
        elif grant == JWT_BEARER_GRANT:
            client_id = self._verified_assertion(form.get("assertion", ""), clients)
        else:
            raise TokenRefused("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        seconds = int(clients[client_id].get("tokenSeconds", DEFAULT_TOKEN_SECONDS))
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + seconds,
                  "jti": uuid.uuid4().hex, "client_id": client_id}  # fmt: skip
        if form.get("scope"):
            claims["scope"] = form["scope"]
        token = jwt.encode(claims, self.issuer_key, algorithm="RS256", headers={"kid": self.kid})
        return {"access_token": token, "token_type": "Bearer", "expires_in": seconds}

    @staticmethod
    def _verified_secret(form: dict[str, str], authorization: str | None, clients: dict[str, Any]) -> str:
        if authorization and authorization.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise TokenRefused("invalid_client", "malformed Basic credentials", 401) from None
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = clients.get(client_id)
        if client is None or not client.get("secret") or client["secret"] != secret:
            raise TokenRefused("invalid_client", "client authentication failed", 401)
        return client_id

    @staticmethod
    def _verified_assertion(assertion: str, clients: dict[str, Any]) -> str:
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False})["iss"]
        except (jwt.PyJWTError, KeyError):
            raise TokenRefused("invalid_grant", "the assertion is not a JWT with an issuer") from None
        client = clients.get(issuer)
        if client is None:
            raise TokenRefused("invalid_client", "unknown client", 401)
        for public_key in client.get("keys", []):
            try:
                jwt.decode(
                    assertion,
                    public_key,
                    algorithms=["RS256", "ES384"],
                    audience=client.get("audience", AUDIENCE),
                    options={"require": ["exp", "iss", "aud"]},
                )
                return str(issuer)
            except jwt.PyJWTError:
                continue
        raise TokenRefused("invalid_grant", "the assertion's signature or claims were not accepted")


def serve(port: int, run_dir: Path) -> None:
    provider = IdentityProvider(run_dir / "oauth", f"https://localhost:{port}/token")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/token":
                self._answer(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            try:
                self._answer(200, provider.token(form, self.headers.get("Authorization")))
            except TokenRefused as refused:
                self._answer(refused.status, {"error": refused.error, "error_description": refused.description})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            print(f"idp: {self.address_string()} {format % args}", flush=True)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(run_dir / "tls" / "idp.pem")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"idp: serving https://localhost:{port}/token", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.idp", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

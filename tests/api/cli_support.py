"""Running ``ferry replicators`` as a pipeline would: a child process in a clean environment (no ~/.aws of the
machine), and the shell snippets and files of docs/cli.md exactly as written, their placeholders replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from models.access_keys import IssuedKey
from tests.conftest import REGION, ROOT
from tests.doc_snippets import marked

DOC = ROOT / "docs" / "cli.md"
# The doc's placeholders, replaced by the test's values.
EXAMPLE_NAME = "orders-dr"
EXAMPLE_KEY_ID = "FKIAEXAMPLEEXAMPLE00"
EXAMPLE_SECRET = "exampleSecretAccessKeyDoNotUse0000000000"
EXAMPLE_ENDPOINT = "http://127.0.0.1:8080"
EXAMPLE_SOURCE = "127.0.0.1:19092"
EXAMPLE_TARGET = "127.0.0.1:29092"


def doc_blocks(kind: str) -> list[tuple[str, str]]:
    """(label, text) of the doc's blocks marked ``<!-- snippet|file: label -->``, in order (tests/doc_snippets.py)."""
    return marked(DOC, kind)


class FerryCli:
    """``ferry`` in a directory of its own, with the API's endpoint and a key in its environment."""

    def __init__(self, workdir: Path, endpoint: str, key: IssuedKey) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.key = key
        bin_dir = workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "ferry"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
        wrapper.chmod(0o755)
        self.bare_env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(workdir),
            "PYTHONPATH": str(ROOT),
            "LANG": "C.UTF-8",
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.env = {
            **self.bare_env,
            "FERRY_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key.access_key_id,
            "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
            "AWS_REGION": REGION,
        }

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "replicators", *args],
            cwd=self.workdir,
            env=self.env if env is None else env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sh(
        self, script: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.workdir,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def from_doc(self, text: str, name: str, source: str, target: str) -> str:
        """A block of the doc with its placeholders replaced by this test's name, key, endpoint and clusters."""
        for placeholder, value in (
            (EXAMPLE_NAME, name),
            (EXAMPLE_KEY_ID, self.key.access_key_id),
            (EXAMPLE_SECRET, self.key.secret_access_key),
            (EXAMPLE_ENDPOINT, self.endpoint),
            (EXAMPLE_SOURCE, source),
            (EXAMPLE_TARGET, target),
        ):
            text = text.replace(placeholder, value)
        return text

    def write_doc_files(self, name: str, source: str, target: str, directory: Path | None = None) -> None:
        for label, text in doc_blocks("file"):
            (directory or self.workdir).joinpath(label).write_text(self.from_doc(text, name, source, target))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed: exactly one line, ``ferry: ...``."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: "), f"stderr is not one error line: {result.stderr!r}"
    return lines[0]

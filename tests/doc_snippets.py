"""The documentation's code blocks, as tests read and run them.

A fenced block in a page whose snippets are tested carries one marker on the line before it:

* ``<!-- snippet: LABEL -->``: a ``sh``/``bash``/``python`` block a test runs as it is written, its placeholders
  (the local stack's addresses, example names) replaced by the test's own values;
* ``<!-- file: NAME -->``: a block written to the file NAME in the test's working directory (a request file);
* ``<!-- not-run: REASON -->``: a block no test runs, and why (``make up`` binds the stack's fixed ports).

``tests/docs/test_doc_snippets.py`` fails when a ``sh``, ``bash`` or ``python`` block of those pages has no
marker, when a ``not-run`` gives no reason, or when a label appears that no test runs.

``ShellSession`` runs snippets one after another as a reader at a terminal would: in one working directory,
each block seeing the variables, functions and directory the blocks before it left (Python blocks see the
exported variables), each block's failure reported on its own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RUNNABLE_LANGUAGES = frozenset({"sh", "bash", "python"})
_FENCE = re.compile(r"^[ \t]*```([\w-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(snippet|file|not-run):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced block: its marker (``kind`` None when it has none), language, text and first line number."""

    kind: str | None
    label: str
    language: str
    text: str
    line: int


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order, with the marker on the line before it."""
    content = path.read_text()
    found: list[Block] = []
    for fence in _FENCE.finditer(content):
        before = content[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        found.append(
            Block(
                kind=marker.group(1) if marker else None,
                label=marker.group(2) if marker else "",
                language=fence.group(1),
                text=fence.group(2),
                line=content.count("\n", 0, fence.start()) + 1,
            )
        )
    return found


def marked(path: Path, kind: str) -> list[tuple[str, str]]:
    """(label, text) of the page's blocks marked ``kind``, in order."""
    return [(block.label, block.text) for block in blocks(path) if block.kind == kind]


def snippet(path: Path, label: str) -> str:
    """The one snippet of a page with this label."""
    (text,) = [text for found, text in marked(path, "snippet") if found == label]
    return text


def unmarked_problems(path: Path) -> list[str]:
    """What is wrong with the page's markers: runnable blocks without one, not-run without a reason."""
    problems = []
    for block in blocks(path):
        where = f"{path.name}:{block.line}"
        if block.language in RUNNABLE_LANGUAGES and block.kind is None:
            problems.append(
                f"{where}: a ```{block.language} block without <!-- snippet: ... --> or <!-- not-run: ... -->"
            )
        if block.kind == "not-run" and len(block.label) < 10:
            problems.append(f"{where}: <!-- not-run: ... --> must say why the block is not run")
        if block.kind == "snippet" and block.language not in RUNNABLE_LANGUAGES:
            problems.append(f"{where}: a snippet must be sh, bash or python, not {block.language or 'unnamed'}")
    return problems


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """The text with each placeholder replaced, the longest first (so a URL goes before the address in it)."""
    for placeholder in sorted(replacements, key=len, reverse=True):
        text = text.replace(placeholder, replacements[placeholder])
    return text


class ShellSession:
    """Blocks run one after another in ``workdir``, sharing what a terminal session shares."""

    def __init__(self, workdir: Path, env: Mapping[str, str], replacements: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.replacements = dict(replacements)
        self._state = workdir / ".snippet-state.sh"
        self._exported = workdir / ".snippet-env"
        self._state.write_text("")
        self.transcript: list[str] = []

    def replace(self, text: str) -> str:
        """A block of the page with this session's placeholders replaced."""
        return substitute(text, self.replacements)

    def exported(self) -> dict[str, str]:
        """The environment the last shell block left exported (the starting one before any ran)."""
        if not self._exported.exists():
            return dict(self.env)
        pairs = (entry.split("=", 1) for entry in self._exported.read_text().split("\0") if "=" in entry)
        return dict(pairs)

    def run(self, text: str, language: str = "sh", timeout: float = 300) -> subprocess.CompletedProcess[str]:
        body = self.replace(text)
        if language == "python":
            env = self.exported()
            result = subprocess.run(
                [sys.executable, "-c", body],
                cwd=env.get("PWD", self.workdir),  # where the shell blocks left the reader
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        else:
            state, exported = shlex.quote(str(self._state)), shlex.quote(str(self._exported))
            script = (
                f"source {state}\nset -e -o pipefail\n{body}\n"
                f'{{ export -p; declare -f; echo "cd $(printf %q "$PWD")"; }} > {state}\nenv -0 > {exported}\n'
            )
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        self.transcript.append(f"$ {body.strip()}\n{result.stdout}{result.stderr}[exit {result.returncode}]")
        return result

    def run_ok(self, text: str, language: str = "sh", timeout: float = 300) -> str:
        """Run a block that must succeed; its standard output."""
        result = self.run(text, language, timeout)
        assert result.returncode == 0, "a documented block failed:\n" + "\n".join(self.transcript[-3:])
        return result.stdout


def python_path_env(root: Path) -> dict[str, str]:
    """A clean environment for snippets: no ~/.aws of the machine, this checkout's code first on the path."""
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "LANG": "C.UTF-8",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
    }

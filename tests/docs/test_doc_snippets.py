"""Every shell and Python block of the pages whose snippets are run is marked, and each label is one a test runs
(tests/doc_snippets.py explains the markers). No services needed: the runs are tests/fleet/test_fleet_docs.py
(README.md, docs/quickstart.md) and tests/api/test_cli_replicators.py with tests/fleet/test_fleet_cli.py
(docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.doc_snippets import blocks, unmarked_problems

# The labels each page may use, and so the ones its tests run: a new snippet needs a test that runs it.
RUN_LABELS = {
    "README.md": {"readme-credentials", "readme-aws", "readme-scram", "readme-cli"},
    "docs/quickstart.md": {
        "setup",
        "produce",
        "create-ferry",
        "create-boto3",
        "create-aws",
        "wait",
        "consume",
        "metrics",
        "delete",
    },
    "docs/cli.md": {"environment", "profile", "api", "fleet"},
}


@pytest.mark.parametrize("page", sorted(RUN_LABELS))
def test_every_runnable_block_is_run_or_says_why_not(page: str) -> None:
    path = ROOT / page
    assert unmarked_problems(path) == []
    labels = {block.label for block in blocks(path) if block.kind == "snippet"}
    assert labels == RUN_LABELS[page]


def test_an_unmarked_block_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```sh\nmake up\n```\n\n<!-- not-run: x -->\n```python\nprint()\n```\n\n"
        "<!-- snippet: a -->\n```sh\ntrue\n```\n\n<!-- file: r.yaml -->\n```yaml\na: 1\n```\n"
    )
    assert unmarked_problems(page) == [
        "page.md:1: a ```sh block without <!-- snippet: ... --> or <!-- not-run: ... -->",
        "page.md:6: <!-- not-run: ... --> must say why the block is not run",
    ]

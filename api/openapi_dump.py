"""Write the API's OpenAPI document to openapi/openapi.json: ``python -m api.openapi_dump [--check]``.

The document is generated from ``create_app()`` and committed, so API changes show up in review; a test fails
when the committed file differs from what the app generates. ``--check`` exits 1 on drift without writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from api.app import create_app
from models.settings import FerrySettings

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def current_document() -> str:
    # Default settings: the document must not depend on the environment it is generated in. The two URLs have no
    # default (a deployment must name them) and play no part in the document: placeholders, never connected to.
    settings = FerrySettings(
        auth="disabled", database_url="postgresql+psycopg://openapi-dump/unused", redis_url="redis://openapi-dump/0"
    )
    return render(create_app(settings).openapi())


def main(argv: list[str]) -> int:
    document = current_document()
    if "--check" in argv:
        committed = OPENAPI_PATH.read_text() if OPENAPI_PATH.exists() else ""
        if committed != document:
            print(f"{OPENAPI_PATH} is out of date: run python -m api.openapi_dump", file=sys.stderr)
            return 1
        return 0
    OPENAPI_PATH.parent.mkdir(parents=True, exist_ok=True)
    OPENAPI_PATH.write_text(document)
    print(f"wrote {OPENAPI_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

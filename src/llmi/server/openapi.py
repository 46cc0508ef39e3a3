"""The server's OpenAPI schema, as FastAPI generates it from the routes and their models.

``python -m llmi.server.openapi docs/openapi.json`` writes it (``-`` or nothing: stdout);
``tests/test_server_openapi.py`` checks that the committed file is current.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def schema() -> dict[str, Any]:
    from ..config import Settings
    from .app import create_app
    from .auth import KeyRing

    # Default settings and no keys: the schema does not depend on the machine it is generated on.
    return create_app(Settings(), keys=KeyRing(), data_dir=".").openapi()


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    if not args or args[0] == "-":
        sys.stdout.write(text)
    else:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

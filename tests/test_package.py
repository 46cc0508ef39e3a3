"""The package surface: lazy top-level names, cheap import."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_resolve_and_generate_is_callable():
    import llmi
    import llmi.cli.generate  # noqa: F401  (importing the CLI module must not shadow llmi.generate)
    import llmi.generation  # noqa: F401

    assert callable(llmi.generate) and callable(llmi.agenerate) and callable(llmi.stream)
    for name in llmi.__all__:
        assert getattr(llmi, name) is not None


def test_import_llmi_stays_light():
    code = "import sys, llmi, llmi.engine, llmi.protocol; print(' '.join(m for m in ('matplotlib', 'torch', 'openai', 'numpy', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""

"""The ``code`` tool: LLM-written chart code run in a sandboxed, warm worker pool.

See :mod:`.backend` (the backend), :mod:`.pool` (warm workers), :mod:`.worker` (fork per chart) and
:mod:`.sandbox` (the layers, and :func:`.sandbox.sandbox_report` for ``llmi doctor``).
"""

"""One exception tree: every public exception llmi defines is an LLMIError, and errors.py draws them all."""

from __future__ import annotations

import ast
from pathlib import Path

import llmi.errors as errors

SRC = Path(__file__).resolve().parents[1] / "src" / "llmi"
BUILTIN_BASES = {"Exception", "BaseException", "ValueError", "RuntimeError", "TypeError", "KeyError", "OSError", "LookupError"}
#: Outside the tree on purpose: control flow between one helper and its callers, or a standalone script.
OUTSIDE = {
    ("errors.py", "LLMIError"),  # the root
    ("retry.py", "GaveUp"),  # retry_call's "the retries ended" signal; its callers translate it
    ("tools/qwen_image_server.py", "BadRequest"),  # the stand-alone Qwen-Image server script's 400
}


def test_every_public_exception_is_in_the_tree():
    stray = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & BUILTIN_BASES and not bases - BUILTIN_BASES and (rel, node.name) not in OUTSIDE:
                stray.append(f"{rel}: {node.name}({', '.join(sorted(bases))})")
    assert stray == []


def test_the_docstring_draws_every_class_of_errors_py():
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.LLMIError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.__name__ in errors.__doc__, cls.__name__


def test_moved_exceptions_keep_their_old_import_paths_and_bases():
    from llmi.generation import GenerationError
    from llmi.reward.judges import JudgeFailure, ScoreParseError
    from llmi.tools.code.pool import WorkerDied, WorkerStartError
    from llmi.tools.code.sandbox import SandboxSetupError

    assert GenerationError is errors.GenerationError and issubclass(GenerationError, errors.LLMError)
    assert JudgeFailure is errors.JudgeFailure and issubclass(JudgeFailure, errors.JudgeError)
    assert issubclass(ScoreParseError, errors.JudgeError) and issubclass(ScoreParseError, ValueError)
    for cls in (WorkerDied, WorkerStartError, SandboxSetupError):
        assert issubclass(cls, errors.SandboxError)
    failure = JudgeFailure("boom", kind="timeout", attempts=3, status=504)
    assert failure.reason == "timeout: boom" and failure.attempts == 3
    try:
        raise ScoreParseError("no Text score")
    except ValueError as exc:  # callers that catch ValueError still do
        assert exc.kind == "unparseable"

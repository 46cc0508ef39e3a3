"""Chart code that is sure to fail, found without running it: a syntax error, or a name that nothing
defines. Pure (``ast`` only).

The enhancement uses it to ask for a chart's fix while the chart first runs (instead of after it has
failed): when the sandbox then reports the failure that was foreseen, the fix is already there; when it
reports another one — or the chart renders — the early fix is thrown away (its call stays on the bill).
So a wrong guess costs one model call and never a wrong chart; still, the guess is conservative:

* a syntax error is what ``compile`` says, in the sandbox's words (``SyntaxError: ... (line N: ...)``);
* a name is reported undefined only when it is read by a statement that surely runs — at module level,
  outside any function, class, lambda, ``try``, ``if`` or ``while`` body — and nothing anywhere in the
  code binds it (assignment, import, ``def``, ``class``, loop or ``with`` target, ``except ... as``,
  comprehension, ``global``, pattern), it is no builtin, and it is none of the names the sandbox
  provides (``plt``, ``pd``, ``sns``, ``np``). Code that can bind names in ways this cannot see
  (``from x import *``, ``exec``, ``eval``, ``globals()``, ``locals()``, ``vars()``, ``__import__``,
  ``__builtins__``) is never judged.
"""

from __future__ import annotations

import ast
import builtins

#: The names the sandbox's chart code finds already imported (``llmi.tools.code.worker``).
PROVIDED = frozenset({"plt", "pd", "sns", "np", "__name__", "__builtins__"})
_DYNAMIC = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__", "__builtins__"})
_BUILTINS = frozenset(dir(builtins))
#: Statement bodies that may not run (or whose failures may be caught): names read there are not judged.
_MAYBE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.Try, ast.If, ast.While,
          ast.IfExp, ast.BoolOp)
if hasattr(ast, "TryStar"):  # Python 3.11+
    _MAYBE = (*_MAYBE, ast.TryStar)


def _line(code: str, lineno: int | None) -> str:
    lines = code.splitlines()
    if lineno is None or not 1 <= lineno <= len(lines):
        return ""
    text = lines[lineno - 1].strip()
    return f" (line {lineno}: {text[:157] + '...' if len(text) > 160 else text})"


def _bound(tree: ast.AST) -> set[str] | None:
    """Every name the code binds anywhere; ``None`` when it can bind names in ways not visible here."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in _DYNAMIC:
                return None
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, ast.Attribute) and node.attr == "__dict__":
            return None
    return names


def _surely_read(tree: ast.Module) -> list[ast.Name]:
    """Names read by statements that surely run (see the module doc), in source order."""
    out: list[ast.Name] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, _MAYBE):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in tree.body:
        visit(stmt)
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def predict_failure(code: str) -> str | None:
    """The error the chart code is sure to fail with, worded as the sandbox words it, or ``None`` when
    it may run. ``code`` is what the sandbox runs (fences already removed)."""
    try:
        tree = compile(code, "<chart>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as exc:
        return f"SyntaxError: {exc.msg}".rstrip(": ") + _line(code, exc.lineno)
    except (ValueError, TypeError, RecursionError, MemoryError):  # null bytes, absurd nesting: let it run
        return None
    bound = _bound(tree)
    if bound is None:
        return None
    for name in _surely_read(tree):
        if name.id not in bound and name.id not in _BUILTINS and name.id not in PROVIDED:
            return f"NameError: name '{name.id}' is not defined" + _line(code, name.lineno)
    return None


def same_failure(predicted: str, reported: str) -> bool:
    """Whether the sandbox ``reported`` the failure that was ``predicted`` (its words before the line)."""
    head = predicted.split(" (line ", 1)[0].strip()
    return bool(head) and head in reported


__all__ = ["PROVIDED", "predict_failure", "same_failure"]

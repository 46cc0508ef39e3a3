"""The warm chart worker: one long-lived process that forks a sandboxed child per chart.

Importing matplotlib, pandas, seaborn and numpy costs most of a second; rendering the first chart loads
fonts and fills caches. The worker pays that once: it imports everything, renders a warm-up chart (CJK
text included), calls :func:`gc.freeze` so forked children do not dirty the shared pages, and then, for
each job, forks a child that applies the sandbox layers (:mod:`.sandbox`), runs the code and sends the
PNG back over a pipe. The worker itself never runs LLM code.

It speaks length-prefixed frames on the pipes it was started with (see :func:`write_frame`): a JSON
header, then ``header["size"]`` bytes of payload. The pool sends ``{"type": "job", "code": ...}`` and
gets ``{"type": "result", "ok": ..., ...}`` plus the PNG; EOF on stdin stops the worker.

Run as ``python -I -c 'from llmi.tools.code.worker import main; main()' CONFIG_JSON`` by
:mod:`.pool`; nothing else should start it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any

from . import sandbox as sb

_HEADER = struct.Struct(">I")
MAX_HEADER = 1 << 20

#: Pre-imported so chart code can use them after the uid drop (the interpreter's files may be unreadable
#: to the sandbox uid — e.g. a pyenv under a 0700 home). Attack-relevant modules (socket, subprocess,
#: ctypes) are imported on purpose: the sandbox must hold even when they are at hand.
PRELOAD = (
    "math", "cmath", "statistics", "random", "datetime", "calendar", "time", "collections",
    "collections.abc", "itertools", "functools", "operator", "json", "re", "io", "csv", "string",
    "textwrap", "decimal", "fractions", "copy", "dataclasses", "typing", "enum", "heapq", "bisect",
    "pprint", "warnings", "os", "sys", "pathlib", "tempfile", "shutil", "signal", "socket", "subprocess",
    "ctypes", "threading", "unicodedata", "zoneinfo", "locale",
    "matplotlib", "matplotlib.pyplot", "matplotlib.dates", "matplotlib.ticker", "matplotlib.patches",
    "matplotlib.colors", "matplotlib.cm", "matplotlib.gridspec", "matplotlib.patheffects",
    "matplotlib.lines", "matplotlib.collections", "matplotlib.font_manager", "matplotlib.table",
    "mpl_toolkits.mplot3d", "mpl_toolkits.axes_grid1",
    "numpy", "pandas", "pandas.plotting", "pandas.plotting._matplotlib", "seaborn", "pyseccomp",
)

#: Preferred CJK-capable fonts, best first; any family with "CJK" in its name is accepted after these.
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans SC",
    "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Noto Sans SC",
)


# -- framing ---------------------------------------------------------------------------------------------


def write_frame(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    header = dict(header, size=len(payload))
    raw = json.dumps(header, ensure_ascii=True).encode()
    data = _HEADER.pack(len(raw)) + raw + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame; None on EOF."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (n,) = _HEADER.unpack(head)
    if n > MAX_HEADER:
        raise ValueError(f"frame header of {n} bytes")
    raw = _read_exact(fd, n)
    if raw is None:
        return None
    header = json.loads(raw)
    payload = _read_exact(fd, int(header.get("size", 0))) if header.get("size") else b""
    if payload is None:
        return None
    return header, payload


def parse_child_output(buf: bytes) -> tuple[dict[str, Any], bytes] | None:
    """One complete frame from a child's pipe, or None if incomplete or malformed (never trusted)."""
    if len(buf) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack_from(buf)
    if n > MAX_HEADER or len(buf) < _HEADER.size + n:
        return None
    try:
        header = json.loads(bytes(buf[_HEADER.size : _HEADER.size + n]))
        size = int(header.get("size", 0))
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(header, dict) or size < 0:
        return None
    start = _HEADER.size + n
    if len(buf) != start + size:
        return None
    return header, bytes(buf[start:])


# -- fonts and warm-up -------------------------------------------------------------------------------------


#: What the chart tool says when it has no CJK font (``llmi doctor`` says the same).
NO_CJK_FONT = "DejaVu Sans (no CJK font found: install fonts-noto-cjk; CJK text renders as boxes)"


def find_cjk_font(fonts: dict[str, str] | None = None) -> tuple[str, str] | None:
    """The CJK-capable family charts fall back to, and its file: the first of :data:`CJK_FONTS` that
    matplotlib's font manager knows, else any family with "CJK" in its name; ``None`` when there is none
    (Chinese, Japanese and Korean text then renders as boxes). ``fonts`` maps family to file (default:
    matplotlib's font list); used by the worker and by ``llmi doctor``, so both say the same."""
    if fonts is None:
        from matplotlib import font_manager

        fonts = {}
        for f in font_manager.fontManager.ttflist:  # the regular face's file, if the family has one
            if f.name not in fonts or (f.weight in (400, "normal", "regular") and f.style == "normal"):
                fonts[f.name] = f.fname
    cjk = next((n for n in CJK_FONTS if n in fonts), None)
    if cjk is None:
        cjk = next((n for n in sorted(fonts) if "CJK" in n), None)
    return None if cjk is None else (cjk, fonts[cjk])


def choose_font() -> tuple[str, str | None]:
    """Configure matplotlib's sans-serif list with a CJK fallback. Returns (description, font file dir)."""
    import matplotlib

    found = find_cjk_font()
    default = list(matplotlib.rcParams["font.sans-serif"])
    if found is None:
        return (NO_CJK_FONT, None)
    cjk, path = found
    # DejaVu first keeps Latin text looking as usual; matplotlib falls back glyph by glyph (>= 3.6).
    # Glyph-by-glyph fallback (matplotlib >= 3.6) walks font.family, not a generic family's list.
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", cjk]
    matplotlib.rcParams["font.sans-serif"] = ["DejaVu Sans", cjk] + [n for n in default if n not in ("DejaVu Sans", cjk)]
    matplotlib.rcParams["axes.unicode_minus"] = False
    return (f"DejaVu Sans + {cjk}", os.path.dirname(os.path.realpath(path)))


WARM_UP_CODE = """\
df = pd.DataFrame({"月份": ["一月", "二月", "三月"], "value": np.array([1.0, 3.0, 2.0])})
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
sns.barplot(data=df, x="月份", y="value", ax=axes[0])
axes[1].plot(df["value"], marker="o", label="Ωμέγα − Ж")
axes[1].legend()
fig.suptitle("销售额 売上 매출")
plt.figure()
plt.plot([1, 2, 3], [3, 1, 2])
plt.title("warm-up")
"""


def warm_up(dpi: int) -> None:
    """Render through the same path a chart takes, twice, so that every lazy cache a chart child would
    fill (fonts, glyphs, tick formatters, the PNG encoder) is filled once in the parent instead."""
    cfg = {"dpi": dpi, "max_pixels": 64_000_000, "memory_mb": 0, "restore": True}
    for _ in range(2):
        header, _png = _render(cfg, WARM_UP_CODE)
        if not header.get("ok"):
            raise RuntimeError(f"warm-up chart failed: {header.get('reason')}")


def read_only_paths(font_dir: str | None) -> list[str]:
    """What the chart child may read: the interpreter, its libraries, fonts and time zones."""
    import site

    import matplotlib

    home = os.path.realpath(os.path.expanduser("~"))
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             matplotlib.get_data_path(), "/usr/share/fonts", "/usr/local/share/fonts", "/usr/share/zoneinfo",
             "/usr/lib", "/usr/lib64", "/lib", "/lib64"]
    cands += [p for p in sys.path if p]
    try:
        cands += site.getsitepackages()
    except AttributeError:  # pragma: no cover
        pass
    if font_dir:
        cands.append(font_dir)
    out: list[str] = []
    for p in cands:
        rp = os.path.realpath(p)
        # Never a parent of the home directory (or "/" itself): that would expose the user's files.
        if rp == "/" or home == rp or home.startswith(rp.rstrip("/") + "/"):
            continue
        if os.path.exists(rp) and rp not in out:
            out.append(rp)
    return out


# -- the child ----------------------------------------------------------------------------------------------


def _line_of(exc: BaseException, code_lines: list[str]) -> str:
    lineno = None
    if isinstance(exc, SyntaxError) and exc.filename == "<chart>":
        lineno = exc.lineno
    else:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<chart>":
                lineno = tb.tb_lineno
            tb = tb.tb_next
    if lineno is None or not (1 <= lineno <= len(code_lines)):
        return ""
    text = code_lines[lineno - 1].strip()
    if len(text) > 160:
        text = text[:157] + "..."
    return f" (line {lineno}: {text})"


def _describe(exc: BaseException, code_lines: list[str], memory_mb: int) -> tuple[str, str]:
    """(kind, reason) for an exception raised by chart code."""
    import errno

    msg = str(exc)
    if isinstance(exc, SyntaxError):
        msg = exc.msg or msg
    if len(msg) > 400:
        msg = msg[:397] + "..."
    reason = f"{type(exc).__name__}: {msg}".rstrip(": ") + _line_of(exc, code_lines)
    if isinstance(exc, MemoryError):
        return "memory_limit", f"{reason} — the chart exceeded the {memory_mb} MiB memory limit"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "output_too_large", f"{reason} — the file size limit was hit"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "output_too_large", f"{reason} — the job directory is full"
    if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
        return "sandbox_violation", f"{reason} — blocked by the sandbox"
    if isinstance(exc, ModuleNotFoundError):
        return "code_error", f"{reason} — only plt, pd, sns, np and the standard library are available"
    return "code_error", reason


def _child_main(cfg: dict[str, Any], job_dir: str, code: str, result_fd: int, close_fds: list[int]) -> None:
    """Runs in the forked child. Never returns."""
    status = 0
    try:
        header, payload = _child_run(cfg, job_dir, code, close_fds)
        write_frame(result_fd, header, payload)
    except BaseException:  # noqa: BLE001 - the child must always exit through os._exit
        status = 70
    os._exit(status)


def _child_run(cfg: dict[str, Any], job_dir: str, code: str, close_fds: list[int]) -> tuple[dict, bytes]:
    layers = set(cfg["layers"])
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        os.chdir(job_dir)
        if sb.RLIMITS in layers:
            nproc = cfg["nproc"] if sb.UID_DROP in layers else None
            sb.set_rlimits(cfg["memory_mb"] << 20, cfg["cpu_s"], cfg["fsize_bytes"], 64, nproc)
        if sb.UID_DROP in layers:
            sb.drop_uid(cfg["uid"], cfg["gid"])
        # Die with the worker (set after the uid change, which clears it); the worker may already be gone.
        sb.die_with_parent()
        if os.getppid() != cfg["worker_pid"]:
            os._exit(0)
        if sb.LANDLOCK in layers:
            sb.landlock_restrict(cfg["ruleset_fd"])
        if sb.SECCOMP in layers:
            sb.apply_seccomp()
        os.environ.clear()
        os.environ.update({"HOME": job_dir, "TMPDIR": job_dir, "LANG": "C.UTF-8", "PATH": "/nonexistent"})
        import tempfile

        tempfile.tempdir = job_dir
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "kind": "sandbox_unavailable",
                "reason": f"a sandbox layer could not be applied: {type(exc).__name__}: {exc}"}, b""
    return _render(cfg, code)


def _render(cfg: dict[str, Any], code: str) -> tuple[dict, bytes]:
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure

    code_lines = code.splitlines()
    seen: list[Any] = []  # figures the code showed, saved or closed, latest last
    orig_savefig, orig_close = Figure.savefig, plt.close

    def savefig(self, fname, *args, **kwargs):
        # Chart code must not need savefig; a call to a path is recorded and skipped, so a chart that saves
        # to "/tmp/x.png" works and nothing is written outside the job directory.
        if hasattr(fname, "write"):
            return orig_savefig(self, fname, *args, **kwargs)
        seen.append(self)
        return None

    def plt_savefig(*args, **kwargs):
        return savefig(plt.gcf(), *args, **kwargs)

    def show(*args, **kwargs):
        if plt.get_fignums():
            seen.append(plt.gcf())

    def close(fig=None):
        if fig is None and plt.get_fignums():
            seen.append(plt.gcf())
        elif isinstance(fig, Figure):
            seen.append(fig)
        elif fig == "all":
            seen.extend(plt.figure(n) for n in plt.get_fignums())
        return orig_close(fig)

    saved = (Figure.savefig, plt.savefig, plt.show, plt.close)
    Figure.savefig, plt.savefig, plt.show, plt.close = savefig, plt_savefig, show, close
    try:
        return _exec_and_capture(cfg, code, code_lines, seen, orig_savefig, plt, np, pd, sns)
    finally:
        if cfg.get("restore"):  # the worker's warm-up; a child exits right after instead
            Figure.savefig, plt.savefig, plt.show, plt.close = saved
            orig_close("all")


def _exec_and_capture(cfg, code, code_lines, seen, orig_savefig, plt, np, pd, sns) -> tuple[dict, bytes]:
    import io
    import warnings

    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__, "plt": plt, "pd": pd, "sns": sns,
                          "np": np}
    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            exec(compile(code, "<chart>", "exec"), ns)  # noqa: S102 - this is the sandboxed child
            fig = plt.gcf() if plt.get_fignums() else (seen[-1] if seen else None)
            if fig is None or not _has_content(fig):
                return {"ok": False, "kind": "no_figure",
                        "reason": "the code drew no figure (draw with plt/sns/pandas; the current figure is "
                                  "captured, no savefig or show needed)"}, b""
            dpi = cfg["dpi"]
            w_in, h_in = fig.get_size_inches()
            if w_in * dpi * h_in * dpi > cfg["max_pixels"] or max(w_in, h_in) * dpi > 30000:
                return {"ok": False, "kind": "code_error",
                        "reason": f"the figure is {w_in:g}x{h_in:g} inches, {int(w_in * dpi)}x{int(h_in * dpi)} "
                                  f"pixels at {dpi} dpi, above the limit; use a smaller figsize"}, b""
            buf = io.BytesIO()
            orig_savefig(fig, buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
        caught = [str(r.message)[:200] for r in records if "missing from font" in str(r.message)]
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        kind, reason = _describe(exc, code_lines, cfg["memory_mb"])
        return {"ok": False, "kind": kind, "reason": reason}, b""
    data = buf.getvalue()
    return {"ok": True, "warnings": caught[:5]}, data


def _has_content(fig) -> bool:
    if fig.axes or fig.images or fig.texts or fig.patches or fig.lines or fig.artists:
        return True
    return getattr(fig, "_suptitle", None) is not None


# -- the worker ---------------------------------------------------------------------------------------------


_SIGNAL_KINDS = {
    signal.SIGXCPU: ("timeout", "used more than the CPU limit of {cpu_s} s"),
    signal.SIGSYS: ("sandbox_violation", "made a forbidden system call"),
    signal.SIGXFSZ: ("output_too_large", "wrote a file above the size limit"),
}


def run_job(cfg: dict[str, Any], code: str, job_no: int, protocol_fds: list[int]) -> tuple[dict, bytes]:
    """Fork, let the child run ``code`` sandboxed, collect its answer within the limits."""
    job_dir = cfg["job_dir"]
    r, w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child (its effects are tested)
        os.close(r)
        _child_main(cfg, job_dir, code, w, protocol_fds)
    os.close(w)
    try:
        return _collect(cfg, pid, r, started)
    finally:
        os.close(r)
        reset_job_dir(cfg)


def _collect(cfg: dict[str, Any], pid: int, r: int, started: float) -> tuple[dict, bytes]:
    cap = cfg["max_output_bytes"] + MAX_HEADER
    deadline = started + cfg["wall_s"]
    buf = bytearray()
    verdict: tuple[str, str] | None = None
    pidfd = os.pidfd_open(pid)
    exited = eof = False
    try:
        while not (eof and exited):
            left = deadline - time.monotonic()
            if left <= 0:
                verdict = ("timeout", f"the chart ran longer than the wall-clock limit of {cfg['wall_s']:g} s")
                break
            watch = ([] if eof else [r]) + ([] if exited else [pidfd])
            ready, _, _ = select.select(watch, [], [], left)
            if pidfd in ready:
                exited = True
            if r in ready:
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    eof = True
                else:
                    buf += chunk
                    if len(buf) > cap:
                        verdict = ("output_too_large",
                                   f"the chart sent back more than {cfg['max_output_bytes']} bytes")
                        break
            if exited and not eof:
                # The child is gone; whatever it wrote is already in the pipe.
                os.set_blocking(r, False)
                try:
                    while len(buf) <= cap and (chunk := os.read(r, 1 << 20)):
                        buf += chunk
                except BlockingIOError:
                    pass
                eof = True
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)  # its process group: anything it managed to start, too
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
    if verdict is not None:
        return {"ok": False, "kind": verdict[0], "reason": verdict[1]}, b""
    frame = parse_child_output(bytes(buf))
    if frame is not None and isinstance(frame[0].get("ok"), bool):
        return _vet_child_answer(cfg, *frame)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        kind, what = _SIGNAL_KINDS.get(sig, ("code_error", "crashed"))
        if sig == signal.SIGKILL:
            kind, what = "timeout", "was killed (CPU limit of {cpu_s} s, or out of memory)"
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        return {"ok": False, "kind": kind, "reason": f"the chart {what.format(**cfg)} ({name})"}, b""
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    detail = "with a malformed answer" if buf else "without an answer"
    return {"ok": False, "kind": "code_error",
            "reason": f"the chart process exited (status {code}) {detail}; do not call sys.exit/os._exit"}, b""


#: The kinds a chart child may report. The child runs LLM code, so its answer is forged at will: a kind
#: outside this set (say ``rate_limited``, which would invite retries) is reported as ``code_error``.
CHILD_KINDS = frozenset({"code_error", "no_figure", "timeout", "memory_limit", "output_too_large",
                         "sandbox_violation", "sandbox_unavailable"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _vet_child_answer(cfg: dict[str, Any], header: dict[str, Any], payload: bytes) -> tuple[dict, bytes]:
    """Turn a child's self-reported answer into what the worker passes on, trusting none of it.

    The payload must be a PNG no larger than ``max_output_bytes`` (the pool treats a bigger frame as a
    broken worker and would restart it — a forged frame must not cost a worker); the kind must be one a
    chart can legitimately end with; strings are cut to size.
    """
    ok = header["ok"]
    kind = str(header.get("kind", ""))[:40]
    if not ok and kind not in CHILD_KINDS:
        kind = "code_error"
    warnings = header.get("warnings")
    out = {"ok": ok, "kind": kind if not ok else "", "reason": str(header.get("reason", ""))[:2000],
           "warnings": [str(x)[:200] for x in warnings][:5] if isinstance(warnings, list) else []}
    if not ok:
        return out, b""
    if len(payload) > cfg["max_output_bytes"]:
        return {"ok": False, "kind": "output_too_large",
                "reason": f"the chart sent back more than {cfg['max_output_bytes']} bytes"}, b""
    if not payload.startswith(_PNG_MAGIC):
        return {"ok": False, "kind": "code_error",
                "reason": "the chart process sent back something that is not a PNG"}, b""
    return out, payload


def reset_job_dir(cfg: dict[str, Any]) -> None:
    """Empty the job directory and restore its owner and mode: every chart starts with a fresh one.

    The directory itself stays (the Landlock ruleset, built once, names it); the child cannot remove it
    (its parent is the worker's), only what is inside.
    """
    import shutil

    job_dir = cfg["job_dir"]
    with os.scandir(job_dir) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)  # never follows symlinks
                else:
                    os.unlink(entry.path)
            except OSError:
                pass
    if sb.UID_DROP in cfg["layers"]:
        os.chown(job_dir, cfg["uid"], cfg["gid"], follow_symlinks=False)
    os.chmod(job_dir, 0o700)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    cfg["worker_pid"] = os.getpid()
    # The protocol pipes move off 0/1 so that nothing printed by libraries can corrupt a frame.
    in_fd, out_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    failed: dict[str, str] = {}
    try:
        layers = list(cfg["layers"])
        want_tmpfs = sb.JOB_TMPFS in layers
        failed = sb.enter_worker_namespaces(sb.NETNS in layers, cfg["base_dir"] if want_tmpfs else None,
                                            cfg["tmpfs_bytes"])
        for name in failed:
            layers.remove(name)
        cfg["layers"] = layers
        refused = [name for name in failed if name in cfg.get("required", ())]
        if refused:
            raise sb.SandboxSetupError(f"required sandbox layer(s) failed to start: {failed}")
        import importlib

        import matplotlib

        matplotlib.use("Agg")
        # pandas loads pyarrow whenever it is installed (~170 MB of address space under RLIMIT_AS, and a
        # large native surface); charts do not need it, so pandas falls back to its own string storage.
        sys.modules.setdefault("pyarrow", None)  # type: ignore[assignment]
        for mod in PRELOAD:
            try:
                importlib.import_module(mod)
            except ImportError:
                pass
        font, font_dir = choose_font()
        warm_up(cfg["dpi"])
        cfg["read_only"] = read_only_paths(font_dir)
        if sb.UID_DROP in layers:
            if sb.JOB_TMPFS in layers:
                staging = os.path.join(cfg["base_dir"], ".stage")
                cfg["hidden"] = sb.expose_read_only(cfg["read_only"], staging)
                os.rmdir(staging) if os.path.isdir(staging) else None
            else:
                blocked = [p for p in cfg["read_only"] if sb._blocking_ancestor(p)]
                if blocked:
                    failed["read_only_paths"] = (f"{blocked[0]} is not traversable by uid {cfg['uid']} and no "
                                                 "private mount namespace is available: lazily loaded files "
                                                 "(fonts, style sheets) will fail")
        cfg["job_dir"] = os.path.join(cfg["base_dir"], "job")
        os.mkdir(cfg["job_dir"], 0o700)
        reset_job_dir(cfg)
        if sb.LANDLOCK in layers:
            cfg["ruleset_fd"] = sb.landlock_ruleset(cfg["landlock_abi"], cfg["read_only"], [cfg["job_dir"]])
    except BaseException as exc:  # noqa: BLE001
        write_frame(out_fd, {"type": "error", "reason": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc()[-2000:]})
        os._exit(1)
    import gc

    gc.collect()
    gc.freeze()
    write_frame(out_fd, {"type": "ready", "layers": layers, "failed": failed, "font": font,
                         "pid": os.getpid(), "hidden": cfg.get("hidden", [])})
    job_no = 0
    while True:
        try:
            frame = read_frame(in_fd)
        except (OSError, ValueError):
            break
        if frame is None or frame[0].get("type") != "job":
            break
        job_no += 1
        try:
            header, payload = run_job(cfg, str(frame[0].get("code", "")), job_no, [in_fd, out_fd])
        except OSError as exc:  # fork or pipe failed: the host is in trouble, not the chart
            header, payload = {"ok": False, "kind": "worker_error", "reason": f"could not run the chart: {exc}"}, b""
        header["type"] = "result"
        header["id"] = frame[0].get("id")
        try:
            write_frame(out_fd, header, payload)
        except OSError:
            break
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()

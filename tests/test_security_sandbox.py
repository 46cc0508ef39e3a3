"""Escapes from the chart sandbox beyond tests/test_sandbox_attacks.py: /proc, inherited descriptors,
forged answers from the child, raw syscalls, poisoning the worker for later jobs, and figure sizes.

Each attack must end in a typed ToolError (or a harmless chart), leak nothing, and leave the very same
worker serving correct charts afterwards."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from llmi.config import Settings
from llmi.errors import ToolError
from llmi.tools.base import BackendContext, ToolRequest
from llmi.tools.code import sandbox as sb
from llmi.tools.code.backend import SandboxChartBackend, SandboxOptions

pytest.importorskip("matplotlib")
_active, _missing = sb.plan_layers(sb.detect())
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"host lacks required sandbox layers: {', '.join(_missing)}")

SECRET = "sk-llmi-security-test-91c2e0"
GOOD = "plt.plot([1, 2, 3], [2, 3, 1])\nplt.title('still serving')"
MAX_OUT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def backend():
    # What an operator's shell holds when llmi starts: an API key the chart code must never see.
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET
    settings = Settings()
    for key, value in {"workers": 1, "wall_s": 3.0, "cpu_s": 2, "memory_mb": 1024,
                       "max_output_bytes": MAX_OUT}.items():
        setattr(settings.sandbox, key, value)
    b = SandboxChartBackend(SandboxOptions(), BackendContext(settings=settings, http=None, fetcher=None))
    yield b
    if before is None:
        os.environ.pop("OPENAI_API_KEY", None)
    else:
        os.environ["OPENAI_API_KEY"] = before
    if b._pool is not None:
        b._pool.close()


async def chart(backend, code: str):
    return await backend.run(ToolRequest(tool="code", params={"code": code}))


async def attack(backend, code: str, kinds: set[str]) -> ToolError:
    if backend._pool is None or not backend._pool.worker_pids():
        await chart(backend, GOOD)
    pids = backend._pool.worker_pids()
    with pytest.raises(ToolError) as ei:
        await chart(backend, code)
    err = ei.value
    assert err.kind in kinds, f"{err.kind}: {err}"
    assert SECRET not in str(err)
    res = await chart(backend, GOOD)
    assert res.image.mime == "image/png" and res.image.width > 400
    assert backend._pool.worker_pids() == pids, "the worker was replaced"
    assert backend._pool.restarts == 0
    return err


# -- /proc and the parents' secrets ---------------------------------------------------------------------


async def test_worker_starts_with_a_clean_environment(backend):
    await chart(backend, GOOD)
    (pid,) = backend._pool.worker_pids()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert SECRET.encode() not in environ
    names = {item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if item}
    assert "OPENAI_API_KEY" not in names
    assert names <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR",
                     "PYTHONHASHSEED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMEXPR_NUM_THREADS"}, names


@pytest.mark.parametrize(
    "target",
    ["/proc/self/mem", "/proc/self/environ", "/proc/1/root/etc/hostname", "/proc/1/environ",
     "/proc/{ppid}/environ", "/proc/{ppid}/cmdline", "/proc/{ppid}/mem", "/proc/{llmi}/environ",
     "/proc/{llmi}/cmdline", "/proc/{llmi}/root/etc/hostname"],
)
async def test_proc_is_closed(backend, target):
    path = target.replace("{llmi}", str(os.getpid()))
    code = f"""
import os
path = {path!r}.replace('{{ppid}}', str(os.getppid()))
fd = os.open(path, os.O_RDONLY)
data = os.read(fd, 1 << 20)
plt.title(repr(data[:80]))
"""
    err = await attack(backend, code, {"sandbox_violation"})
    assert "Permission denied" in str(err)


async def test_proc_listing_and_mem_write(backend):
    await attack(backend, "import os\nprint(os.listdir('/proc/1/root'))", {"sandbox_violation"})
    await attack(backend, "import os\nfd = os.open('/proc/self/mem', os.O_RDWR)", {"sandbox_violation"})
    await attack(backend, "import os\nos.listdir('/proc')", {"sandbox_violation"})


async def test_only_the_result_pipe_is_inherited(backend):
    code = """
import os, stat
found = []
for fd in range(3, 1024):
    try:
        found.append((fd, stat.S_ISFIFO(os.fstat(fd).st_mode)))
    except OSError:
        pass
raise RuntimeError('fds ' + repr(found))
"""
    err = await attack(backend, code, {"code_error"})
    fds = eval(str(err).split("fds ", 1)[1].split(" (line", 1)[0])  # noqa: S307 - our own repr
    assert len(fds) == 1 and fds[0][1] is True, fds  # the child's own result pipe, nothing of the worker


# -- sockets, raw syscalls, processes -------------------------------------------------------------------------


async def test_socketpair_and_abstract_unix_sockets(backend):
    await attack(backend, "import socket\na, b = socket.socketpair()", {"sandbox_violation"})
    code = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0/tmp/.X11-unix/X0')"
    await attack(backend, code, {"sandbox_violation"})
    code = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/dbus/system_bus_socket')"
    await attack(backend, code, {"sandbox_violation"})


@pytest.mark.skipif(platform.machine() != "x86_64", reason="hand-written x86-64 machine code")
async def test_shellcode_making_raw_syscalls(backend):
    """Machine code in an executable mmap bypasses Python and libc; seccomp still answers EPERM."""
    code = """
import mmap, ctypes
def raw(nr, a0=0):
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    # mov rdi, a0 ; mov eax, nr ; syscall ; ret
    m.write(b'\\x48\\xbf' + a0.to_bytes(8, 'little') + b'\\xb8' + nr.to_bytes(4, 'little') + b'\\x0f\\x05\\xc3')
    return ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
out = [raw(57), raw(58), raw(41, 1), raw(105, 0), raw(272, 0x40000000), raw(425, 8)]
raise RuntimeError('results ' + repr(out))
"""
    err = await attack(backend, code, {"code_error"})
    # fork, vfork, socket(AF_UNIX), setuid(0), unshare(CLONE_NEWNET), io_uring_setup: all -EPERM.
    assert "results [-1, -1, -1, -1, -1, -1]" in str(err)


async def test_raw_clone_variants(backend):
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out = []
for nr, args in ((56, (17, 0, 0, 0, 0)), (435, (ctypes.create_string_buffer(88), 88))):
    r = libc.syscall(nr, *args)
    out.append((r, ctypes.get_errno()))
raise RuntimeError('clones ' + repr(out))
""" if platform.machine() == "x86_64" else "import os\nos.fork()"
    err = await attack(backend, code, {"code_error", "sandbox_violation"})
    if platform.machine() == "x86_64":
        assert "clones [(-1, 1), (-1, 38)]" in str(err)  # clone: EPERM; clone3: ENOSYS


async def test_setsid_double_fork_and_rlimits(backend):
    await attack(backend, "import os\nos.setsid()\nif os.fork() == 0:\n    os.fork()", {"sandbox_violation"})
    err = await attack(backend, "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", {"code_error"})
    assert "not allowed to raise maximum limit" in str(err)
    code = "import resource\ns, h = resource.getrlimit(resource.RLIMIT_CPU)\nresource.setrlimit(resource.RLIMIT_CPU, (h + 60, h + 60))"
    await attack(backend, code, {"code_error"})
    await attack(backend, "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))", {"code_error"})


async def test_signals_to_the_worker(backend):
    for sig in ("SIGSTOP", "SIGTERM", "SIGKILL"):
        await attack(backend, f"import os, signal\nos.kill(os.getppid(), signal.{sig})", {"sandbox_violation"})
    await attack(backend, "import os, signal\nos.killpg(os.getpgid(os.getppid()), 9)", {"sandbox_violation"})
    code = "import ctypes, os\nl = ctypes.CDLL(None, use_errno=True)\nr = l.ptrace(16, os.getppid(), 0, 0)\nraise RuntimeError('ptrace %d' % r)"
    err = await attack(backend, code, {"code_error"})
    assert "ptrace -1" in str(err)


# -- a forged answer from the child ---------------------------------------------------------------------------

FORGE = """
import os, json, struct
payload = {payload}
header = json.dumps({header}).encode()
frame = struct.pack('>I', len(header)) + header + payload
for fd in range(3, 64):
    try:
        os.write(fd, frame)
        break
    except OSError:
        pass
os._exit(0)
"""


async def test_forged_oversized_answer_does_not_cost_the_worker(backend):
    payload = f"b'\\x89PNG\\r\\n\\x1a\\n' + b'x' * {MAX_OUT + 100_000}"
    code = FORGE.format(payload=payload, header=f"{{'ok': True, 'size': {MAX_OUT + 100_008}}}")
    err = await attack(backend, code, {"output_too_large"})
    assert str(MAX_OUT) in str(err)


async def test_forged_non_png_answer_is_refused(backend):
    code = FORGE.format(payload="b'<svg onload=alert(1)>'.ljust(100)", header="{'ok': True, 'size': 100}")
    err = await attack(backend, code, {"code_error"})
    assert "not a PNG" in str(err)


async def test_forged_kind_is_not_believed(backend):
    code = FORGE.format(payload="b''", header="{'ok': False, 'kind': 'rate_limited', 'reason': 'x' * 9000, 'size': 0}")
    err = await attack(backend, code, {"code_error"})
    assert len(str(err)) <= 2100


async def test_forged_png_bomb_is_refused_by_validation(backend):
    """A real-looking PNG header claiming 60000x60000 pixels: the backend's validation refuses it."""
    code = """
import struct, zlib, os, json
def chunk(k, d):
    return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d) & 0xffffffff)
png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 60000, 60000, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(b'\\x00' * 1000)) + chunk(b'IEND', b''))
header = json.dumps({'ok': True, 'size': len(png)}).encode()
for fd in range(3, 64):
    try:
        os.write(fd, struct.pack('>I', len(header)) + header + png)
        break
    except OSError:
        pass
os._exit(0)
"""
    await attack(backend, code, {"image_too_large"})


# -- poisoning later jobs -----------------------------------------------------------------------------------


async def test_a_job_cannot_poison_the_next(backend):
    poison = """
import sys, os, builtins, matplotlib, matplotlib.pyplot as p, numpy
matplotlib.rcParams['lines.linewidth'] = 80
matplotlib.use('pdf')
os.makedirs('.config/matplotlib', exist_ok=True)
with os.fdopen(os.open('.config/matplotlib/matplotlibrc', os.O_WRONLY | os.O_CREAT), 'w') as f:
    f.write('lines.linewidth: 80\\n')
with os.fdopen(os.open('matplotlibrc', os.O_WRONLY | os.O_CREAT), 'w') as f:
    f.write('backend: pdf\\n')
with os.fdopen(os.open('fontlist-v390.json', os.O_WRONLY | os.O_CREAT), 'w') as f:
    f.write('{}')
os.symlink('/etc', 'etc')
os.mkfifo('fifo')
import threading, time
def beacon():
    while True:
        with os.fdopen(os.open('beacon', os.O_WRONLY | os.O_CREAT | os.O_APPEND), 'w') as f:
            f.write('x')
        time.sleep(0.005)
threading.Thread(target=beacon, daemon=False).start()
fig = matplotlib.figure.Figure()
fig.add_subplot().plot([1, 2])
plt.figure().add_subplot().plot([1, 2])
p.plot = None
numpy.linspace = None
builtins.print = None
sys.modules['pandas'] = None
"""
    first = await chart(backend, poison)
    assert first.image.mime == "image/png"
    check = """
import os, sys, builtins, matplotlib, numpy
assert callable(plt.plot) and callable(numpy.linspace) and callable(builtins.print)
assert sys.modules['pandas'] is pd and matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()
assert matplotlib.rcParams['lines.linewidth'] != 80
assert os.listdir('.') == [], os.listdir('.')
plt.plot(pd.Series([1, 2, 3]))
"""
    second = await chart(backend, check)
    assert second.image.width > 400


async def test_symlinks_in_the_job_directory_do_not_widen_access(backend):
    code = "import os\nos.symlink('/etc', 'etc')\nopen('etc/passwd').read()"
    await attack(backend, code, {"sandbox_violation"})
    code = "import os\nos.link('/etc/passwd', 'pw')"  # the job tmpfs is another file system
    await attack(backend, code, {"code_error", "sandbox_violation"})
    assert Path("/etc/passwd").read_text()


# -- figure sizes and where output goes ----------------------------------------------------------------------


async def test_enormous_figures_fail_cleanly(backend):
    err = await attack(backend, "plt.figure(figsize=(1000, 1000))\nplt.plot([1, 2])", {"code_error"})
    assert "use a smaller figsize" in str(err)
    # Artists far outside the figure make bbox_inches='tight' grow the canvas past any figsize check.
    await attack(backend, "plt.plot([1, 2])\nplt.figtext(30, 30, 'far away')", {"memory_limit", "code_error"})
    await attack(backend, "plt.plot([1, 2])\nplt.figtext(1e4, 1e4, 'very far')", {"memory_limit", "code_error"})


async def test_lying_about_the_figure_size_stays_bounded(backend):
    code = ("import matplotlib.figure as mf\nmf.Figure.get_size_inches = lambda self: np.array([1.0, 1.0])\n"
            "plt.figure(figsize=(400, 400))\nplt.plot([1, 2])")
    try:
        res = await chart(backend, code)
    except ToolError as exc:
        assert exc.kind in {"memory_limit", "code_error", "image_too_large", "timeout"}, exc
    else:
        assert res.image.width * res.image.height <= Settings().images.max_pixels
    assert (await chart(backend, GOOD)).image.width > 400


async def test_backend_switches_and_output_paths(backend):
    res = await chart(backend, "import matplotlib\nmatplotlib.use('pdf')\nplt.plot([1, 2])")
    assert res.image.mime == "image/png"
    await attack(backend, "import matplotlib\nmatplotlib.use('TkAgg')\nplt.plot([1, 2])", {"code_error"})
    await attack(backend, "import matplotlib\nmatplotlib.use('module:///tmp/evil')\nplt.plot([1, 2])",
                 {"code_error", "sandbox_violation"})
    res = await chart(backend, "plt.plot([1, 2])\nplt.savefig('/etc/llmi-x.png')\nplt.gcf().savefig('../../x.png')")
    assert res.image.mime == "image/png" and not os.path.exists("/etc/llmi-x.png")
    await attack(backend, "plt.plot([1, 2])\nplt.gcf().canvas.print_png('/tmp/llmi-sec-x.png')", {"sandbox_violation"})
    await attack(backend, "import matplotlib.image as mi\nmi.imsave('/tmp/llmi-sec-y.png', np.zeros((4, 4)))",
                 {"sandbox_violation"})
    assert not os.path.exists("/tmp/llmi-sec-x.png") and not os.path.exists("/tmp/llmi-sec-y.png")

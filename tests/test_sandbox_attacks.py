"""Real attacks from "LLM-written" chart code. Each must fail with a typed reason, leave no trace on the
host, and the same worker must render a correct chart right afterwards."""

from __future__ import annotations

import hashlib
import os
import socket
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

SECRET = "llmi-test-secret-3f9a7c"
GOOD = "plt.plot([1, 2, 3], [2, 3, 1])\nplt.title('still serving')"


@pytest.fixture(scope="module")
def backend():
    os.environ["LLMI_TEST_SECRET"] = SECRET  # in the host's environment when the worker starts
    settings = Settings()
    for key, value in {"workers": 1, "wall_s": 3.0, "cpu_s": 2, "memory_mb": 1024,
                       "max_output_bytes": 4 * 1024 * 1024}.items():
        setattr(settings.sandbox, key, value)
    b = SandboxChartBackend(SandboxOptions(), BackendContext(settings=settings, http=None, fetcher=None))
    yield b
    os.environ.pop("LLMI_TEST_SECRET", None)
    if b._pool is not None:
        b._pool.close()


async def attack(backend, code: str, kinds: set[str]) -> ToolError:
    """Run the attack, expect a typed failure, then check the same worker still renders correctly."""
    await backend.run(ToolRequest(tool="code", params={"code": GOOD}))
    pids = backend._pool.worker_pids()
    with pytest.raises(ToolError) as ei:
        await backend.run(ToolRequest(tool="code", params={"code": code}))
    err = ei.value
    assert err.kind in kinds, f"{err.kind}: {err}"
    assert str(err)
    assert SECRET not in str(err)
    res = await backend.run(ToolRequest(tool="code", params={"code": GOOD}))
    assert res.image.mime == "image/png" and res.image.width > 400
    assert backend._pool.worker_pids() == pids, "the worker was replaced"
    assert backend._pool.restarts == 0
    return err


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- files --------------------------------------------------------------------------------------------------


async def test_read_etc_passwd(backend):
    err = await attack(backend, "data = open('/etc/passwd').read()\nplt.title(data[:50])", {"sandbox_violation"})
    assert "/etc/passwd" in str(err) and "line 1" in str(err)


async def test_read_home_directory(backend):
    home = str(Path.home())
    code = f"import os\nnames = os.listdir({home!r})\nplt.title(str(names))"
    await attack(backend, code, {"sandbox_violation"})
    code = f"import os\nfor n in ('.bashrc', '.profile', '.ssh/id_rsa'):\n    open(os.path.join({home!r}, n)).read()"
    await attack(backend, code, {"sandbox_violation", "code_error"})


async def test_environment_secrets(backend):
    code = f"""
import os, sys
found = [k for k, v in os.environ.items() if {SECRET!r} in v]
for path in ('/proc/self/environ', f'/proc/{{os.getppid()}}/environ', '/proc/1/environ'):
    try:
        if {SECRET!r}.encode() in open(path, 'rb').read():
            found.append(path)
    except OSError as exc:
        pass
if found:
    plt.title('LEAKED ' + ' '.join(found))
else:
    raise RuntimeError('env: ' + ','.join(sorted(os.environ)))
"""
    err = await attack(backend, code, {"code_error"})
    assert "LLMI_TEST_SECRET" not in str(err)


async def test_write_outside_the_job_directory(backend):
    target = "/tmp/llmi_sandbox_pwned.txt"
    if os.path.exists(target):
        os.remove(target)
    code = f"open({target!r}, 'w').write('pwned')\nplt.plot([1])"
    await attack(backend, code, {"sandbox_violation"})
    assert not os.path.exists(target)
    code = "import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'x'), 'w').write('x')"
    await attack(backend, code, {"sandbox_violation"})
    # Writing inside the job directory is allowed (and cleaned up afterwards).
    res = await backend.run(ToolRequest(tool="code", params={"code": "open('data.csv', 'w').write('a\\n1\\n')\n"
                                                                      "df = pd.read_csv('data.csv')\nplt.plot(df['a'])"}))
    assert res.image.mime == "image/png"


async def test_delete_or_corrupt_the_workers_files(backend):
    import llmi.tools.code.worker as worker_mod
    import matplotlib

    files = [worker_mod.__file__, matplotlib.__file__]
    before = {f: sha(f) for f in files}
    code = f"""
import os, shutil, sys
errors = []
for f in {files!r} + [sys.executable]:
    for action in (lambda: os.remove(f), lambda: open(f, 'a').write('# pwned'), lambda: os.chmod(f, 0)):
        try:
            action()
            errors.append('DID ' + f)
        except OSError as exc:
            errors.append(type(exc).__name__)
try:
    shutil.rmtree(os.path.dirname(os.getcwd()))
except OSError as exc:
    errors.append(type(exc).__name__)
os.chmod(os.getcwd(), 0)  # its own job directory: allowed, and reset by the worker
raise RuntimeError(' '.join(errors))
"""
    err = await attack(backend, code, {"code_error"})
    assert "DID" not in str(err)
    assert {f: sha(f) for f in files} == before


# -- network ------------------------------------------------------------------------------------------------


async def test_tcp_connection(backend):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'x')"
        await attack(backend, code, {"sandbox_violation", "code_error"})
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


async def test_udp_and_dns(backend):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    try:
        code = f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', {port}))"
        err = await attack(backend, code, {"sandbox_violation"})
        assert "line 2" in str(err)
        # A hand-made DNS query to a "resolver" on loopback, and the system resolver.
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
        code = (f"import socket\ns = socket.socket(socket.AF_INET6 if False else socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.sendto({query!r}, ('127.0.0.1', {port}))")
        await attack(backend, code, {"sandbox_violation"})
        await attack(backend, "import socket\nsocket.getaddrinfo('example.com', 80)\nplt.plot([1])",
                     {"sandbox_violation", "code_error"})
        with pytest.raises(socket.timeout):
            srv.recvfrom(100)
    finally:
        srv.close()


async def test_other_socket_families(backend):
    for fam in ("AF_INET6, socket.SOCK_STREAM", "AF_PACKET, socket.SOCK_RAW", "AF_NETLINK, socket.SOCK_RAW",
                "AF_UNIX, socket.SOCK_STREAM"):
        await attack(backend, f"import socket\nsocket.socket(socket.{fam})", {"sandbox_violation"})


# -- processes ----------------------------------------------------------------------------------------------


async def test_spawn_a_subprocess(backend):
    marker = "/tmp/llmi_sandbox_spawned"
    if os.path.exists(marker):
        os.remove(marker)
    await attack(backend, f"import subprocess\nsubprocess.run(['touch', {marker!r}])", {"sandbox_violation"})
    # os.system reports failure by its return value: nothing runs, and no chart is drawn.
    await attack(backend, f"import os\nrc = os.system('touch {marker}')", {"no_figure"})
    await attack(backend, f"import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {marker}'])", {"sandbox_violation"})
    assert not os.path.exists(marker)


async def test_fork_bomb_and_thread_bomb(backend):
    err = await attack(backend, "import os\nwhile True:\n    os.fork()", {"sandbox_violation"})
    assert "line 3" in str(err)
    code = "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"
    await attack(backend, code, {"code_error", "memory_limit", "timeout"})


async def test_kill_the_parent(backend):
    await backend.run(ToolRequest(tool="code", params={"code": GOOD}))
    pids = backend._pool.worker_pids()
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nplt.plot([1])"
    await attack(backend, code, {"sandbox_violation"})
    code = (f"import os, signal\nfor pid in ({pids[0]}, {os.getpid()}, 1, -1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nplt.plot([1])\n")
    await backend.run(ToolRequest(tool="code", params={"code": code}))  # renders: every kill failed
    assert backend._pool.worker_pids() == pids


async def test_ctypes_calls_into_libc(backend):
    marker = "/tmp/llmi_sandbox_ctypes"
    code = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
out = [libc.system(b'touch {marker}'), libc.kill(os.getppid(), signal.SIGKILL), libc.setuid(0),
       libc.syscall(57), libc.syscall(41, 2, 1, 0), libc.syscall(272, 0x40000000)]
raise RuntimeError('results ' + repr(out))
"""
    err = await attack(backend, code, {"code_error"})
    # system() reports a failed spawn as "exit status 127" (32512); every raw call fails with -1.
    assert "results [32512, -1, -1, -1, -1, -1]" in str(err) or "results [-1, -1, -1, -1, -1, -1]" in str(err)
    assert not os.path.exists(marker)


# -- resources ----------------------------------------------------------------------------------------------


async def test_memory_bomb(backend):
    err = await attack(backend, "x = bytearray(8 * 1024 ** 3)", {"memory_limit"})
    assert "MemoryError" in str(err) and "1024 MiB" in str(err)
    code = "chunks = []\nwhile True:\n    chunks.append(np.ones(50 * 1024 * 1024 // 8))"
    await attack(backend, code, {"memory_limit"})


@pytest.fixture(scope="module")
def cpu_backend():
    """CPU seconds well below the wall-clock limit, so the CPU limit fires first even on a loaded machine."""
    settings = Settings()
    for key, value in {"workers": 1, "wall_s": 30.0, "cpu_s": 1, "memory_mb": 1024}.items():
        setattr(settings.sandbox, key, value)
    b = SandboxChartBackend(SandboxOptions(), BackendContext(settings=settings, http=None, fetcher=None))
    yield b
    if b._pool is not None:
        b._pool.close()


async def test_cpu_loop(cpu_backend):
    err = await attack(cpu_backend, "while True:\n    pass", {"timeout"})
    assert "CPU" in str(err)


async def test_sleep_past_the_wall_clock_limit(backend):
    err = await attack(backend, "import time\ntime.sleep(60)\nplt.plot([1])", {"timeout"})
    assert "wall-clock" in str(err)


async def test_print_and_write_gigabytes(backend):
    await attack(backend, "while True:\n    print('x' * 100000)", {"timeout"})
    err = await attack(backend, "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))",
                       {"output_too_large"})
    assert "line 3" in str(err)
    # Many files just under the size limit fill the small job tmpfs, not the host's disk.
    code = "for i in range(100000):\n    open(f'f{i}', 'wb').write(b'x' * (3 << 20))"
    await attack(backend, code, {"output_too_large", "timeout"})
    # Flooding the result pipe is cut off at max_output_bytes.
    code = "import os\nwhile True:\n    for fd in range(3, 64):\n        try:\n            os.write(fd, b'x' * (1 << 20))\n        except OSError:\n            pass"
    await attack(backend, code, {"output_too_large", "timeout", "code_error"})


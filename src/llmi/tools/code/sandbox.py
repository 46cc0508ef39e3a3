"""The sandbox layers of the chart tool: what this host supports, and applying them in a forked child.

Chart code is written by an LLM, so it is treated as hostile. Every chart runs in a child process forked
from a warm worker (see :mod:`.worker`), and the child locks itself down before the code runs:

``rlimits``
    address space, CPU seconds, file size, open files, no core files (and processes when ``uid_drop``).
``uid_drop``
    when the worker runs as root: ``setgroups([])``, ``setgid``, ``setuid`` to an unprivileged id, so that
    ``RLIMIT_NPROC`` means something and file permissions apply (root ignores both).
``landlock``
    file system: read-only access to the interpreter, site-packages and fonts, read-write to the job
    directory only; TCP bind/connect denied (ABI >= 4); signals to and abstract sockets of processes
    outside the sandbox denied (ABI >= 6).
``seccomp``
    every ``socket``/``socketpair`` (Landlock alone lets UDP out), ``exec*``, process creation other
    than threads, ``ptrace`` and the process-inspection calls, ``mount``/``unshare``/``setns``,
    ``bpf``, ``perf_event_open``, kernel keyrings, module loading, ``io_uring`` and signals to any
    process but the child itself fail with ``EPERM``.
``netns``
    the worker lives in an empty network namespace (only a down loopback) where the host allows one.
``job_tmpfs``
    job directories live on a small private tmpfs of the worker, so writing gigabytes fills a bounded
    in-memory disk instead of the host's.
``clean_env``, ``wall_timeout``, ``output_cap``
    always on: the child's environment is emptied; the worker kills the child at the wall-clock limit
    and reads at most ``max_output_bytes`` from it.

:func:`detect` finds what the host supports (cached); :func:`sandbox_report` is what ``llmi doctor``
prints. :func:`missing_required` says which *required* layers are missing: the backend refuses to run
then, unless the operator set ``[sandbox] allow_weaker = true`` — never a silent downgrade.

Linux-only pieces use :mod:`ctypes` syscalls (Landlock has no stdlib binding) and ``pyseccomp`` (the
``code`` extra); nothing here imports matplotlib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform
import sys
from dataclasses import dataclass, field

from ...errors import SandboxSetupError  # noqa: F401 - in the llmi.errors tree

# -- layer names --------------------------------------------------------------------------------------
RLIMITS = "rlimits"
UID_DROP = "uid_drop"
LANDLOCK = "landlock"
SECCOMP = "seccomp"
NETNS = "netns"
JOB_TMPFS = "job_tmpfs"
CLEAN_ENV = "clean_env"
WALL_TIMEOUT = "wall_timeout"
OUTPUT_CAP = "output_cap"

#: Applied by the worker itself; present on every host.
ALWAYS_ON = (CLEAN_ENV, WALL_TIMEOUT, OUTPUT_CAP)
#: Best-effort layers: used where the host allows, reported either way, never required.
OPTIONAL = (NETNS, JOB_TMPFS)
ALL_LAYERS = (RLIMITS, UID_DROP, LANDLOCK, SECCOMP, NETNS, JOB_TMPFS, CLEAN_ENV, WALL_TIMEOUT, OUTPUT_CAP)

# -- syscall numbers and constants --------------------------------------------------------------------
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446), "arm64": (444, 445, 446)}
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _landlock_nrs() -> tuple[int, int, int] | None:
    return _LANDLOCK_SYSCALLS.get(platform.machine())


def landlock_abi() -> tuple[int, str]:
    """The Landlock ABI version (0 when unavailable) and why."""
    if not sys.platform.startswith("linux"):
        return 0, "not Linux"
    nrs = _landlock_nrs()
    if nrs is None:
        return 0, f"syscall numbers unknown for {platform.machine()}"
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(nrs[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 0:
        err = ctypes.get_errno()
        why = {errno.ENOSYS: "kernel built without Landlock", errno.EOPNOTSUPP: "Landlock disabled at boot"}
        return 0, why.get(err, os.strerror(err))
    return int(abi), f"ABI {abi}"


def seccomp_available() -> tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, "not Linux"
    try:
        import pyseccomp  # noqa: F401  (ctypes wrapper around libseccomp; light)
    except ImportError:
        return False, "python module 'pyseccomp' is not installed (pip install 'llmi[code]')"
    except (RuntimeError, OSError) as exc:  # libseccomp.so missing
        return False, f"libseccomp not usable: {exc}"
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            if not any(line.startswith("Seccomp:") for line in fh):
                return False, "kernel without seccomp"
    except OSError:
        pass
    return True, "libseccomp via pyseccomp"


def _probe_unshare(flags: int) -> tuple[bool, str]:
    """Try ``unshare(flags)`` in a throw-away interpreter (never in this process)."""
    import subprocess

    code = (
        "import ctypes,ctypes.util,os,sys\n"
        "l=ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6',use_errno=True)\n"
        f"r=l.unshare({flags})\n"
        "sys.exit(0 if r==0 else 100+ctypes.get_errno())\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=10,
                              env={}, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"probe failed: {exc}"
    if proc.returncode == 0:
        return True, "available"
    if proc.returncode > 100:
        return False, os.strerror(proc.returncode - 100)
    return False, f"probe exited with {proc.returncode}"


@dataclass(frozen=True)
class HostSupport:
    """What this host lets the sandbox do (see :func:`detect`)."""

    is_root: bool
    landlock_abi: int
    landlock_detail: str
    seccomp: bool
    seccomp_detail: str
    netns: bool
    netns_detail: str
    mountns: bool
    mountns_detail: str
    rlimits: bool
    details: dict[str, str] = field(default_factory=dict)

    def supported(self) -> dict[str, tuple[bool, str]]:
        uid_detail = ("running as root: each chart runs as an unprivileged uid" if self.is_root
                      else "not running as root: charts run as this user, RLIMIT_NPROC applies")
        tmpfs_detail = ("a private size-limited tmpfs per worker" if self.mountns
                        else f"no private mount namespace ({self.mountns_detail}); RLIMIT_FSIZE only")
        return {
            RLIMITS: (self.rlimits, "address space, CPU, file size, open files, processes"
                      if self.rlimits else "resource module unavailable"),
            UID_DROP: (True, uid_detail),
            LANDLOCK: (self.landlock_abi >= 1, self.landlock_detail),
            SECCOMP: (self.seccomp, self.seccomp_detail),
            NETNS: (self.netns, "empty network namespace" if self.netns else self.netns_detail),
            JOB_TMPFS: (self.mountns, tmpfs_detail),
            CLEAN_ENV: (True, "the child's environment is emptied"),
            WALL_TIMEOUT: (True, "the worker kills a chart at the wall-clock limit"),
            OUTPUT_CAP: (True, "the worker reads at most max_output_bytes from a chart"),
        }


@functools.lru_cache(maxsize=1)
def detect() -> HostSupport:
    """Probe the host once per process (cheap: a couple of syscalls and one tiny subprocess)."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    abi, ll_detail = landlock_abi()
    sc, sc_detail = seccomp_available()
    if sys.platform.startswith("linux") and is_root:
        netns, netns_detail = _probe_unshare(CLONE_NEWNET)
        mountns, mountns_detail = _probe_unshare(CLONE_NEWNS)
    else:
        netns, netns_detail = False, "needs root (CAP_SYS_ADMIN) on Linux"
        mountns, mountns_detail = False, "needs root (CAP_SYS_ADMIN) on Linux"
    try:
        import resource  # noqa: F401

        rl = True
    except ImportError:
        rl = False
    return HostSupport(is_root, abi, ll_detail, sc, sc_detail, netns, netns_detail, mountns, mountns_detail, rl)


def required_layers(support: HostSupport) -> tuple[str, ...]:
    """Layers without which the tool refuses to run (unless ``allow_weaker``)."""
    return (RLIMITS, LANDLOCK, SECCOMP) + ((UID_DROP,) if support.is_root else ())


def plan_layers(support: HostSupport, layers_off: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(layers to apply, required layers missing) on this host with these layers switched off."""
    sup = support.supported()
    active = [name for name in ALL_LAYERS if sup[name][0] and name not in layers_off]
    # uid_drop only *does* something as root; as non-root it is reported supported but is a no-op.
    if not support.is_root and UID_DROP in active:
        active.remove(UID_DROP)
    missing = [name for name in required_layers(support) if name not in active]
    return active, missing


def sandbox_report(layers_off: tuple[str, ...] = ()) -> list[tuple[str, bool, str]]:
    """``(layer, active, detail)`` for ``llmi doctor``: which layers a chart would run under here."""
    support = detect()
    sup = support.supported()
    active, missing = plan_layers(support, layers_off)
    required = required_layers(support)
    rows = []
    for name in ALL_LAYERS:
        ok, detail = sup[name]
        if name in layers_off:
            ok, detail = False, "switched off by configuration"
        elif name == UID_DROP and not support.is_root:
            ok = False
        tag = "required" if name in required else ("optional" if name in OPTIONAL else "always on")
        rows.append((name, name in active and ok, f"{tag}: {detail}"))
    return rows


def refusal_message(missing: list[str], support: HostSupport) -> str:
    sup = support.supported()
    parts = "; ".join(f"{name} ({sup[name][1]})" for name in missing)
    return (
        f"the chart sandbox is incomplete on this host: missing {parts}. Refusing to run LLM-written code "
        "with a weaker sandbox; set [sandbox] allow_weaker = true (or LLMI_SANDBOX__ALLOW_WEAKER=1) to "
        "accept it explicitly"
    )


# ======================================================================================================
# Worker side: namespaces once per worker
# ======================================================================================================


def enter_worker_namespaces(netns: bool, tmpfs_dir: str | None, tmpfs_bytes: int) -> dict[str, str]:
    """Called by the worker before it imports anything (``unshare(CLONE_NEWNS)`` needs a single thread).

    Returns ``{layer: error}`` for the layers that could not be set up (the worker reports them).
    """
    libc = _libc()
    failed: dict[str, str] = {}
    if netns:
        if libc.unshare(CLONE_NEWNET) != 0:
            failed[NETNS] = os.strerror(ctypes.get_errno())
    if tmpfs_dir is not None:
        if libc.unshare(CLONE_NEWNS) != 0:
            failed[JOB_TMPFS] = os.strerror(ctypes.get_errno())
        elif libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            failed[JOB_TMPFS] = "making / private: " + os.strerror(ctypes.get_errno())
        else:
            opts = f"size={max(tmpfs_bytes, 1 << 20)},mode=0711,nr_inodes=4096".encode()
            if libc.mount(b"llmi-jobs", tmpfs_dir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) != 0:
                failed[JOB_TMPFS] = "mounting tmpfs: " + os.strerror(ctypes.get_errno())
    return failed


def _blocking_ancestor(path: str) -> str | None:
    """The top-most ancestor of ``path`` that "other" users cannot traverse (e.g. a 0700 home)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        try:
            if not os.stat(anc).st_mode & 0o001:
                return anc
        except OSError:
            return None
    return None


def expose_read_only(paths: list[str], staging: str) -> list[str]:
    """Make ``paths`` reachable for the sandbox uid inside the worker's private mount namespace.

    A python under root's 0700 home is importable by root only, yet charts load fonts and style sheets
    lazily, after the uid drop. For each untraversable ancestor (``/root``), the original directories
    are bind-mounted aside, an empty read-only-ish tmpfs (mode 0755) covers the ancestor — hiding the
    rest of the home from the worker and its charts — and the directories are bind-mounted back,
    read-only. Returns the ancestors covered. Raises OSError on failure.
    """
    libc = _libc()
    groups: dict[str, list[str]] = {}
    for p in paths:
        anc = _blocking_ancestor(p) if os.path.isdir(p) else None
        if anc is not None:
            groups.setdefault(anc, []).append(p)

    def mount(src, dst, fstype, flags, data=None) -> None:
        if libc.mount(src, dst, fstype, flags, data) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount {dst!r}: {os.strerror(e)}")

    covered = []
    for anc, members in groups.items():
        # Keep only the outermost members (a nested one comes along with its parent).
        members = sorted(set(members))
        outer = [m for m in members if not any(m != o and m.startswith(o.rstrip("/") + "/") for o in members)]
        staged = []
        for k, m in enumerate(outer):
            st = os.path.join(staging, f"s{len(covered)}-{k}")
            os.makedirs(st, exist_ok=True)
            mount(m.encode(), st.encode(), None, MS_BIND | MS_REC)
            staged.append((st, m))
        mount(b"llmi-hide", anc.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m")
        for st, m in staged:
            os.makedirs(m, mode=0o755, exist_ok=True)
            mount(st.encode(), m.encode(), None, MS_BIND | MS_REC)
            mount(None, m.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC)
            libc.umount2(st.encode(), MNT_DETACH)
            os.rmdir(st)
        covered.append(anc)
    return covered


# ======================================================================================================
# Child side: applied after fork, before the chart code runs
# ======================================================================================================


def set_rlimits(memory_bytes: int, cpu_s: int, fsize_bytes: int, nofile: int, nproc: int | None) -> None:
    import resource

    def lim(which: int, value: int) -> None:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    lim(resource.RLIMIT_AS, memory_bytes)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL a second later
    lim(resource.RLIMIT_FSIZE, fsize_bytes)
    lim(resource.RLIMIT_NOFILE, nofile)
    lim(resource.RLIMIT_CORE, 0)
    if nproc is not None:
        lim(resource.RLIMIT_NPROC, nproc)


def drop_uid(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:  # pragma: no cover - defensive
        raise SandboxSetupError("setuid did not take effect")


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the worker) dies."""
    import signal

    if _libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise SandboxSetupError(f"PR_SET_PDEATHSIG: {os.strerror(ctypes.get_errno())}")


def _ll_syscall(nr: int, *args) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(nr), *args)


def landlock_ruleset(abi: int, read_only: list[str], read_write: list[str]) -> int:
    """Build a Landlock ruleset once (in the worker); returns its fd for :func:`landlock_restrict`.

    Read-only: read files and list directories beneath ``read_only``. Read-write (no exec, no devices):
    beneath ``read_write``. Everything else on the file system is denied, and so are TCP bind/connect
    (ABI >= 4), signals to processes outside the domain and abstract unix sockets (ABI >= 6).
    """
    nrs = _landlock_nrs()
    if nrs is None or abi < 1:
        raise SandboxSetupError("Landlock is not available")
    create, add_rule, _restrict = nrs
    fs = (1 << 13) - 1
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
    if abi >= 5:
        fs |= FS_IOCTL_DEV
    attr = _RulesetAttr(fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP  # no rule added: all TCP denied
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _ll_syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise SandboxSetupError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    ro_dir = FS_READ_FILE | FS_READ_DIR
    rw_dir = fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_IOCTL_DEV)
    try:
        for paths, rights in ((read_only, ro_dir), (read_write, rw_dir)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist needs no rule
                try:
                    allowed = rights if os.path.isdir(path) else rights & file_rights
                    rule = _PathBeneathAttr(allowed, fd)
                    if _ll_syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                                   ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                        raise SandboxSetupError(f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
                finally:
                    os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def landlock_restrict(ruleset: int) -> None:
    """Enforce a ruleset on this process (the chart child); closes the fd."""
    nrs = _landlock_nrs()
    try:
        if nrs is None:
            raise SandboxSetupError("Landlock is not available")
        if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SandboxSetupError(f"PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
        if _ll_syscall(nrs[2], ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise SandboxSetupError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def apply_landlock(abi: int, read_only: list[str], read_write: list[str]) -> None:
    """Build and enforce in one go (for callers without a warm worker)."""
    landlock_restrict(landlock_ruleset(abi, read_only, read_write))


#: Denied outright (EPERM). Names unknown to the running libseccomp are skipped.
_DENY = (
    "socket", "socketpair", "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
    "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "sethostname", "setdomainname", "acct", "quotactl",
    "syslog", "name_to_handle_at", "open_by_handle_at", "fanotify_init", "iopl", "ioperm", "pidfd_open",
    "pidfd_getfd", "pidfd_send_signal", "tkill", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "setgroups", "setfsuid", "setfsgid", "capset", "personality", "lookup_dcookie",
    "vmsplice",
)


def apply_seccomp() -> None:
    """Load the syscall filter (after Landlock: it denies the calls Landlock needs)."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:
        raise SandboxSetupError(f"seccomp unavailable: {exc}") from exc
    eperm = sc.ERRNO(errno.EPERM)
    me = os.getpid()
    try:
        filt = sc.SyscallFilter(sc.ALLOW)
        for name in _DENY:
            try:
                filt.add_rule(eperm, name)
            except (OSError, ValueError, RuntimeError):
                continue  # not a syscall on this architecture
        # clone(2) is how threads are made; a clone without CLONE_THREAD is a new process.
        filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        # clone3 takes its flags in memory, which seccomp cannot read: ENOSYS makes libc fall back to clone.
        filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        # Signals only to ourselves (the worker and everything else are off limits).
        for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            filt.add_rule(eperm, name, sc.Arg(0, sc.NE, me, 0))
        filt.load()
    except OSError as exc:
        raise SandboxSetupError(f"seccomp filter: {exc}") from exc

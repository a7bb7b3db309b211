# rstar-gpu executor worker. Started by src/exec/worker.rs as `python -I -B -c <this> <config>`.
#
# Processes (see src/exec/mod.rs for the guarantees):
#   server  trusted; speaks JSON lines with Rust on stdin/stdout; never runs model code. In a new
#           pid namespace when the kernel allows, it is pid 1 there, so when it dies every sandboxed
#           process dies with it.
#   base    forked once by the server from the preloaded interpreter; applies the sandbox once,
#           then only forks root-level snippets (it is the zygote of the fresh state).
#   snippet a forked process. Runs the code with stdout/stderr in its output memfd, reports the
#           captured output in one `done` frame on its channel socket, then either exits or stays
#           as a *zygote*: the interpreter state the snippet left, kept alive so that child
#           snippets fork from it (incremental execution). The last expected child runs in the
#           zygote's own process (no fork) over the same channel and memfd.
# A child snippet is forked by its parent's zygote; when that zygote is gone (evicted, killed,
# crashed), the server replays the missing ancestors' code silently in front of the child's code,
# starting from the nearest live ancestor or from the base state.
#
# Framing: Rust <-> server, one JSON object per line. Server <-> process channels are AF_UNIX
# stream sockets carrying frames of a 4-byte little-endian length + JSON; the server passes a new
# child's channel and output memfd to a zygote as SCM_RIGHTS file descriptors, and keeps its own
# handle on the memfd to read what a killed or crashed snippet wrote.

import array
import base64
import builtins
import collections
import ctypes
import errno
import fcntl
import gc
import io
import json
import os
import platform
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import sys
import time

CFG = json.loads(sys.argv[1])
MAXFD = 65536

# Originals, bound once: model code that rebinds `os.fork` or `json.dumps` in a zygote's modules
# must not change what the zygote loop below calls.
_fork, _exit, _dup2, _close, _read, _write = os.fork, os._exit, os.dup2, os.close, os.read, os.write
_waitpid, _pidfd_open, _closerange = os.waitpid, getattr(os, "pidfd_open", None), os.closerange
_dumps, _loads, _pack, _unpack = json.dumps, json.loads, struct.pack, struct.unpack
_perf, _getpid, _chdir = time.perf_counter, os.getpid, os.chdir
_setrlimit, _getrlimit = resource.setrlimit, resource.getrlimit
_compile, _exec = builtins.compile, builtins.exec
_dupfd, _F_DUPFD = fcntl.fcntl, fcntl.F_DUPFD

LIBC = ctypes.CDLL(None, use_errno=True)
IS_ROOT = os.geteuid() == 0
REPORT = {"uid": os.geteuid(), "user_ns": False, "pid_ns": False, "net_ns": False,
          "proc_mounted": False, "landlock_abi": 0, "seccomp": False, "no_new_procs": False}


# ----------------------------------------------------------------------------------------------
# Frames on channel sockets.

def send_frame(sock, obj, fds=()):
    data = _dumps(obj).encode()
    buf = _pack("<I", len(data)) + data
    if fds:
        n = sock.sendmsg([buf], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        if n < len(buf):
            sock.sendall(buf[n:])
    else:
        sock.sendall(buf)


def send_blocking(sock, obj, fds=()):
    """One frame to a process the server otherwise reads without blocking; a process that does
    not take it within 2 s counts as stuck (OSError)."""
    sock.settimeout(2.0)
    send_frame(sock, obj, fds)
    sock.setblocking(False)


def recv_exact(sock, n, fds):
    out = b""
    while len(out) < n:
        data, anc, _flags, _addr = sock.recvmsg(n - len(out), socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - (len(payload) % a.itemsize)])
                fds.extend(a)
        if not data:
            return None
        out += data
    return out


def recv_frame(sock):
    """Blocking read of one frame; (obj, fds) or (None, []) at EOF."""
    fds = []
    hdr = recv_exact(sock, 4, fds)
    if hdr is None:
        return None, fds
    body = recv_exact(sock, _unpack("<I", hdr)[0], fds)
    if body is None:
        return None, fds
    return _loads(body), fds


# ----------------------------------------------------------------------------------------------
# Sandbox layers, each best-effort and reported.

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces():
    """New user (unprivileged only), mount, network and pid namespaces. Returns whether a pid
    namespace was entered (the caller then forks: the child is pid 1 there)."""
    if not CFG.get("namespaces", True):
        return False
    uid, gid = os.getuid(), os.getgid()
    base = 0 if IS_ROOT else CLONE_NEWUSER
    for extra in (CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWPID,
                  CLONE_NEWNET, 0):
        flags = base | extra
        if flags == 0 or LIBC.unshare(flags) != 0:
            continue
        if base:
            try:
                write_file("/proc/self/setgroups", "deny")
                write_file("/proc/self/uid_map", "%d %d 1" % (uid, uid))
                write_file("/proc/self/gid_map", "%d %d 1" % (gid, gid))
                REPORT["user_ns"] = True
            except OSError:
                pass
        REPORT["net_ns"] = bool(flags & CLONE_NEWNET)
        REPORT["pid_ns"] = bool(flags & CLONE_NEWPID)
        REPORT["mount_ns"] = bool(flags & CLONE_NEWNS)
        return REPORT["pid_ns"]
    return False


def mount_proc():
    """In the new pid + mount namespaces: a private /proc showing only the sandbox's processes
    (model code must not find the caller's pid and read its /proc entries)."""
    if not REPORT.get("mount_ns"):
        return
    MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x4000, 0x40000, 2, 4, 8
    LIBC.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return
    if LIBC.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0:
        REPORT["proc_mounted"] = True
    # The scratch root becomes a private tmpfs with a size cap: snippet directories are made and
    # removed in memory (cheap), and all the files snippets write at once cannot exceed the cap.
    mb = int(CFG.get("scratch_mb", 0))
    if mb > 0:
        opts = ("size=%dm,mode=0711" % mb).encode()
        if LIBC.mount(b"tmpfs", CFG["scratch"].encode(), b"tmpfs",
                      MS_NOSUID | MS_NODEV | MS_NOEXEC, ctypes.c_char_p(opts)) == 0:
            REPORT["scratch_tmpfs_mb"] = mb


# Landlock: writes only under the scratch root (and to /dev/null); reads only of the interpreter's
# own files (sys.prefix, sys.path: Python and sympy import submodules lazily) and the system
# directories a library may open. Everything else (home directories, keys, the caller's files) is
# neither readable nor writable.
LL_WRITE_RIGHTS = {1: 0x1FF2, 2: 0x3FF2, 3: 0x7FF2}  # by ABI: WRITE_FILE, REMOVE_*, MAKE_*, REFER, TRUNCATE
LL_READ = 0x1 | 0x4 | 0x8  # EXECUTE, READ_FILE, READ_DIR
READ_ROOTS = ["/usr", "/lib", "/lib64", "/lib32", "/etc", "/dev", "/proc", "/sys/devices/system/cpu",
              "/opt", "/bin", "/sbin"]


def read_roots():
    roots = set(READ_ROOTS)
    for p in [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)] + [
            p for p in sys.path if p]:
        roots.add(os.path.realpath(p))
        roots.add(p)
    return sorted(r for r in roots if os.path.exists(r))


def landlock_ruleset(root):
    """The ruleset, built once in the server (opening every allowed path is the costly part):
    (ruleset fd, ABI), or (-1, 0) where Landlock is off or refused."""
    if not CFG.get("landlock", True):
        return -1, 0
    LIBC.syscall.restype = ctypes.c_long
    abi = LIBC.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1))
    if abi <= 0:
        return -1, 0
    rights = LL_WRITE_RIGHTS[min(abi, 3)]
    reads = CFG.get("landlock_reads", True)
    handled = rights | (LL_READ if reads else 0)
    attr = struct.pack("<Q", handled)
    rfd = LIBC.syscall(444, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint(0))
    if rfd < 0:
        return -1, 0
    def allow(path, access, flags):
        fd = os.open(path, os.O_PATH | flags)
        try:
            rule = struct.pack("<Qi", access, fd)  # struct landlock_path_beneath_attr is packed
            return LIBC.syscall(445, ctypes.c_int(rfd), ctypes.c_int(1), ctypes.c_char_p(rule),
                                ctypes.c_uint(0)) == 0
        finally:
            os.close(fd)

    ok = False
    try:
        ok = allow(root, handled, os.O_DIRECTORY)
        # /dev/null stays writable: snippet processes point their output there between runs.
        ok = ok and allow("/dev/null", (rights & (0x2 | 0x4000)) | (LL_READ & 0x4), 0)
        if reads:
            for r in read_roots():
                is_dir = os.path.isdir(r)
                ok = ok and allow(r, LL_READ if is_dir else (LL_READ & 0x5),
                                  os.O_DIRECTORY if is_dir else 0)
    finally:
        if not ok:
            os.close(rfd)
    return (rfd, abi) if ok else (-1, 0)


LANDLOCK = (-1, 0)  # set by main() before any snippet is forked


def landlock():
    fd, abi = LANDLOCK
    if fd < 0:
        return 0
    return abi if LIBC.syscall(446, ctypes.c_int(fd), ctypes.c_uint(0)) == 0 else 0


# seccomp: model code may not signal or trace any process, exec a program, create non-Unix
# sockets, or make namespaces. Fork stays allowed (a zygote must fork); RLIMIT_NPROC stops it.
SYSCALLS = {
    "x86_64": (0xC000003E, 41, [62, 200, 234, 129, 297, 424, 101, 310, 311, 59, 322, 272, 308,
                                165, 321, 298, 250, 248, 249, 323, 425]),
    "aarch64": (0xC00000B7, 198, [129, 130, 131, 138, 240, 424, 117, 270, 271, 221, 281, 97, 268,
                                  40, 280, 241, 219, 217, 218, 282, 425]),
}


def seccomp_program():
    """The filter, built once in the server: a ctypes `sock_fprog` (with its buffer), or None."""
    if not CFG.get("seccomp", True):
        return None
    spec = SYSCALLS.get(platform.machine())
    if spec is None:
        return None
    arch, sock_nr, blocked = spec
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EPERM
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, ALLOW), (LD, 0, 0, 0)]
    if arch == 0xC000003E:
        prog.append(("x32", 0x40000000))
    for nr in blocked:
        prog.append(("deny", nr))
    prog.append(("sock", sock_nr))
    prog.append((RET, 0, 0, ALLOW))
    sock_check = len(prog)
    prog += [(LD, 0, 0, 16), (JEQ, 1, 0, socket.AF_UNIX), (RET, 0, 0, DENY),
             (RET, 0, 0, ALLOW)]
    deny_at = sock_check + 2
    out = []
    for i, ins in enumerate(prog):
        if ins[0] == "x32":
            out.append((JGE, deny_at - i - 1, 0, ins[1]))
        elif ins[0] == "deny":
            out.append((JEQ, deny_at - i - 1, 0, ins[1]))
        elif ins[0] == "sock":
            out.append((JEQ, sock_check - i - 1, 0, ins[1]))
        else:
            out.append(ins)
    raw = b"".join(struct.pack("<HBBI", *ins) for ins in out)
    buf = ctypes.create_string_buffer(raw)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    p = Prog(len(out), ctypes.addressof(buf))
    return p, buf


SECCOMP = None  # set by main() before any snippet is forked


def seccomp():
    if SECCOMP is None:
        return False
    LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    return LIBC.prctl(PR_SET_SECCOMP, 2, ctypes.byref(SECCOMP[0]), 0, 0) == 0


CAP_DAC_READ_SEARCH, PR_SET_KEEPCAPS = 2, 8
CAPSET_NR = {"x86_64": 126, "aarch64": 91}


def keep_read_capability():
    """After leaving root: keep CAP_DAC_READ_SEARCH only, so the interpreter can still read its
    library wherever it is installed (pyenv under a 0700 /root, say). Landlock's read list below
    decides what may be read."""
    nr = CAPSET_NR.get(platform.machine())
    if nr is None:
        return False
    header = struct.pack("<Ii", 0x20080522, 0)
    bit = 1 << CAP_DAC_READ_SEARCH
    data = struct.pack("<6I", bit, bit, 0, 0, 0, 0)  # effective, permitted, inheritable (x2)
    LIBC.syscall.restype = ctypes.c_long
    return LIBC.syscall(nr, ctypes.c_char_p(header), ctypes.c_char_p(data)) == 0


def drop_privileges():
    """Once, in the base process, before any model code. Every snippet inherits it."""
    if IS_ROOT and CFG.get("uid") is not None:
        hard = int(CFG.get("nproc_hard", 4096))
        _setrlimit(resource.RLIMIT_NPROC, (hard, hard))
        os.setgroups([])
        LIBC.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
        os.setresgid(CFG["gid"], CFG["gid"], CFG["gid"])
        os.setresuid(CFG["uid"], CFG["uid"], CFG["uid"])
        keep_read_capability()
    LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return {"uid": os.geteuid(), "landlock_abi": landlock(), "seccomp": seccomp()}


def set_limits(timeout_ms, cpu_before=0.0):
    # RLIMIT_CPU counts the whole process: a snippet run in place after its parent's gets its
    # budget on top of what the process has used.
    cpu = max(1, -(-int(timeout_ms) // 1000)) + int(cpu_before + 0.999)
    _setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    mem = CFG.get("memory_bytes")
    if mem:
        _setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = CFG.get("fsize_bytes")
    if fsize:
        _setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    _setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No new processes (or threads): the count is per user and always >= 1, so a soft limit of 1
    # makes fork fail with EAGAIN. Root ignores it, which is why root-run workers drop to a uid.
    if not (os.geteuid() == 0):
        _setrlimit(resource.RLIMIT_NPROC, (1, _getrlimit(resource.RLIMIT_NPROC)[1]))


def zygote_limits():
    # A zygote forks children, and its own CPU clock keeps counting while it waits.
    _setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if not (os.geteuid() == 0):
        hard = _getrlimit(resource.RLIMIT_NPROC)[1]
        _setrlimit(resource.RLIMIT_NPROC, (hard, hard))


# ----------------------------------------------------------------------------------------------
# A snippet process.

def fresh_namespace():
    return {"__name__": "__main__", "__builtins__": builtins}


def run_code(code, ns):
    try:
        _exec(_compile(code, "<step>", "exec"), ns)
        return True, None
    except SystemExit as e:
        if e.code is None or e.code == 0:
            return True, None
        return False, "SystemExit: %s" % (e.code,)
    except BaseException as e:  # noqa: BLE001 - model code may raise anything
        try:
            msg = str(e)
        except BaseException:  # noqa: BLE001
            msg = "<unprintable>"
        return False, "%s: %s" % (type(e).__name__, msg) if msg else type(e).__name__


def new_streams():
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace")


def flush_streams():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except BaseException:  # noqa: BLE001
            pass


def child_fds(chan_fd, out_fd):
    """In a freshly forked child: default signals, /dev/null on 0, the channel on 3 and the
    output memfd on 4 (the layout every snippet process keeps)."""
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(s, signal.SIG_DFL)
    # Past RLIMIT_FSIZE a write fails with EFBIG (an exception the snippet reports) instead of
    # killing the process: that is how runaway output ends.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    devnull = os.open("/dev/null", os.O_RDWR)
    _dup2(devnull, 0)
    # Through fds >= 10 first: either may sit on 3 or 4 where the other is going.
    chan_fd, out_fd = _dupfd(chan_fd, _F_DUPFD, 10), _dupfd(out_fd, _F_DUPFD, 10)
    _dup2(chan_fd, 3)
    _dup2(out_fd, 4)


def become_snippet(chan_fd, out_fd, msg, ns):
    """In a freshly forked child: set up, run `msg`'s code in `ns`, report, then exit or serve as
    a zygote. Never returns. `out_fd` is this process's output memfd for its whole life."""
    try:
        child_fds(chan_fd, out_fd)
        _closerange(5, MAXFD)  # the sandbox itself is inherited from the base process
        chan = socket.socket(fileno=3)
        if msg.get("want_pid"):
            send_frame(chan, {"op": "start", "pid": _getpid()})
        if run_snippet(chan, msg, ns, 0.0):
            zygote(chan, ns, {})
    except BaseException as e:  # noqa: BLE001 - a broken setup must still end the process
        report_failure(e)
    _exit(0)


def become_base(chan_fd, out_fd):
    """The base process, forked once by the server: sandboxed once, then a zygote of the fresh
    interpreter state, so every root-level snippet is a plain fork of it (the server neither
    forks its own, growing process nor repeats the sandbox set-up per snippet). Never returns."""
    try:
        child_fds(chan_fd, out_fd)
        drop_privileges()  # before closing the server's fds: it uses the Landlock ruleset
        _closerange(5, MAXFD)
        _dup2(0, 1)
        _dup2(0, 2)
        zygote_limits()
        gc.collect()
        gc.freeze()
        zygote(socket.socket(fileno=3), fresh_namespace(), {})
    except BaseException as e:  # noqa: BLE001
        report_failure(e)
    _exit(0)


def report_failure(e):
    try:
        send_frame(socket.socket(fileno=os.dup(3)), {
            "op": "done", "ok": False, "error": "executor setup failed: %s: %s" % (
                type(e).__name__, e)})
    except BaseException:  # noqa: BLE001
        pass


def cpu_used():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


HEAD_CAP = int(CFG.get("head_bytes", 4096))
TAIL_CAP = int(CFG.get("tail_bytes", 4096))
MAX_OUTPUT = int(CFG.get("max_output_bytes", 1 << 20))
_b64, _fstat, _pread, _ftruncate, _lseek = (base64.b64encode, os.fstat, os.pread, os.ftruncate,
                                           os.lseek)


def captured(fd):
    """(head, tail, total) of the output in memfd `fd`: the first HEAD_CAP bytes and the last
    TAIL_CAP bytes after them, as the server keeps them."""
    total = _fstat(fd).st_size
    head = _pread(fd, min(HEAD_CAP, total), 0) if total else b""
    start = max(len(head), total - TAIL_CAP)
    tail = _pread(fd, total - start, start) if total > start else b""
    return head, tail, total


def run_snippet(chan, msg, ns, cpu_before):
    """Fds: 0 /dev/null, 3 the channel, 4 the output memfd. Runs the prelude (output discarded)
    and the code (stdout and stderr into the memfd), then reports `done` with the captured output
    in one frame. Returns whether to stay as a zygote."""
    _dup2(0, 1)
    _dup2(0, 2)
    set_limits(msg["timeout_ms"], cpu_before)
    scratch = msg["scratch"]
    _chdir(scratch)
    os.environ["TMPDIR"] = scratch
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None
    prelude = msg.get("prelude")
    if prelude:
        new_streams()
        for code in prelude:
            run_code(code, ns)  # replayed ancestors: their outputs and errors were reported before
        flush_streams()
    _ftruncate(4, 0)
    _lseek(4, 0, os.SEEK_SET)
    _dup2(4, 1)
    _dup2(4, 2)
    new_streams()
    t0 = _perf()
    ok, error = run_code(msg["code"], ns)
    ms = (_perf() - t0) * 1000.0
    try:
        sys.stdout.flush()
    except BaseException as e:  # noqa: BLE001 - e.g. the code closed fd 1
        if ok:
            ok, error = False, "cannot write the output: %s: %s" % (type(e).__name__, e)
    flush_streams()
    _dup2(0, 1)
    _dup2(0, 2)
    try:
        head, tail, total = captured(4)
        _ftruncate(4, 0)
    except OSError as e:  # the code closed or replaced fd 4
        head, tail, total = b"", b"", 0
        if ok:
            ok, error = False, "cannot read the output: %s" % e
    if total > MAX_OUTPUT:
        ok, error = False, "output exceeded %d bytes" % MAX_OUTPUT
    send_frame(chan, {"op": "done", "ok": ok, "error": error, "ms": ms,
                      "head": _b64(head).decode(), "tail": _b64(tail).decode(), "total": total})
    if msg.get("keep"):
        zygote_limits()
        return True
    return False


def report_exit(chan, rid, pid, status):
    # Best effort: a lost report must not end the zygote.
    try:
        send_frame(chan, {"op": "exit", "rid": rid, "pid": pid, "status": status})
    except OSError:
        pass


def zygote(chan, ns, children):
    """Serve `run` requests on the process's channel: fork a child that continues from `ns`
    (the frame carries the child's channel and output memfd), or, for the last child (`inplace`,
    no fds), run it in this process, whose state nobody else needs any more. Exits at EOF.
    `children`: pidfd (or a placeholder key without pidfds) -> (pid, rid)."""
    poller = select.poll()
    cfd = chan.fileno()
    poller.register(cfd, select.POLLIN)
    while True:
        try:
            events = poller.poll(None if _pidfd_open else 50)
        except InterruptedError:
            continue
        if not _pidfd_open:
            for key in list(children):
                pid, rid = children[key]
                done, status = _waitpid(pid, os.WNOHANG)
                if done:
                    del children[key]
                    report_exit(chan, rid, pid, status)
        for fd, _ev in events:
            if fd == cfd:
                msg, fds = recv_frame(chan)
                if msg is None or msg.get("op") == "exit":
                    _exit(0)
                if msg.get("op") != "run":
                    for f in fds:
                        _close(f)
                    continue
                if msg.get("inplace"):
                    for f in fds:
                        _close(f)
                    try:
                        if not run_snippet(chan, msg, ns, cpu_used()):
                            _exit(0)
                    except BaseException as e:  # noqa: BLE001
                        report_failure(e)
                        _exit(0)
                    break
                if len(fds) != 2:
                    for f in fds:
                        _close(f)
                    continue
                pid = _fork()
                if pid == 0:
                    become_snippet(fds[0], fds[1], msg, ns)
                for f in fds:
                    _close(f)
                if _pidfd_open:
                    key = _pidfd_open(pid)
                    poller.register(key, select.POLLIN)
                else:
                    key = -pid
                children[key] = (pid, msg["rid"])
            elif fd in children:
                pid, rid = children.pop(fd)
                poller.unregister(fd)
                _close(fd)
                try:
                    _, status = _waitpid(pid, 0)
                except ChildProcessError:
                    continue
                report_exit(chan, rid, pid, status)


# ----------------------------------------------------------------------------------------------
# The server.

class Rec:
    """A snippet the server knows: how to rebuild its state, and where that state lives."""
    __slots__ = ("rid", "parent", "code", "chain", "keep", "timeout_ms", "status", "has_state",
                 "error", "cause", "zyg", "waiting", "released")

    def __init__(self, m):
        self.rid, self.parent, self.code = m["rid"], m.get("parent"), m["code"]
        self.chain = m.get("chain") or []
        self.keep = int(m.get("keep", 0))  # children still to come; <0: until released
        self.timeout_ms = int(m.get("timeout_ms", 2000))
        self.status, self.has_state, self.error, self.cause = "pending", False, None, None
        self.zyg, self.waiting, self.released = None, [], False


class Zyg:
    """A kept process: its channel (registered with the selector for its whole life), the server's
    handle on its output memfd, and any partial frame read from it."""
    __slots__ = ("rid", "pid", "sock", "memfd", "buf")

    def __init__(self, rid, pid, sock, memfd, buf=b""):
        self.rid, self.pid, self.sock, self.memfd, self.buf = rid, pid, sock, memfd, buf


class Run:
    __slots__ = ("rid", "pid", "sock", "memfd", "t0", "deadline", "done", "eof", "status", "buf",
                 "eof_at", "ended")

    def __init__(self, rid, sock, memfd, timeout_s, buf=b""):
        self.rid, self.sock, self.memfd, self.pid = rid, sock, memfd, None
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout_s
        self.done = self.status = self.eof_at = None
        self.eof, self.buf, self.ended = False, buf, False


SIGNAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and "_" not in n}


def explain_status(status, timeout_ms):
    if status is None:
        return "the snippet's process ended without a result (a crash, os._exit or a kill)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = SIGNAMES.get(sig, "signal %d" % sig)
        if sig == signal.SIGXCPU:
            return "CPU time limit exceeded (%d s)" % max(1, -(-timeout_ms // 1000))
        if sig == signal.SIGXFSZ:
            return "file size limit exceeded"
        if sig == signal.SIGSEGV:
            return "crashed with SIGSEGV (often a recursion too deep for the C stack)"
        if sig == signal.SIGKILL:
            return "killed by SIGKILL (the memory limit or the kernel's OOM killer)"
        return "killed by %s" % name
    if os.WIFEXITED(status):
        return "the snippet's process exited with status %d before finishing (os._exit?)" % (
            os.WEXITSTATUS(status))
    return "the snippet's process ended without a result (status %d)" % status


class Server:
    def __init__(self):
        self.recs = {}
        self.ready = collections.deque()
        self.runs = {}       # channel fd -> Run
        self.by_pid = {}     # pid -> Run
        self.zygs = collections.OrderedDict()  # rid -> Zyg (LRU order)
        self.zyg_pids = {}
        self.zyg_fds = {}    # zygote channel fd -> Zyg
        self.scratch = {}    # rid -> its scratch directory while it runs
        self.sel = selectors.DefaultSelector()
        self.inbuf = b""
        self.outbuf = []
        self.counter = 0
        self.max_running = max(1, int(CFG.get("max_running", 2)))
        self.max_states = max(0, int(CFG.get("max_states", 256)))
        self.stdin_open = True
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.base = None  # the base process (a Zyg without a rid), see become_base
        self.base_process()

    def base_process(self):
        """The live base process, started if needed."""
        if self.base is not None:
            return self.base
        s_end, c_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        memfd = os.memfd_create("base", os.MFD_CLOEXEC)
        pid = _fork()
        if pid == 0:
            s_end.close()
            become_base(c_end.fileno(), memfd)
        c_end.close()
        _close(memfd)
        s_end.setblocking(False)
        self.base = Zyg(None, pid, s_end, -1)
        self.sel.register(s_end, selectors.EVENT_READ, "base")
        return self.base

    def drop_base(self):
        b, self.base = self.base, None
        if b is not None:
            self.close_proc(b.sock, -1, b.pid, kill=True)

    def on_base(self):
        if self.base is not None and self.relay_exits(self.base):
            self.drop_base()

    # -- Rust side --------------------------------------------------------------------------

    def reply(self, obj):
        # Buffered: one write per loop iteration carries every result that iteration produced.
        self.outbuf.append(_dumps(obj))

    def flush_replies(self):
        if not self.outbuf:
            return
        data = ("\n".join(self.outbuf) + "\n").encode()
        self.outbuf = []
        view = memoryview(data)
        while view:
            try:
                n = os.write(1, view)
                view = view[n:]
            except BlockingIOError:
                select.select([], [1], [])

    def on_stdin(self):
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stdin_open = False
            self.sel.unregister(0)
            return
        self.inbuf += data
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self.on_request(_loads(line))

    def on_request(self, m):
        op = m.get("op")
        if op == "run":
            rec = Rec(m)
            self.recs[rec.rid] = rec
            parent = self.recs.get(rec.parent) if rec.parent is not None else None
            if parent is not None and parent.status != "done":
                parent.waiting.append(rec.rid)
            else:
                self.ready.append(rec.rid)
        elif op == "release":
            for rid in m.get("rids", []):
                rec = self.recs.get(rid)
                if rec is None:
                    continue
                rec.released = True
                self.drop_zygote(rec)
                if rec.status == "done" and not rec.waiting:
                    del self.recs[rid]
        elif op == "shutdown":
            self.stdin_open = False

    # -- starting snippets -------------------------------------------------------------------

    def finish_without_run(self, rec, error, cause=None):
        rec.status, rec.has_state, rec.error = "done", False, error
        rec.cause = cause or error
        self.reply({"rid": rec.rid, "ok": False, "error": error, "ms": 0.0, "head": "",
                    "tail": "", "total": 0, "kept": False})
        self.after_done(rec)

    def plan(self, rec):
        """Where to start `rec`: (zygote or None, prelude codes, error, root cause). A non-None
        error means it cannot start (its parent left no state, or is unknown)."""
        codes, p = [], rec.parent
        base = None
        top = rec
        while p is not None:
            prec = self.recs.get(p)
            if prec is None:
                return None, [], "unknown parent %r" % p, None
            if not prec.has_state:
                cause = prec.cause or "it did not finish"
                return None, [], ("cannot continue from the parent: it left no interpreter "
                                  "state (%s)" % cause), prec.cause
            if prec.zyg is not None:
                base = prec.zyg
                break
            codes.append(prec.code)
            top, p = prec, prec.parent
        if base is None:
            codes.extend(reversed(top.chain))
        codes.reverse()
        return base, codes, None, None

    def start(self, rid):
        rec = self.recs[rid]
        attempts = 0
        while True:
            base, prelude, error, cause = self.plan(rec)
            if error is not None:
                self.finish_without_run(rec, error, cause)
                return
            self.counter += 1
            scratch = os.path.join(CFG["scratch"], "s%d" % self.counter)
            try:
                os.mkdir(scratch, 0o700)
                if IS_ROOT and CFG.get("uid") is not None:
                    os.chown(scratch, CFG["uid"], CFG["gid"])
            except OSError as e:
                self.finish_without_run(rec, "cannot create a scratch directory: %s" % e)
                return
            # The last expected child of a zygote runs in the zygote's own process: no fork, and
            # nobody needs the parent's state afterwards.
            inplace = base is not None and self.recs[base.rid].keep == 1
            msg = {"op": "run", "rid": rid, "code": rec.code, "prelude": prelude,
                   "keep": rec.keep != 0, "timeout_ms": rec.timeout_ms, "scratch": scratch,
                   "inplace": inplace, "want_pid": not inplace}
            timeout_s = rec.timeout_ms / 1000.0 * (1 + len(prelude))
            if inplace:
                # The zygote's own process and channel (already registered) become this run's.
                sock, memfd, buf, pid = base.sock, base.memfd, base.buf, base.pid
                self.forget_zygote(self.recs[base.rid])
                try:
                    send_blocking(sock, msg)
                except OSError:
                    self.close_proc(sock, memfd, pid, kill=True)
                    shutil.rmtree(scratch, ignore_errors=True)
                    continue
            else:
                s_end, c_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                memfd = os.memfd_create("out", os.MFD_CLOEXEC)
                # Forked by the parent's zygote, or, at the root, by the base process.
                forker = base if base is not None else self.base_process()
                pid = None  # the child reports it in its first frame
                try:
                    send_blocking(forker.sock, msg, [c_end.fileno(), memfd])
                except OSError:
                    # The zygote is gone or stuck: drop it and plan again from further up.
                    for c in (s_end, c_end):
                        c.close()
                    _close(memfd)
                    shutil.rmtree(scratch, ignore_errors=True)
                    attempts += 1
                    if base is not None:
                        self.drop_zygote(self.recs[base.rid], kill=True)
                    else:
                        self.drop_base()
                        if attempts > 3:
                            self.finish_without_run(rec, "the executor's base process fails "
                                                    "to start")
                            return
                    continue
                c_end.close()
                sock, buf = s_end, b""
                sock.setblocking(False)
                self.sel.register(sock, selectors.EVENT_READ, "chan")
            run = Run(rid, sock, memfd, timeout_s, buf)
            run.pid = pid
            if pid is not None:
                self.by_pid[pid] = run
            self.runs[sock.fileno()] = run
            rec.status = "running"
            self.scratch[rid] = scratch
            if base is not None:
                if not inplace:
                    self.zygs.move_to_end(base.rid)
                parent = self.recs[base.rid]
                if parent.keep > 0:
                    parent.keep -= 1
                    if parent.keep == 0:
                        self.drop_zygote(parent)
            return

    # -- events -------------------------------------------------------------------------------

    @staticmethod
    def read_frames(sock, buf):
        """Non-blocking read from a channel: (frames, remaining bytes, eof)."""
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return [], buf, False
        except OSError:
            data = b""
        if not data:
            return [], buf, True
        buf += data
        frames = []
        while len(buf) >= 4:
            n = _unpack("<I", buf[:4])[0]
            if n > (1 << 20):  # a garbled stream: drop it
                return frames, b"", False
            if len(buf) < 4 + n:
                break
            try:
                frames.append(_loads(buf[4:4 + n]))
            except ValueError:
                pass
            buf = buf[4 + n:]
        return frames, buf, False

    def on_chan(self, key):
        """A process channel: a running snippet's or a zygote's (the same socket serves both in
        turn, registered once)."""
        run = self.runs.get(key.fd)
        if run is None:
            self.on_zyg(key)
            return
        frames, run.buf, eof = self.read_frames(run.sock, run.buf)
        for m in frames:
            self.on_frame(run, m)
        if eof:
            run.eof = True
            run.eof_at = time.monotonic()
            self.sel.unregister(run.sock)
        self.maybe_finish(run)

    def on_frame(self, run, m):
        op = m.get("op") if isinstance(m, dict) else None
        if op == "start" and run is not None and run.pid is None and isinstance(m.get("pid"),
                                                                                 int):
            run.pid = m["pid"]
            self.by_pid[run.pid] = run
        elif op == "done" and run is not None and run.done is None:
            run.done = m
        elif op == "exit":
            # A zygote reports a child's exit status.
            child = self.by_pid.get(m.get("pid")) or self.find_run(m.get("rid"))
            if child is not None and child.status is None:
                child.status = m.get("status")
                self.maybe_finish(child)

    def relay_exits(self, z):
        """Reads a zygote's (or the base's) channel: the only frames it sends between runs are
        its children's exit reports. Returns whether the channel reached EOF."""
        frames, z.buf, eof = self.read_frames(z.sock, z.buf)
        for m in frames:
            if isinstance(m, dict) and m.get("op") == "exit":
                self.on_frame(None, m)
        return eof

    def on_zyg(self, key):
        z = self.zyg_fds.get(key.fd)
        if z is not None and self.relay_exits(z):
            rec = self.recs.get(z.rid)
            if rec is not None and rec.zyg is z:
                self.drop_zygote(rec)

    def find_run(self, rid):
        for r in self.runs.values():
            if r.rid == rid:
                return r
        return None

    def on_wake(self):
        try:
            while _read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                pid, status = _waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.get(pid)
            if run is not None and run.status is None:
                run.status = status
                self.maybe_finish(run)
            zrid = self.zyg_pids.pop(pid, None)
            if zrid is not None and zrid in self.recs:
                z = self.recs[zrid].zyg
                if z is not None and z.pid == pid:
                    self.drop_zygote(self.recs[zrid])

    def maybe_finish(self, run):
        if run.ended:
            return
        if run.done is not None:
            d = run.done
            self.finish(run, bool(d.get("ok")), d.get("error"), d.get("ms"))
        elif run.eof and run.status is not None:
            rec = self.recs[run.rid]
            self.finish(run, False, explain_status(run.status, rec.timeout_ms))

    def kill(self, run):
        if run.pid is None:
            return
        if not REPORT["pid_ns"] and not self.is_descendant(run.pid):
            return
        try:
            os.kill(run.pid, signal.SIGKILL)
        except OSError:
            pass

    @staticmethod
    def is_descendant(pid):
        me = os.getpid()
        for _ in range(256):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    stat = f.read()
            except OSError:
                return False
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == me:
                return True
            if ppid <= 1:
                return False
            pid = ppid
        return False

    def finish(self, run, ok, error, ms=None):
        if run.ended:
            return
        run.ended = True
        rec = self.recs[run.rid]
        fd = run.sock.fileno()
        self.runs.pop(fd, None)
        if run.pid is not None:
            self.by_pid.pop(run.pid, None)
        completed = run.done is not None
        if completed:
            d = run.done
            head, tail, total = d.get("head", ""), d.get("tail", ""), d.get("total", 0)
        else:
            # Killed or crashed: what it wrote so far is still in the memfd.
            try:
                h, t, total = captured(run.memfd)
            except OSError:
                h, t, total = b"", b"", 0
            head, tail = _b64(h).decode(), _b64(t).decode()
            if total > MAX_OUTPUT and not error:
                error = "output exceeded %d bytes" % MAX_OUTPUT
        keep = (completed and not run.eof and rec.keep != 0 and not rec.released
                and self.max_states > 0 and run.pid is not None)
        if keep:
            z = Zyg(rec.rid, run.pid, run.sock, run.memfd, run.buf)
            rec.zyg = z
            self.zygs[rec.rid] = z
            self.zyg_pids[run.pid] = rec.rid
            self.zyg_fds[fd] = z
            while len(self.zygs) > self.max_states:
                _, old = self.zygs.popitem(last=False)
                self.drop_zygote(self.recs[old.rid])
        else:
            self.close_proc(run.sock, run.memfd, None, registered=not run.eof)
        if ms is None:
            ms = (time.monotonic() - run.t0) * 1000.0
        rec.status, rec.has_state, rec.error = "done", completed, error
        rec.cause = None if completed else error
        scratch = self.scratch.pop(run.rid, None)
        if scratch:
            try:
                os.rmdir(scratch)
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
        self.reply({"rid": rec.rid, "ok": ok, "error": error, "ms": ms, "head": head,
                    "tail": tail, "total": total, "kept": rec.zyg is not None})
        self.after_done(rec)

    def after_done(self, rec):
        for child in rec.waiting:
            self.ready.append(child)
        rec.waiting = []
        if rec.released and rec.zyg is None:
            self.recs.pop(rec.rid, None)

    def close_proc(self, sock, memfd, pid, kill=False, registered=True):
        """Let go of a process: EOF on its channel ends a zygote; `kill` for a stuck one."""
        if registered:
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        if kill and pid is not None and (REPORT["pid_ns"] or self.is_descendant(pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass
        if memfd >= 0:
            try:
                _close(memfd)
            except OSError:
                pass

    def forget_zygote(self, rec):
        """The zygote's process is handed to a run: stop tracking it as a zygote."""
        z = rec.zyg
        rec.zyg = None
        self.zygs.pop(rec.rid, None)
        self.zyg_pids.pop(z.pid, None)
        self.zyg_fds.pop(z.sock.fileno(), None)

    def drop_zygote(self, rec, kill=False):
        z = rec.zyg
        if z is None:
            return
        self.forget_zygote(rec)
        self.close_proc(z.sock, z.memfd, z.pid, kill=kill)

    def check_deadlines(self):
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.ended:
                continue
            if now >= run.deadline:
                self.kill(run)
                rec = self.recs[run.rid]
                self.finish(run, False, "timed out after %d ms (wall clock)" % rec.timeout_ms)
            elif run.eof and run.status is None and run.eof_at and now - run.eof_at > 1.0:
                self.finish(run, False, explain_status(None, 0))

    def next_timeout(self):
        if not self.runs:
            return None
        now = time.monotonic()
        t = min(r.deadline for r in self.runs.values()) - now
        if any(r.eof and r.status is None for r in self.runs.values()):
            t = min(t, 0.2)
        return max(0.0, min(t, 1.0))

    def loop(self):
        beat = time.monotonic()
        while self.stdin_open or self.runs or self.ready:
            if self.runs and time.monotonic() - beat > 1.0:
                beat = time.monotonic()
                self.reply({"op": "alive"})
            while self.ready and len(self.runs) < self.max_running:
                self.start(self.ready.popleft())
            for key, _ in self.sel.select(self.next_timeout()):
                kind = key.data
                if kind == "stdin":
                    self.on_stdin()
                elif kind == "wake":
                    self.on_wake()
                elif kind == "chan":
                    self.on_chan(key)
                elif kind == "base":
                    self.on_base()
            self.on_wake()
            self.check_deadlines()
            self.flush_replies()
        self.flush_replies()


def preload():
    loaded = []
    for name in CFG.get("preload", []):
        try:
            __import__(name)
            loaded.append(name)
        except BaseException:  # noqa: BLE001
            pass
    if "sympy" in loaded and CFG.get("warmup", True):
        # sympy imports submodules and fills caches on first use; do it once here, not in every
        # forked snippet.
        try:
            import sympy
            x = sympy.Symbol("x")
            sympy.solve(x ** 2 - 3 * x + 2, x)
            sympy.simplify((x ** 2 - 1) / (x - 1))
            sympy.factor(x ** 2 - 1)
            sympy.expand((x + 1) ** 3)
            sympy.Rational(3, 4) + sympy.sqrt(2)
        except BaseException:  # noqa: BLE001
            pass
    return loaded


def main():
    sys.dont_write_bytecode = True
    loaded = preload()
    if enter_namespaces():
        pid = _fork()
        if pid:
            # The outer process only waits: the server below is pid 1 of the sandbox.
            _close(0)
            _close(1)
            while True:
                try:
                    _, status = _waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
            _exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 1)
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        mount_proc()
    else:
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    global LANDLOCK, SECCOMP
    LANDLOCK = landlock_ruleset(CFG["scratch"])
    SECCOMP = seccomp_program()
    gc.collect()
    gc.freeze()  # forked snippets then leave the preloaded objects' pages shared
    # Probe the layers a snippet will get, in a throwaway child.
    r, w = os.pipe()
    pid = _fork()
    if pid == 0:
        _close(r)
        info = {}
        try:
            info.update(drop_privileges())
            set_limits(1000)
            try:
                p = _fork()
                if p == 0:
                    _exit(0)
                _waitpid(p, 0)
                info["no_new_procs"] = False
            except OSError:
                info["no_new_procs"] = True
        except BaseException as e:  # noqa: BLE001
            info["error"] = str(e)
        _write(w, _dumps(info).encode())
        _exit(0)
    _close(w)
    chunks = []
    while True:
        b = _read(r, 4096)
        if not b:
            break
        chunks.append(b)
    _close(r)
    _waitpid(pid, 0)
    try:
        REPORT.update(_loads(b"".join(chunks) or b"{}"))
    except ValueError:
        pass
    server = Server()
    server.reply({"op": "ready", "sandbox": REPORT, "preloaded": loaded,
                  "python": sys.version.split()[0]})
    server.flush_replies()
    server.loop()
    for z in list(server.zygs.values()):
        server.drop_zygote(server.recs[z.rid], kill=True)
    server.drop_base()


if __name__ == "__main__":
    main()

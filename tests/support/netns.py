"""Test hosts made of Linux network namespaces: a private switch, hosts, their processes,
link cuts, and the test's own client seat on the network.

- `Lab`: one namespace holding a bridge (the switch, `<prefix>-sw`) and, per host, a
  namespace `<prefix>-<name>` joined to that switch by a veth pair, with an address on the
  private subnet 10.231.0.0/24. Nothing is added to the root namespace (no interface, no
  route): traffic goes only between these namespaces and their loopbacks.
- `Lab.spawn`: a process on a host (`ip netns exec` + its own UTS namespace, so the host
  has its own hostname), in its own process group, logging to a file.
- `Lab.cut` / `Lab.restore`: a partition of one host — iptables DROP of everything the
  host receives on its link, and of everything the others receive from it. Silent, as a
  real partition is: no local error, packets just vanish; TCP retransmits until restored.
- `Lab.client`: a thread pool whose threads live in the `client` host's namespace
  (setns(2) is per thread), so the test itself calls the API and reads the database over
  the same network as everyone else, without a route from the root namespace.
- `Lab.close`: stops every process it started (by process group, then every pid still
  in its namespaces, which only it populated) and deletes its namespaces — also when the
  test failed half-way.

`require_netns()` skips (fails under CLM_REQUIRE_SERVICES=1) without root or `ip`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.231.0"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def require_netns() -> None:
    """Skip (or fail under CLM_REQUIRE_SERVICES=1) where namespaces cannot be made."""
    if os.geteuid() != 0:
        unavailable("network namespaces", "the distributed tests need root (ip netns)")
    for tool in ("ip", "iptables", "unshare", "runuser"):
        if shutil.which(tool) is None:
            unavailable("network namespaces", f"`{tool}` not found")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling thread into namespace `ns` (only this thread)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    port: str  # the switch-side interface (in the switch namespace)


@dataclass
class Proc:
    """A process on a host, in its own process group."""

    host: Host
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, "unshare", "--uts", "--", "sh", "-c",
                 'hostname "$0" && exec "$@"', self.host.name, *self.argv],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the whole group (a Celery worker's main process and its pool)."""
        if self.popen is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int | None:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)  # a paused group cannot act on SIGTERM
            self.signal(signal.SIGTERM)
            self.wait(grace)
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Lab:
    """The switch, the hosts and everything started on them (see the module docstring)."""

    root: Path
    prefix: str = field(default_factory=lambda: f"clm{os.getpid() % 100000}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _pools: list[ThreadPoolExecutor] = field(default_factory=list)
    _cut: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.switch = f"{self.prefix}-sw"
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        self.client_pool = self.pool("client", 16)  # the test's seat on the network

    # -- hosts ----------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        ns, port = f"{self.prefix}-{name}", f"p{n}"
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
             "eth0", "netns", ns)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip = f"{SUBNET}.{n}"
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        host = Host(name, ns, ip, port)
        self.hosts[name] = host
        return host

    def host(self, name: str) -> Host:
        return self.hosts.get(name) or self.add_host(name)

    # -- processes ------------------------------------------------------------------------
    def spawn(self, host: Host, name: str, argv: Sequence[str],
              env: Mapping[str, str]) -> Proc:
        proc = Proc(host, name, list(argv), dict(env),
                    self.root / "logs" / f"{host.name}-{name}.log").start()
        with self._lock:
            self.procs.append(proc)
        return proc

    def netns_exec(self, host: Host, *argv: str, check: bool = True,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ip", "netns", "exec", host.ns, *argv], capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv[0]} on {host.name} failed ({result.returncode}): "
                               f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result

    # -- the test's client seat -----------------------------------------------------------
    def pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        host = self.host(name)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ns-{name}",
                                  initializer=enter_netns, initargs=(host.ns,))
        self._pools.append(pool)
        return pool

    def client(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the client host (its sockets are on the lab's network)."""
        return self.client_pool.submit(fn, *args, **kwargs).result()

    # -- partitions -----------------------------------------------------------------------
    def cut(self, host: Host) -> None:
        """Partition `host`: it receives nothing, and nobody receives anything from it."""
        self.netns_exec(host, "iptables", "-I", "INPUT", "-i", "eth0", "-j", "DROP")
        for other in self.hosts.values():
            if other is not host:
                self.netns_exec(other, "iptables", "-I", "INPUT", "-s", host.ip, "-j", "DROP")
        self._cut.add(host.name)

    def restore(self, host: Host) -> None:
        self.netns_exec(host, "iptables", "-D", "INPUT", "-i", "eth0", "-j", "DROP",
                        check=False)
        for other in self.hosts.values():
            if other is not host:
                self.netns_exec(other, "iptables", "-D", "INPUT", "-s", host.ip, "-j",
                                "DROP", check=False)
        self._cut.discard(host.name)

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        for host_name in list(self._cut):
            with suppress(Exception):
                self.restore(self.hosts[host_name])
        for proc in reversed(self.procs):
            with suppress(Exception):
                proc.stop(grace=5)
        for cleanup in reversed(self.cleanups):
            with suppress(Exception):
                cleanup()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for ns in [h.ns for h in self.hosts.values()] + [self.switch]:
            # Whatever still runs in a namespace of ours was started by us (daemons that
            # left their process group, e.g. the postmaster): end it by pid, then delete.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)


def logs_matching(procs: Sequence[Proc], needle: str) -> list[str]:
    return [line for p in procs for line in p.log_text().splitlines() if needle in line]

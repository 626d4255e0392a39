"""Connecting to Ray, for the two things that run on it: suites (`nncert bench --backend
ray`, verifier/bench/ray_backend.py) and one search's workers (`nncert verify --workers N
--backend ray`, verifier/shards_ray.py).

Ray is optional (`pip install nncert[ray]`): nothing here imports it at module level.
A process holds one Ray connection; `connect` uses the one it finds (a caller's own
`ray.init`) and refuses an address that names another cluster, and otherwise connects
to `address` or starts a local cluster. A process that ends by `os._exit` (`nncert
verify`) stops a local cluster it started with `shutdown_local`: Ray's own exit handler
never runs there.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Optional

__all__ = ["ray_available", "unreachable", "connect", "shutdown_local", "ClusterUnreachable", "OtherCluster",
           "INSTALL_HINT", "SHUTDOWN_S"]

INSTALL_HINT = "pip install 'nncert[ray]'"

# What `ray.shutdown()` of a local cluster takes, with room: about 1.6 s measured on two
# busy cores (up to a second's grace each for the raylet and the GCS server to stop).
SHUTDOWN_S = 2.0


class ClusterUnreachable(ConnectionError):
    """`connect` found no cluster at the address it was given (`auto` with none running):
    the user's input, unlike a ConnectionError from Ray later on (an internal error)."""


class OtherCluster(ValueError):
    """`connect` was given an address while this process is connected to another cluster."""


def ray_available() -> bool:
    """Whether the optional Ray package can be imported."""
    try:
        import ray  # noqa: F401  (optional dependency, probed on purpose)
    except ImportError:
        return False
    return True


def unreachable(address: str, timeout_s: float = 5.0) -> str:
    """Why a cluster address cannot be used ('' when it can be tried). A `host:port` (or
    `ray://host:port`) must accept a TCP connection within `timeout_s`: `ray.init` itself
    would retry an unreachable address for minutes, printing only its own log lines.
    Other forms (`auto`, `local`) are left to Ray."""
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return "" if address in ("auto", "local") else f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}"
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s) as sock:
            # Ray's GCS (and its client server) speak gRPC: to HTTP/2's client preface they
            # answer with a SETTINGS frame (type 4, the frame header's fourth byte). Anything
            # else listening there would leave ray.init retrying until the run's time is up.
            sock.settimeout(timeout_s)
            sock.sendall(_HTTP2_PREFACE)
            head = _read_head(sock, 4)
    except OSError as exc:
        return f"no Ray cluster answers at {address} ({exc.strerror or exc})"
    if len(head) < 4 or head[3] != 4:
        return f"something listens at {address}, but not a Ray cluster (no gRPC answer)"
    return ""


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _read_head(sock: socket.socket, n: int) -> bytes:
    """The first `n` bytes the peer sends, or fewer if it closes first: one recv may
    return any part of what was sent (TCP is a stream; a frame header can arrive split)."""
    head = b""
    while len(head) < n:
        chunk = sock.recv(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def connect(address: Optional[str], cpus: int) -> bool:
    """Make sure this process is connected to Ray: to the connection it already has (an
    `address` naming another cluster is then a ValueError), to the cluster at `address`,
    or to a local cluster of `cpus` CPUs started here when `address` is None. Returns
    whether this call connected: the caller may then shut it down when done (the suite
    runner does; a search pool leaves it up for the process's next pool, and `nncert
    verify` stops it before it exits: `shutdown_local`). A cluster that cannot be
    reached at `address` raises ClusterUnreachable, an address naming another cluster
    than this process's OtherCluster."""
    import ray  # lazy: ray is an optional extra (pip install nncert[ray]); see the module docstring

    if ray.is_initialized():
        if address is not None:
            _same_cluster(ray, address)
        return False
    if address is None:
        # address="local": always a new cluster for this process, never one that RAY_ADDRESS or a
        # `ray start` on this machine names (ray.init would join it, and refuse num_cpus there).
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        return True
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ClusterUnreachable(str(exc)) from exc
    return True


def _same_cluster(ray: Any, address: str) -> None:
    """A process already connected to Ray (a caller's `ray.init`) keeps that connection:
    Ray allows one per process. Running on it when `address` names another cluster would
    put the work where the user did not ask, silently; refuse instead. `auto` and the
    connected cluster's own GCS address agree; a Ray Client address (ray://) cannot be
    matched against the GCS address and is refused too."""
    if address == "auto":
        return
    try:
        current = ray.get_runtime_context().gcs_address
    except Exception:  # a Ray Client connection has no GCS address on the driver
        current = None
    host, _, port = address.rpartition(":")
    same = current is not None and not address.startswith("ray://") and current.rpartition(":")[2] == port \
        and _resolve(host) == _resolve(current.rpartition(":")[0])
    if not same:
        raise OtherCluster(f"Ray is already initialised in this process (cluster {current or 'unknown'}); "
                         f"address {address!r} names another: call ray.shutdown() first or leave address unset")


def _resolve(host: str) -> str:
    """A host's IPv4 address, so that localhost and 127.0.0.1 compare equal."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def shutdown_local(deadline: float) -> str:
    """Stop the local cluster this process started (`connect(None, ...)`) by `deadline`
    (time.monotonic()), in a process about to end by `os._exit`, where Ray's exit
    handler never runs and the cluster's dashboard and runtime-env agents would stay.

    With `SHUTDOWN_S` left, `ray.shutdown()` runs (in a thread waited for until the
    deadline at most); then the Ray processes this process had started that are still
    there are killed: Ray 2.40's dashboard agent can outlive its raylet (it hangs sending
    the raylet's last log lines to a GCS server that is gone). With less time left, or a
    shutdown that has not ended by the deadline, they are killed at once. Returns '' when
    `ray.shutdown()` ran to its end (or no cluster was up), else why it did not.
    """
    ray = sys.modules.get("ray")
    if ray is None:
        return ""
    processes = _ray_processes()
    left = deadline - time.monotonic()
    why = ""
    if not ray.is_initialized():
        pass   # no cluster, or one still starting (the time ran out in ray.init): what is up is killed
    elif left < SHUTDOWN_S:
        why = (f"the local Ray cluster was killed, not shut down: {max(left, 0.0):.1f} s of the run's time were "
               f"left, and ray.shutdown() takes about {SHUTDOWN_S:.0f} s")
    else:
        stopping = threading.Thread(target=ray.shutdown, name="nncert-ray-shutdown", daemon=True)
        stopping.start()
        stopping.join(None if math.isinf(deadline) else max(0.0, deadline - time.monotonic()))
        if stopping.is_alive():
            why = "the local Ray cluster was killed: ray.shutdown() had not ended by the run's deadline"
    for pid, started in processes.items():
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:   # ended meanwhile
                pass
    return why


def _ray_processes() -> dict[int, int]:
    """The Ray processes below this one (its local cluster: raylet, GCS server, agents,
    actors), as pid -> start time, so that a pid reused later is not taken for one of
    them. Linux only (/proc): elsewhere none, and `ray.shutdown()` alone stops them."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        ppid = _stat_field(int(entry.name), 1) if entry.name.isdigit() else None
        if ppid is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    ray_dir = os.path.dirname(sys.modules["ray"].__file__)
    found: dict[int, int] = {}
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        started = _start_time(pid)
        if started is not None and _is_ray(pid, ray_dir):
            found[pid] = started
    return found


def _is_ray(pid: int, ray_dir: str) -> bool:
    """Whether process `pid` runs Ray's code: a program or script of the ray package, or
    a Ray worker, which renames itself `ray::...`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("ray::") or ray_dir in cmdline


def _start_time(pid: int) -> Optional[int]:
    return _stat_field(pid, 19)


def _stat_field(pid: int, i: int) -> Optional[int]:
    """Field `i` after the command name of /proc/PID/stat (1: the parent, 19: the start
    time), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[i]) if len(fields) > i else None

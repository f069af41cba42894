"""A Ray cluster of several nodes on this machine, started with ``ray start`` as an operator starts one,
for tests that need a real cluster: a head (``ray start --head``) and nodes that join it (``ray start
--address``), each with CPUs of its own, a custom resource of its own name (so that a test can tell
where something ran) and a temporary folder of its own, all under one short folder (Unix socket paths
are limited to about 107 characters, so not under pytest's long ``tmp_path``).

The cluster has a token of its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH`` in its folder):
``LocalCluster.env`` is the environment a driver (``hbdnet batch --ray-address``) needs to join it, and
``~/.ray/auth_token`` is neither read nor written.

Stopping. Each node's ``ray start`` runs in a new session (``setsid``), and every process it starts
(GCS, raylet, agents, and the workers the raylet forks later) keeps that session id, so a node's
processes are found by it (and, to be sure, by their command line naming the node's folder) and
killed by PID. ``ray stop`` is never used: it stops every Ray process of the machine, other users'
clusters included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from serving.testing.servers import free_port

# Node deaths noticed in about 3 s instead of Ray's default 30 s or so (health checks of the GCS).
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def ray_cli() -> str | None:
    """The ``ray`` command beside this Python (its virtual environment), else on the PATH; None without."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else shutil.which("ray")


@dataclass
class RayNode:
    """A node of the cluster: the custom resource ``name`` (1 of it), ``cpus`` logical CPUs, its own
    temporary folder, and the session id of its ``ray start``."""

    name: str
    cpus: int
    temp_dir: Path
    session: int
    node_id: str = ""
    killed: bool = False


class LocalCluster:
    """A head and joined nodes on this machine; see the module docstring. Use as a context manager."""

    def __init__(self, root: Path | None = None, *, fast_health_checks: bool = True):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="hbdnet-ray-", dir=_short_tmp()))
        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                   # A driver that started a runtime of its own (a bug) would leave it in this folder, not /tmp/ray.
                   RAY_TMPDIR=str(self.root / "local"))
        self.env = env
        self._node_env = dict(env, **(FAST_HEALTH_CHECKS if fast_health_checks else {}))
        self.nodes: dict[str, RayNode] = {}
        self._dead: list[RayNode] = []  # nodes killed and started again under the same name
        self.address = ""

    def start_head(self, name: str, cpus: int) -> RayNode:
        port = free_port()
        node = self._start(name, cpus, ["--head", "--port", str(port), "--include-dashboard", "false",
                                        "--ray-client-server-port", str(free_port())])
        # The address as Ray published it (the node's IP, which Ray chose), in the head's folder.
        self.address = (node.temp_dir / "ray_current_cluster").read_text().strip()
        return node

    def add_node(self, name: str, cpus: int) -> RayNode:
        if not self.address:
            raise RuntimeError("start the head first")
        return self._start(name, cpus, ["--address", self.address])

    def ensure_node(self, name: str) -> RayNode:
        """Node ``name`` up: started again (same CPUs, a new folder) if ``kill`` took it down."""
        node = self.nodes[name]
        if node.killed:
            self._dead.append(node)
            self.add_node(name, node.cpus)
            self.wait_nodes()
        return self.nodes[name]

    def _start(self, name: str, cpus: int, args: list[str]) -> RayNode:
        cli = ray_cli()
        if cli is None:
            raise RuntimeError("the ray command is not installed")
        temp_dir = self.root / f"{name}{len(self._dead) or ''}"
        cmd = [cli, "start", *args, "--num-cpus", str(cpus), "--resources", json.dumps({name: 1}),
               "--temp-dir", str(temp_dir), "--disable-usage-stats", "--object-store-memory", str(80 * 2**20),
               "--dashboard-agent-listen-port", str(free_port())]
        proc = subprocess.Popen(cmd, env=self._node_env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        node = RayNode(name, cpus, temp_dir, proc.pid)
        self.nodes[name] = node  # known before it is up, so that stop() finds a half-started node too
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start for node {name} failed ({proc.returncode}):\n{out[-3000:]}")
        return node

    def wait_nodes(self, timeout: float = 60.0) -> dict[str, str]:
        """Until every node is alive in the cluster; then each node's Ray node id, by name (also set on
        ``self.nodes``). Asked by a short driver process, so that the caller's process never joins Ray."""
        script = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                  "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))")
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True,
                                 timeout=timeout, check=True).stdout
            ids = {name: node_id for node_id, resources in json.loads(out.strip().splitlines()[-1])
                   for name in self.nodes if resources.get(name)}
            if len(ids) == len(self.nodes):
                for name, node_id in ids.items():
                    self.nodes[name].node_id = node_id
                return ids
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes up: {sorted(ids)}, expected {sorted(self.nodes)}")
            time.sleep(0.5)

    def pids(self, name: str) -> list[int]:
        """The processes of node ``name``: its session's, and any naming its temporary folder."""
        return _pids_of([self.nodes[name]])

    def worker_pids(self, name: str) -> list[int]:
        """The processes of node ``name`` that run the engine's actors (Ray titles them ``ray::RayWindowWorker``)."""
        return [pid for pid in self.pids(name) if _cmdline(pid).startswith(b"ray::RayWindowWorker")]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process of node ``name`` (a machine lost: SIGKILL); the PIDs signalled."""
        pids = self.pids(name)
        for pid in pids:
            _signal(pid, sig)
        self.nodes[name].killed = sig == signal.SIGKILL
        return pids

    def alive(self) -> list[int]:
        """Every process of the cluster that is still there (zombies are gone, only not yet reaped), and any
        other naming its folder."""
        return [pid for pid in _pids_of([*self._dead, *self.nodes.values()], self.root)
                if _state(pid) not in ("Z", "X", "")]

    def stop(self, grace_s: float = 2.0) -> list[int]:
        """Stop every process of every node (SIGTERM, then SIGKILL after ``grace_s``: a raylet may ignore
        SIGTERM), then remove the folder. Returns the PIDs still there after SIGKILL (none, normally)."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            for pid in self.alive():
                _signal(pid, sig)
            deadline = time.monotonic() + wait_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        left = self.alive()
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _short_tmp() -> str:
    """The system's temporary folder when its path is short, else /tmp (socket paths must stay short)."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= 20 else "/tmp"


def _pids_of(nodes: list[RayNode], folder: Path | None = None) -> list[int]:
    """The processes of ``nodes``: in the session of their ``ray start``, or naming their folders (or
    ``folder``)."""
    sessions = {n.session for n in nodes}
    markers = [str(f).encode() + b"/" for f in [*(n.temp_dir for n in nodes), *([folder] if folder else [])]]
    # A session id is its leader's PID, which may be reused once ``ray start`` has exited: only Ray's own
    # processes (its binaries and scripts, ``ray::`` workers) count as the session's.
    return [pid for pid, session, cmdline in _processes() if pid != os.getpid()
            and ((session in sessions and b"ray" in cmdline) or any(m in cmdline for m in markers))]


def _processes() -> list[tuple[int, int, bytes]]:
    """(pid, session id, command line) of every process this user can see (Linux ``/proc``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            out.append((int(entry), int(fields[3]), _cmdline(int(entry))))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

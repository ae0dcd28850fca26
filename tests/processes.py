"""Processes the tests and the benchmarks start: free loopback ports, polls with deadlines, redis-server.

Every process is waited for with a deadline and stopped by the pid that was started. Nothing here
imports flagmetrics or prometheus_client, so the benchmark orchestrator can use it before a measuring
process sets PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import redis

__all__ = [
    "LOOPBACK",
    "REPO",
    "RedisCluster",
    "RedisServer",
    "children_of",
    "clean_environ",
    "free_cluster_port",
    "free_port",
    "pid_alive",
    "stop_process",
    "wait_for",
]

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; raise `TimeoutError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:  # the condition may fail while the thing starts
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} (last error: {last_error!r})")


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10.0) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL after `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in task.read_text().split()]
    return found


def pid_alive(pid: int) -> bool:
    """Whether a pid names a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without FLAGMETRICS_* and multiprocess variables, plus `extra`.

    The repository is on PYTHONPATH, so a child can import `examples`, `tests` and `benchmarks`.
    """
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLAGMETRICS_", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"))
    }
    environ["PYTHONPATH"] = str(REPO)
    environ.update(extra)
    return environ


@dataclass
class RedisServer:
    """A redis-server of our own on a free loopback port, stopped by its pid.

    With `persist` (the tests' default) every write goes to the append-only file, so a restart after
    a kill keeps the data, as a real deployment would; without it (the benchmarks) nothing is saved.
    """

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    persist: bool = True

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous redis-py client of database 0."""
        import redis  # here, so that a benchmark orchestrator never loads it

        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2)

    def command(self, *args: str) -> bytes:
        """Send one command and return its raw reply (for a bulk string, its payload)."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as sock:
            payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            sock.sendall(payload.encode())
            reply = sock.recv(1 << 16)
            if not reply.startswith(b"$"):
                return reply
            header, _, rest = reply.partition(b"\r\n")
            need = int(header[1:]) + 2
            while len(rest) < need:
                more = sock.recv(1 << 16)
                if not more:
                    break
                rest += more
            return rest[: need - 2]

    def alive(self) -> bool:
        """Whether the process we started is still running."""
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        """Whether the server answers PING."""
        return self.command("PING").startswith(b"+PONG")

    def start(self) -> None:
        """Start the server (again, on the same port and data directory) and wait until it answers."""
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if self.persist else ("--appendonly", "no")
        args = [
            self.binary,
            *("--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.directory), "--save", ""),
            *persistence,
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.ping, 10, f"redis-server on port {self.port}")
        except BaseException:  # a test's failure included: never leave a server that did not answer
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server gracefully (thawing it first if it was frozen)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            stop_process(self.proc)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang instead of failing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def version(self) -> str:
        """The server's version, from INFO."""
        for line in self.command("INFO", "server").decode().splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
        return "?"


def free_cluster_port() -> int:
    """A loopback port below 55536 that is free, and whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port >= 55536:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free port whose cluster bus port is free too")


@dataclass
class RedisCluster:
    """A Redis Cluster of our own on loopback: `masters` masters, each with `replicas` replicas.

    Each node is a `RedisServer` started with `--cluster-enabled yes`; `redis-cli --cluster create`
    joins them, and `start` returns once every node reports `cluster_state:ok` and every replica is
    in sync. A short node timeout makes a failover take a few seconds instead of the default 15.
    """

    binary: str
    cli: str
    directory: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL naming every node, so that a client finds the cluster while any one node is down."""
        return "redis://" + ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes) + "/0"

    def start(self, timeout_s: float = 60) -> None:
        """Start every node, create the cluster and wait until it is healthy."""
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                port = free_cluster_port()
                directory = self.directory / str(port)
                directory.mkdir(parents=True)
                node = RedisServer(
                    binary=self.binary,
                    directory=directory,
                    port=port,
                    persist=False,
                    extra_args=(
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                    ),
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        """Every live node sees the whole cluster up, and every replica is in sync with its master."""
        live = [node for node in self.nodes if node.alive()]
        for node in live:
            if b"cluster_state:ok" not in node.command("CLUSTER", "INFO"):
                return False
            info = node.command("INFO", "replication")
            if b"role:slave" in info and b"master_link_status:up" not in info:
                return False
        return bool(live)

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Wait until `healthy()`."""
        wait_for(self.healthy, timeout_s, "the Redis Cluster to be healthy", interval_s=0.1)

    def master_nodes(self) -> list[RedisServer]:
        """The nodes that are masters now."""
        return [
            node for node in self.nodes if node.proc is not None and node.proc.poll() is None and self._is_master(node)
        ]

    def _is_master(self, node: RedisServer) -> bool:
        return b"role:master" in node.command("INFO", "replication")

    def stop(self) -> None:
        """Stop every node by its pid."""
        for node in self.nodes:
            node.stop()


@dataclass
class RedisSentinelNode(RedisServer):
    """A redis-server in sentinel mode on a free loopback port, monitoring one master, stopped by its pid.

    Its configuration file is written in `directory` (a sentinel rewrites it as it learns the topology,
    so it must be writable) and its log goes beside it.
    """

    service: str = "mymaster"
    master_port: int = 0
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000

    @property
    def config(self) -> Path:
        """The configuration file the sentinel reads and rewrites."""
        return self.directory / "sentinel.conf"

    def start(self) -> None:
        """Write the configuration (the first time), start the sentinel and wait until it answers."""
        if not self.config.exists():
            self.config.write_text(
                f"port {self.port}\n"
                f"bind {LOOPBACK}\n"
                f"dir {self.directory}\n"
                f"logfile {self.directory / 'sentinel.log'}\n"
                f"sentinel monitor {self.service} {LOOPBACK} {self.master_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            )
        self.proc = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(self.ping, 10, f"redis sentinel on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def master_address(self) -> tuple[str, int] | None:
        """The master this sentinel names for its service now (None while it names none)."""
        client = self.client()
        try:
            reply = client.sentinel_get_master_addr_by_name(self.service)
        finally:
            client.close()
        if not isinstance(reply, tuple):
            return None
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else host, int(port))


@dataclass
class RedisSentinels:
    """A master, its replicas and the sentinels monitoring them, on free loopback ports, each stopped by its pid.

    `start` returns once every replica is in sync with the master and every sentinel sees the master
    with every replica and every other sentinel, so that a failover can start as soon as the master
    dies. A short `down_after_ms` makes the sentinels notice a dead master within a second or two.
    """

    binary: str
    directory: Path
    service: str = "mymaster"
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    master: RedisServer | None = None
    replica_nodes: list[RedisServer] = field(default_factory=list)
    sentinel_nodes: list[RedisSentinelNode] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        """The sentinels as `host:port,host:port`, as FLAGMETRICS_REDIS_SENTINEL takes them."""
        return ",".join(f"{LOOPBACK}:{node.port}" for node in self.sentinel_nodes)

    @property
    def servers(self) -> list[RedisServer]:
        """The master and its replicas, as started (the master first)."""
        return [*([self.master] if self.master is not None else []), *self.replica_nodes]

    def start(self, timeout_s: float = 30) -> None:
        """Start the master, the replicas and the sentinels, and wait until the sentinels see them all."""
        try:
            self.master = self._server("master")
            self.master.start()
            for n in range(self.replicas):
                replica = self._server(f"replica-{n}", "--replicaof", LOOPBACK, str(self.master.port))
                self.replica_nodes.append(replica)
                replica.start()
            for n in range(self.sentinels):
                directory = self.directory / f"sentinel-{n}"
                directory.mkdir(parents=True)
                node = RedisSentinelNode(
                    binary=self.binary,
                    directory=directory,
                    service=self.service,
                    master_port=self.master.port,
                    quorum=self.sentinels // 2 + 1,
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                )
                self.sentinel_nodes.append(node)
                node.start()
            wait_for(self.ready, timeout_s, "the replicas to sync and the sentinels to see them", interval_s=0.1)
        except BaseException:
            self.stop()
            raise

    def _server(self, name: str, *extra_args: str) -> RedisServer:
        directory = self.directory / name
        directory.mkdir(parents=True)
        return RedisServer(binary=self.binary, directory=directory, persist=False, extra_args=extra_args)

    def ready(self) -> bool:
        """Every replica in sync, and every sentinel sees the master up with every replica and sentinel."""
        for replica in self.replica_nodes:
            if b"master_link_status:up" not in replica.command("INFO", "replication"):
                return False
        for node in self.sentinel_nodes:
            client = node.client()
            try:
                state = client.sentinel_master(self.service)
                replicas = client.sentinel_slaves(self.service)
            finally:
                client.close()
            if not isinstance(state, dict) or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                return False
            if state["num-other-sentinels"] != self.sentinels - 1:
                return False
            if len([r for r in replicas if not (r["is_sdown"] or r["is_odown"])]) != self.replicas:
                return False
        return True

    def master_port(self) -> int | None:
        """The port of the master every live sentinel names now, or None while they disagree or name none."""
        named = {node.master_address() for node in self.sentinel_nodes if node.alive()}
        if len(named) != 1:
            return None
        address = named.pop()
        return address[1] if address is not None else None

    def server_on(self, port: int) -> RedisServer:
        """The master or replica we started on `port`."""
        return next(server for server in self.servers if server.port == port)

    def stop(self) -> None:
        """Stop every sentinel, replica and master by its pid."""
        for node in [*self.sentinel_nodes, *reversed(self.servers)]:
            node.stop()


__all__ += ["RedisSentinelNode", "RedisSentinels"]

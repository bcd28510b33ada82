"""Several server processes on one port (``server.workers``), for a gateway whose nodes are all
remote (``openai`` engine): one Python process is bound by one core, the kernel spreads
connections over N processes that each bind the port with ``SO_REUSEPORT``.

Each worker is a forked copy with its own event loop, balancer and connection pools; nothing is
shared at run time, so the configuration is adapted to stay correct when split N ways:

* each node's ``max_batch_size`` and ``max_queue`` and the per-key rate limit are divided by N
  (rounded up), so together the workers still respect them;
* cache-aware routing places a new prefix by a hash of its start (``cache_aware.placement =
  "prefix_hash"``), so every worker sends the same prefix to the same node;
* in-process engines are refused (each worker would load its own copy of the model), and so is
  a port of 0 being resolved per worker: the parent reserves the port first.

The parent forwards SIGINT/SIGTERM to the workers, waits for them and prints ``READY <port>`` once
all of them listen. A worker that dies takes the others down (exit status 1): restarting is the
service manager's job, and a half-sized gateway should not run on unnoticed.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from blueprint.errors import InvalidRequestError

if TYPE_CHECKING:  # the server package must not import the daemon's settings (jobs, chain)
    from blueprint.config import Settings

log = structlog.get_logger(__name__)

#: One worker's serving function: serve these settings, call ``ready`` once listening.
ServeOne = Callable[["Settings", Callable[[], None]], None]


def split_settings(settings: Settings, workers: int, port: int) -> Settings:
    """The settings one of ``workers`` processes runs with (see the module docstring)."""
    nodes = [node.model_copy(update={"max_batch_size": math.ceil(node.max_batch_size / workers),
                                     "max_queue": math.ceil(node.max_queue / workers)})
             for node in settings.nodes]
    server = settings.server.model_copy(update={"port": port})
    if server.rate_limit_per_minute is not None:
        server = server.model_copy(update={
            "rate_limit_per_minute": server.rate_limit_per_minute / workers,
            "rate_limit_burst": (math.ceil(server.rate_limit_burst / workers)
                                 if server.rate_limit_burst is not None else None)})
    balancer = settings.balancer
    if balancer.cache_aware.placement == "least_loaded":
        balancer = balancer.model_copy(update={
            "cache_aware": balancer.cache_aware.model_copy(update={"placement": "prefix_hash"})})
    return settings.model_copy(update={"nodes": nodes, "server": server, "balancer": balancer})


def check_workers(settings: Settings) -> None:
    local = [node.node_name for node in settings.nodes if node.engine != "openai"]
    if local:
        raise InvalidRequestError(
            f"server.workers = {settings.server.workers} needs remote (openai) nodes only: "
            f"{', '.join(local)} would load its model once per worker. Use workers = 1.",
            code="workers_need_remote_nodes")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: fixes the port (0 picks one) for the workers
    without taking connections itself (the kernel only hands them to listening sockets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _ready(fd: int) -> None:
    """Tell the parent this worker listens (a closed pipe end with no byte: it died first)."""
    os.write(fd, b".")
    os.close(fd)


def serve_workers(settings: Settings, serve_one: ServeOne) -> int:
    """Fork ``settings.server.workers`` workers running ``serve_one``; return the exit status."""
    workers = settings.server.workers
    check_workers(settings)
    reserved = reserve_port(settings.server.host, settings.server.port)
    port = reserved.getsockname()[1]
    child_settings = split_settings(settings, workers, port)
    ready_r, ready_w = os.pipe()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            reserved.close()
            status = 0
            try:
                structlog.contextvars.bind_contextvars(worker=index)
                serve_one(child_settings, lambda: _ready(ready_w))
            except BaseException as exc:  # a worker reports and exits; the parent decides
                log.error("worker_failed", worker=index, error=str(exc))
                status = 1
            finally:
                os._exit(status)
        children.append(pid)
    os.close(ready_w)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    with os.fdopen(ready_r, "rb") as ready:
        started = len(ready.read(workers))
    reserved.close()
    status = 0
    if started == workers:
        log.info("http api workers listening", workers=workers, port=port)
        print(f"READY {port}", flush=True)
    else:
        log.error("workers_failed_to_start", started=started, workers=workers)
        status = 1
        forward(signal.SIGTERM, None)
    alive = set(children)
    while alive:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
        if code != 0 or not stopping:
            status = 1
            if not stopping:
                log.error("worker_exited", pid=pid, status=code, note="stopping the other workers")
                forward(signal.SIGTERM, None)
    sys.stdout.flush()
    return status

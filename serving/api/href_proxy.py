"""The forward proxy every HTTP request of GDAL's goes through in ``hbdnet serve``: the href policy
(``href_policy``) applied to each connection, redirects included.

GDAL (libcurl) follows redirects itself and resolves names again when it connects, so checking the
href before the job is not enough: a public server may answer ``302 Location: http://127.0.0.1/...``,
or its name may resolve elsewhere a moment later. Pointed at this proxy (``GDAL_HTTP_PROXY``), GDAL
cannot connect anywhere but through it, and the proxy connects only to addresses the policy allows,
the ones it resolved itself. A refused host gets 403 before any byte goes to it.

It runs in a process of its own (``python -m serving.api.href_proxy``), not in a thread of the
server: GDAL holds the server's GIL during some of its reads, so a proxy thread there could not
answer the very request GDAL waits on.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import threading
from urllib.parse import urlsplit

from serving.api.href_policy import HrefPolicy, HrefRefused, allowed_addresses

MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT_S = 10
IDLE_TIMEOUT_S = 120  # no byte either way for this long: the connection is closed


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > MAX_HEAD:
            return None
        data += chunk
    return data


def _answer(sock: socket.socket, status: str) -> None:
    sock.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


def _connect(host: str, port: int, policy: HrefPolicy) -> socket.socket:
    """A connection to an address of ``host`` the policy allows (``HrefRefused``, ``OSError``)."""
    error: OSError | None = None
    for address in allowed_addresses(host, port, policy):
        try:
            return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            error = exc
    raise error or OSError("no address")


def _pipe(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    b.settimeout(None)
    while True:
        ready, _, _ = select.select([a, b], [], [], IDLE_TIMEOUT_S)
        if not ready:
            return
        for src in ready:
            data = src.recv(65536)
            if not data:
                return
            (b if src is a else a).sendall(data)


def handle(client: socket.socket, policy: HrefPolicy) -> None:
    """One client connection: a CONNECT tunnel (https) or one plain http request, forwarded."""
    upstream: socket.socket | None = None
    try:
        client.settimeout(IDLE_TIMEOUT_S)
        head = _read_head(client)
        if head is None:
            return
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = _connect(host, int(port), policy)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(client, upstream)
            return
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            _answer(client, "400 Bad Request")
            return
        upstream = _connect(url.hostname, url.port or 80, policy)
        path = url.path or "/"
        headers = [h for h in rest.split(b"\r\n") if h and not h.lower().startswith((b"proxy-", b"connection:"))]
        upstream.sendall(f"{method} {path}{'?' + url.query if url.query else ''} {version}\r\n".encode()
                         + b"\r\n".join(headers) + b"\r\nConnection: close\r\n\r\n")
        _pipe(client, upstream)
    except HrefRefused:
        _answer(client, "403 Forbidden")
    except (OSError, ValueError):
        try:
            _answer(client, "502 Bad Gateway")
        except OSError:
            pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()


def serve(policy: HrefPolicy, port: int = 0) -> None:
    """Listen on loopback, print the port on stdout (one line), serve until killed or until stdin
    closes (the server that started it has gone, even by ``kill -9``)."""
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    listener = socket.create_server(("127.0.0.1", port), backlog=256)
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client, policy), daemon=True).start()


def start(policy: HrefPolicy) -> tuple[subprocess.Popen, str]:
    """The proxy in a process of its own for ``policy``: the process and its ``host:port``."""
    args = [sys.executable, "-m", "serving.api.href_proxy"]
    args += ["--allow-private"] if policy.allow_private else []
    for host in sorted(policy.allow_hosts):
        args += ["--allow-host", host]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError("the href proxy did not start")
    return proc, f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-private", action="store_true")
    parser.add_argument("--allow-host", action="append", default=[])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(HrefPolicy(args.allow_private, frozenset(h.strip("[]").lower() for h in args.allow_host)), args.port)


if __name__ == "__main__":
    sys.exit(main())

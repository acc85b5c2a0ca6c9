#!/usr/bin/env python
"""What one ``socket.send`` costs the server, apart from any Python: the floor under a
dashboard flush (issue 22).

N loopback TCP connections to a reader process (epoll, reads and discards), then five
rounds of one send of SIZE bytes to each, timed; prints µs per send and the system time.
Loopback only, bounded (five rounds, the reader exits after 30 s or at EOF).

    python benchmarks/send_cost.py 5000 12000
"""

from __future__ import annotations

import os
import resource
import select
import socket
import sys
import time


def main() -> int:
    n, size = int(sys.argv[1]), int(sys.argv[2])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8192)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the reader: every connection, read and discarded
        ep = select.epoll()
        conns = {}
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            c.setblocking(False)
            ep.register(c.fileno(), select.EPOLLIN)
            conns[c.fileno()] = c
        end = time.time() + 30
        while time.time() < end:
            for fd, _ in ep.poll(1):
                try:
                    if not conns[fd].recv(1 << 20):
                        os._exit(0)
                except BlockingIOError:
                    pass
        os._exit(0)
    socks = []
    for _ in range(n):
        s, _ = listener.accept()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Tornado's websockets
        socks.append(s)
    frame = b"x" * size
    time.sleep(0.5)
    for _ in range(5):
        t0, c0 = time.perf_counter(), os.times()
        for s in socks:
            s.send(frame)
        dt, c1 = time.perf_counter() - t0, os.times()
        print(f"{n} sends of {size} B: {dt * 1000:.1f} ms = {dt / n * 1e6:.1f} µs/send "
              f"(user {c1.user - c0.user:.3f} s, system {c1.system - c0.system:.3f} s)")
        time.sleep(0.3)
    for s in socks:
        s.close()
    os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

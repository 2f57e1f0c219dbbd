"""A hand-made client of the broker's wire protocol, to play a forged or misbehaving peer in the tests.

Standard library only, so that it runs as any Unix user under the system's python3:

    setpriv --reuid=bob --regid=bob --init-groups --reset-env /usr/bin/python3 wire.py SOCKET '{"op": "hello"}'

It sends the request (one JSON line, or the raw text given with ``--raw``), then prints every line the broker
answers, as it came, until the broker closes the connection or sends its final ``result`` / ``error`` line.
A connection that fails prints ``{"connect_error": "...", "errno": N}`` and exits with 3.

With ``--session`` it is one long-lived client instead: each request line read from stdin is sent on a connection
of its own and the final answer printed as one line, until stdin ends. The broker ties a kernel to the process that
started it (it ends when that client dies), so a test that keeps kernels running asks through one of these.
"""

from __future__ import annotations

import json
import socket
import sys


def exchange(path: str, request: dict | str, timeout: float = 30.0) -> list[dict]:
    """Send one request; the answer's lines, parsed. OSError when the socket cannot be reached."""
    data = request if isinstance(request, str) else json.dumps(request)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data.encode() + b"\n")
        answers, buffer = [], b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in filter(None, lines):
                answer = json.loads(line)
                answers.append(answer)
                if "result" in answer or "error" in answer:
                    return answers
        if buffer.strip():
            answers.append(json.loads(buffer))
        return answers


def session(path: str) -> int:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(exchange(path, json.loads(line), timeout=120)[-1]), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--session"]:
        return session(argv[1])
    raw = argv[:1] == ["--raw"]
    if raw:
        argv = argv[1:]
    path, request = argv[0], argv[1]
    try:
        answers = exchange(path, request if raw else json.loads(request))
    except OSError as exc:
        print(json.dumps({"connect_error": f"{type(exc).__name__}: {exc}", "errno": exc.errno}))
        return 3
    for answer in answers:
        print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A hostile local user of the GPU broker, for tests/broker/test_broker_hostile.py.

Standard library only, so that it runs as any Unix user under the system's python3 (as wire.py does):

    setpriv --reuid=alice --regid=alice --init-groups --reset-env /usr/bin/python3 hostile.py COMMAND ARGS...

Each command prints JSON lines on stdout: what it saw, for the test to judge. Those that keep something open
(connections, a listener, a kernel whose "server" must stay alive) print ``{"ready": ...}`` first and then hold it
until their stdin closes or their time is up; the test reads their lines as they come.

    send SOCKET                      the bytes given as hex on stdin, sent as they are; every answer line, then
                                     {"end": "closed" | "reset" | "timeout"}
    swap-folder SOCKET FOLDER TARGET ask socket_folder for FOLDER's kernel id and, as soon as FOLDER exists,
                                     replace it with a link to TARGET (rmdir + symlink); the answer and each step
    race-folder SOCKET FOLDER TARGET SECONDS
                                     the same, by plain racing: ask for FOLDER again and again while a second
                                     thread swaps it for a link whenever it can; whether TARGET ever became ours
    kernel SPEC                      a kernel as a server starts it (socket_folder, connection.json, start_kernel,
                                     SPEC's args), with SPEC "swap": {"after": S, "secret": DIR} renaming the
                                     root folder away S seconds into the start and linking DIR in its place;
                                     held (this process is the kernel's "server") until stdin closes
    race-start SPEC                  plain racing for the mount: one thread swaps the root folder for a link to
                                     SPEC's secret and back, again and again, while kernels are started one after
                                     another; each answer is printed, then a line on stdin says "go on"
    hold-unix SOCKET N SECONDS       N idle connections to the broker's socket, reopening those it closes
    hold-tcp HOST PORT N SECONDS     N idle TCP connections (nothing sent); when each was closed by the server
    listen HOST PORT                 listen there (the broker's metrics port) until stdin closes; what came in
    flood SOCKET N                   N requests that fail, as fast as they are answered; the statuses
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import secrets
import selectors
import socket
import sys
import threading
import time


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def request_line(op: str, **args) -> bytes:
    return json.dumps({"op": op, "args": args}).encode() + b"\n"


def connect(path: str, timeout: float = 30.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_answer(s: socket.socket) -> tuple[list, str]:
    """Every line until the final result or error (or the end of the connection); and how it ended."""
    answers, buffer = [], b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return answers, "timeout"
        except ConnectionResetError:
            return answers, "reset"
        if not chunk:
            if buffer.strip():
                answers.append(parse(buffer))
            return answers, "closed"
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in filter(None, lines):
            answer = parse(line)
            answers.append(answer)
            if isinstance(answer, dict) and ("result" in answer or "error" in answer):
                return answers, "answered"


def parse(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return {"unparsed": line[:500].decode(errors="replace")}


def ask(path: str, op: str, timeout: float = 60.0, **args) -> dict:
    """One request; its final line (or {"end": how} when there was none)."""
    try:
        with connect(path, timeout) as s:
            s.sendall(request_line(op, **args))
            answers, end = read_answer(s)
    except OSError as exc:
        return {"connect_error": f"{type(exc).__name__}: {exc}"}
    return answers[-1] if answers and end == "answered" else {"end": end, "answers": answers}


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# -- send ------------------------------------------------------------------------------------------------------------
def send(path: str) -> int:
    data = bytes.fromhex(sys.stdin.read().strip())
    with connect(path) as s:
        try:
            s.sendall(data)
        except OSError as exc:  # the broker may refuse to read it all, and close
            say(send_error=errname(exc))
        answers, end = read_answer(s)
    for answer in answers:
        print(json.dumps(answer))
    say(end=end)
    return 0


# -- socket folders --------------------------------------------------------------------------------------------------
def try_step(step) -> str:
    try:
        step()
    except OSError as exc:
        return errname(exc)
    return "done"


def swap_folder(path: str, folder: str, target: str) -> int:
    """The folder the broker makes, swapped for a link to ``target`` as soon as it is seen (before its chown)."""
    kernel_id = os.path.basename(folder)
    s = connect(path)
    s.sendall(request_line("socket_folder", kernel_id=kernel_id))
    seen, deadline = None, time.monotonic() + 20
    while seen is None and time.monotonic() < deadline:
        try:
            seen = os.lstat(folder)
        except FileNotFoundError:
            time.sleep(0.001)
        except OSError as exc:  # e.g. the user's folder is not searchable: nothing can be swapped
            say(lstat=errname(exc))
            break
    steps = {"seen": seen is not None, "owner_when_seen": seen.st_uid if seen else None}
    steps["rmdir"] = try_step(lambda: os.rmdir(folder))
    steps["symlink"] = try_step(lambda: os.symlink(target, folder)) if steps["rmdir"] == "done" else "not tried"
    answers, end = read_answer(s)
    s.close()
    if steps["symlink"] == "done":
        steps["unlink"] = try_step(lambda: os.unlink(folder))  # leave no link behind
    say(answer=answers[-1] if answers else None, end=end, **steps)
    return 0


def race_folder(path: str, folder: str, target: str, seconds: float) -> int:
    kernel_id = os.path.basename(folder)
    stop = threading.Event()
    outcome = {"swaps": 0, "won": False, "asked": 0, "answers": {}}

    def swapper() -> None:
        while not stop.is_set():
            try:
                os.rmdir(folder)
            except OSError:
                continue
            try:
                os.symlink(target, folder)
            except OSError:
                continue
            outcome["swaps"] += 1
            try:
                if os.stat(target).st_uid == os.getuid():
                    outcome["won"] = True
            except OSError:
                pass
            with contextlib.suppress(OSError):
                os.unlink(folder)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not outcome["won"]:
        answer = ask(path, "socket_folder", timeout=10, kernel_id=kernel_id)
        outcome["asked"] += 1
        status = str(answer.get("error", {}).get("status", "result" if "result" in answer else "none"))
        outcome["answers"][status] = outcome["answers"].get(status, 0) + 1
        if status == "429":  # this user may hold no more folders for now: the swapper gets its turn
            time.sleep(0.05)
    stop.set()
    thread.join(5)
    if os.path.islink(folder):
        os.unlink(folder)
    say(**outcome)
    return 0


# -- kernels ---------------------------------------------------------------------------------------------------------
def connection_info(folder: str) -> dict:
    """What a server writes for an ipc kernel in ``folder``: the kernel listens there, on nothing else."""
    ports = dict(zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), range(1, 6), strict=True))
    return {
        **ports,
        "ip": os.path.join(folder, "k"),
        "transport": "ipc",
        "key": secrets.token_hex(16),
        "signature_scheme": "hmac-sha256",
        "kernel_name": "",
    }


def prepare(path: str, kernel_id: str) -> tuple[str | None, dict]:
    """socket_folder, then connection.json in it (as the user's server does); the folder, or None and why."""
    answer = ask(path, "socket_folder", kernel_id=kernel_id)
    if "result" not in answer:
        return None, answer
    folder = answer["result"]["path"]
    with open(os.path.join(folder, "connection.json"), "w") as f:
        json.dump(connection_info(folder), f)
    return folder, answer


def start_args(spec: dict, kernel_id: str, folder: str) -> dict:
    root = spec["root_dir"]
    args = {
        "kernel_id": kernel_id,
        "environment": spec.get("environment", "cpu"),
        "root_dir": root,
        "cwd": spec.get("cwd", root),
        "socket_dir": folder,
        "connection_file": os.path.join(folder, "connection.json"),
        "keep_gpus": [],
        "server_env": {},
    }
    args.update(spec.get("args", {}))
    return args


def swap_root(root: str, secret: str) -> None:
    os.rename(root, root + ".moved")
    os.symlink(secret, root)


def restore_root(root: str) -> None:
    if os.path.islink(root):
        os.unlink(root)
    if os.path.isdir(root + ".moved") and not os.path.lexists(root):
        os.rename(root + ".moved", root)


def kernel(spec_text: str) -> int:
    spec = json.loads(spec_text)
    path, kernel_id = spec["socket"], spec["kernel_id"]
    folder, answer = prepare(path, kernel_id)
    if folder is None:
        say(folder=None, answer=answer)
    else:
        swap = spec.get("swap")
        s = connect(path, 120)
        s.sendall(request_line("start_kernel", **start_args(spec, kernel_id, folder)))
        swapped = None
        if swap:
            time.sleep(swap["after"])
            swap_root(spec["root_dir"], swap["secret"])
            swapped = time.monotonic()
        answers, end = read_answer(s)
        s.close()
        if swap:
            restore_root(spec["root_dir"])  # what the container was given was decided at its start
        say(folder=folder, answer=answers[-1] if answers else None, end=end, swapped=swapped is not None)
    sys.stdin.read()  # this process plays the kernel's server: its kernel stays until it ends
    return 0


def race_start(spec_text: str) -> int:
    spec = json.loads(spec_text)
    path, root, secret = spec["socket"], spec["root_dir"], spec["secret"]
    stop, lock = threading.Event(), threading.Lock()

    def swapper() -> None:
        while not stop.is_set():
            with lock, contextlib.suppress(OSError):
                swap_root(root, secret)
            time.sleep(0.0005)
            with lock, contextlib.suppress(OSError):
                restore_root(root)
            time.sleep(0.0005)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    deadline, n = time.monotonic() + spec["seconds"], 0
    try:
        while time.monotonic() < deadline:
            kernel_id = f"{spec['prefix']}-{n}"
            n += 1
            folder, answer = prepare(path, kernel_id)
            if folder is not None:
                answer = ask(path, "start_kernel", timeout=120, **start_args(spec, kernel_id, folder))
            say(kernel_id=kernel_id, folder=folder, answer=answer)
            if not sys.stdin.readline():  # the test looked at the container and removed it
                break
    finally:
        stop.set()
        thread.join(5)
        with lock:
            restore_root(root)
    say(done=n)
    return 0


# -- connections -----------------------------------------------------------------------------------------------------
def raise_file_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, wanted), limit), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def hold_unix(path: str, n: int, seconds: float) -> int:
    """``n`` connections that send nothing, kept open; each one the broker closes (or answers) is reopened."""
    raise_file_limit(n + 64)
    sel = selectors.DefaultSelector()
    started = time.monotonic()
    stats = {"opened": 0, "backlog_full": 0, "closed": 0, "answered": {}, "first_refusal": None, "connect_errors": {}}
    buffers: dict[socket.socket, bytes] = {}

    def open_one() -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:  # the listen backlog is full (a unix socket is then not connected): later
            s.close()
            stats["backlog_full"] += 1
            return False
        except OSError as exc:
            s.close()
            name = errname(exc)
            stats["connect_errors"][name] = stats["connect_errors"].get(name, 0) + 1
            return False
        sel.register(s, selectors.EVENT_READ)
        buffers[s] = b""
        stats["opened"] += 1
        return True

    def refused(now: float) -> None:
        if stats["first_refusal"] is None:
            stats["first_refusal"] = round(now - started, 3)

    for _ in range(n):
        if not open_one():
            break
    say(ready=len(buffers), after=round(time.monotonic() - started, 3))
    deadline = started + seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            if chunk:
                buffers[s] += chunk
                *lines, buffers[s] = buffers[s].split(b"\n")
                for line in filter(None, lines):
                    status = str((parse(line).get("error") or {}).get("status", "other"))
                    stats["answered"][status] = stats["answered"].get(status, 0) + 1
                    refused(now)
                continue
            stats["closed"] += 1
            refused(now)
            sel.unregister(s)
            buffers.pop(s, None)
            s.close()
        while len(buffers) < n and time.monotonic() < deadline:
            if not open_one():
                time.sleep(0.05)
                break
    say(**stats, held=len(buffers))
    for s in list(buffers):
        s.close()
    return 0


def hold_tcp(host: str, port: int, n: int, seconds: float) -> int:
    """``n`` TCP connections that send nothing; when the server closed each (seconds after it was opened)."""
    raise_file_limit(n + 64)
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    errors: dict[str, int] = {}
    for _ in range(n):
        s = socket.socket()
        s.settimeout(3)  # a server that accepts nothing more leaves a connect hanging in its backlog
        try:
            s.connect((host, port))
        except OSError as exc:
            s.close()
            errors[errname(exc)] = errors.get(errname(exc), 0) + 1
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        opened[s] = time.monotonic()
    say(ready=len(opened), connect_errors=errors)
    closed: list[float] = []
    deadline = time.monotonic() + seconds
    while opened and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if chunk:  # an answer before any request: it is read, and the connection watched on
                continue
            closed.append(round(time.monotonic() - opened.pop(s), 3))
            sel.unregister(s)
            s.close()
    say(closed=len(closed), latest_close=max(closed, default=None), still_open=len(opened), connect_errors=errors)
    for s in opened:
        s.close()
    return 0


def listen(host: str, port: int) -> int:
    """A user's listener on the broker's metrics port, taken while the broker is down."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        say(ready=False, error=errname(exc))
        return 1
    s.listen(16)
    s.settimeout(0.2)
    say(ready=True)
    got: list[str] = []
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        try:
            conn, _ = s.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                got.append(conn.recv(4096).decode(errors="replace").split("\r\n", 1)[0])
    s.close()
    say(requests=got)
    return 0


def flood(path: str, n: int) -> int:
    """``n`` requests that must each be refused: malformed, unknown, not the user's, out of policy."""
    home = os.path.expanduser("~")
    kinds = [
        b"this is not json\n",
        request_line("no-such-op"),
        request_line("socket_folder", kernel_id="../../etc"),
        request_line("state", container_id="0" * 64),
        request_line("start_kernel", kernel_id=f"hostile-flood-{secrets.token_hex(4)}", environment="power"),
        request_line("start_kernel", kernel_id="hostile-flood", environment="cpu", root_dir="/root", cwd="/root"),
        request_line("start_kernel", kernel_id="hostile-flood", environment="cpu", root_dir=home + "\0", cwd=home),
    ]
    statuses: dict[str, int] = {}
    started = time.monotonic()
    for i in range(n):
        try:
            with connect(path, 30) as s:
                s.sendall(kinds[i % len(kinds)])
                answers, end = read_answer(s)
        except OSError as exc:
            answers, end = [], errname(exc)
        final = answers[-1] if answers else {}
        status = str((final.get("error") or {}).get("status", "result" if "result" in final else end))
        statuses[status] = statuses.get(status, 0) + 1
    say(statuses=statuses, seconds=round(time.monotonic() - started, 3))
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "send":
        return send(args[0])
    if command == "swap-folder":
        return swap_folder(*args)
    if command == "race-folder":
        return race_folder(args[0], args[1], args[2], float(args[3]))
    if command == "kernel":
        return kernel(args[0])
    if command == "race-start":
        return race_start(args[0])
    if command == "hold-unix":
        return hold_unix(args[0], int(args[1]), float(args[2]))
    if command == "hold-tcp":
        return hold_tcp(args[0], int(args[1]), int(args[2]), float(args[3]))
    if command == "listen":
        return listen(args[0], int(args[1]))
    if command == "flood":
        return flood(args[0], int(args[1]))
    raise SystemExit(f"hostile.py: unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

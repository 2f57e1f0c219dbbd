"""The ``Engine`` over the shared-host broker's unix socket: what a user's server uses with ``c.GpuEnv.broker``.

The broker decides what runs (its administrator's environments and policy) and which GPUs a kernel gets;
this client only asks, and turns the broker's answers back into ``errors`` classes with their sentences.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from jupyter_gpuenv import errors
from jupyter_gpuenv.containers.labels import KernelContainer
from jupyter_gpuenv.containers.spec import AssignedGpu
from jupyter_gpuenv.engines.base import ContainerState, KernelRequest, Placement, StreamShell, WarmTaken
from jupyter_gpuenv.environments import kernelspecs, preflight
from jupyter_gpuenv.environments.definition import Environment, parse_environment
from jupyter_gpuenv.environments.preflight import READY, ImageFacts, Verdict
from jupyter_gpuenv.gpus.nvml import Snapshot


def _all_errors(cls: type[errors.GpuEnvError]) -> dict[str, type[errors.GpuEnvError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_all_errors(sub))
    return out


ERRORS = _all_errors(errors.GpuEnvError)


def _refusal(error: dict[str, Any]) -> errors.GpuEnvError:
    """The broker's error answer as the exception it names; EngineRefused for a class this client does not know."""
    return ERRORS.get(str(error.get("type")), errors.EngineRefused)(error.get("message", "the broker refused"))


class BrokerClient:
    """One short connection per request. The broker sends a line at least every few seconds while it works (pull
    progress, or "still working"), so a silence of ``timeout * 4`` seconds means it stalled, whatever the op."""

    def __init__(self, url: str, timeout: float) -> None:
        self.path = url[len("unix://") :] if url.startswith("unix://") else url
        self.timeout = timeout
        self.hub_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    return await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path, limit=1 << 22), max(deadline - time.monotonic(), 0.1)
                    )
                except BlockingIOError:  # the broker's queue is full for a moment: ask again within the budget
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        except (OSError, asyncio.TimeoutError) as exc:
            raise errors.EngineUnreachable(
                f"the GPU broker at {self.path} is not answering ({exc.__class__.__name__}): container kernels are "
                "unavailable until it runs again; ask the administrator of this host"
            ) from None

    async def call(self, op: str, args: dict[str, Any] | None = None, progress: Callable | None = None) -> Any:
        reader, writer = await self._connect()
        try:
            request = {"op": op, "args": args or {}}
            if self.hub_token:  # a broker in hub-token mode knows this server by it; one in peer mode ignores it
                request["hub_token"] = self.hub_token
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), self.timeout * 4)
                if not line:
                    raise errors.EngineUnreachable(f"the GPU broker at {self.path} closed the connection mid-answer")
                answer = json.loads(line)
                if "progress" in answer:
                    # {"working": op} is the broker's heartbeat on a long answer: it only says the broker lives
                    if progress is not None and set(answer["progress"]) != {"working"}:
                        progress(answer["progress"])
                elif "error" in answer:
                    raise _refusal(answer["error"])
                elif "result" in answer:
                    return answer["result"]
        except asyncio.TimeoutError:
            raise errors.EngineUnreachable(f"the GPU broker at {self.path} did not answer in time") from None
        except (OSError, ValueError) as exc:
            raise errors.EngineUnreachable(
                f"the GPU broker at {self.path} broke off ({exc.__class__.__name__})"
            ) from None
        finally:
            writer.close()

    # -- what only a broker answers ----------------------------------------------------------------------
    async def environments(self) -> list[dict[str, Any]]:
        return await self.call("environments")

    shared_host = True

    @property
    def books_dir(self) -> str:
        # this server's own runtime folder: nothing in a shared place such as /tmp, where another user may have
        # made the folder first
        return os.path.join(jupyter_runtime_dir(), "gpuenv")

    async def sweep_orphans(self) -> list[str]:
        return []  # the broker removes the kernels of servers that are gone, every user's

    async def holders(self) -> dict[str, Any]:
        return await self.call("holders")

    async def environment_report(self, specs: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
        """The environments this person may use, as the broker judges them, with live availability."""
        starts: dict[str, str] = {}  # environment -> the kernelspec that starts it
        for spec_name, entry in sorted(specs.items()):
            config = kernelspecs.provisioner_config(entry.get("spec") or {})
            if config and isinstance(config.get("environment"), str):
                starts.setdefault(config["environment"], spec_name)
        try:
            rows = await self.environments()
        except errors.EngineUnavailable as exc:
            return {"docker": {"available": False, "reason": str(exc)}, "environments": []}
        out = []
        for row in rows:
            row = {k: v for k, v in row.items() if k != "definition"}
            row.update({"kernelspec": starts.get(row["name"]), "source": "the GPU broker"})
            compatible = row["state"] != preflight.INCOMPATIBLE
            row.update({"image_present": None, "cuda_version": None, "compatible": compatible})
            if row["kernelspec"] is None and row["can_start"]:
                row.update({"can_start": False, "state": preflight.UNAVAILABLE, "reason_code": "no-kernelspec"})
                row["reason"] = f"no kernelspec here names {row['name']!r}: `jupyter gpuenv add {row['name']} --broker`"
            out.append(row)
        return {"docker": {"available": True, "reason": None}, "environments": out}

    def kernelspec_environment(self, config: dict[str, Any], source: str) -> tuple[str, Environment | None]:
        return kernelspecs.named_only(config, source), None  # the broker's administrator defines it

    async def verdict(self, env: Environment, snapshot: Snapshot, pull_allowed: bool) -> Verdict:
        return Verdict(READY, True)  # the broker checks (its images, its GPUs, its runtimes) when it starts it

    def watch_client(self) -> None:
        return None  # the broker removes the kernels of a client that is gone

    async def keep_warm(self, root_dir: str) -> None:
        with suppress(errors.InvalidRequest):  # a broker older than warm kernels
            await self.call("keep_warm", {"root_dir": root_dir})

    async def take_warm(
        self, kernel_id: str, env: Environment, root_dir: str, server_env: dict[str, str]
    ) -> WarmTaken | None:
        args = {"kernel_id": kernel_id, "environment": env.name, "root_dir": root_dir,
                "notebook": server_env.get("JPY_SESSION_NAME", "")}  # fmt: skip
        try:
            answer, lock = await asyncio.get_running_loop().run_in_executor(None, self._take_warm, args)
        except errors.InvalidRequest:  # a broker older than warm kernels: the start is cold
            return None
        if answer is None:
            return None
        gpus = tuple(AssignedGpu(g["index"], g["uuid"], g.get("minor")) for g in answer["gpus"])
        placement = Placement(answer["container_id"], answer["gpu_mode"], gpus)
        return WarmTaken(answer["name"], answer["socket_dir"], placement, lock)

    def _take_warm(self, args: dict[str, Any]) -> tuple[dict[str, Any] | None, int | None]:
        """``take_warm`` on a plain socket: the answer carries the warm kernel's client lock as an open file
        (SCM_RIGHTS), which asyncio's streams would drop. The lock stays held throughout: the broker's descriptor
        and this one are the same open file, so the kernel's watcher never sees it free."""
        request: dict[str, Any] = {"op": "take_warm", "args": args}
        if self.hub_token:
            request["hub_token"] = self.hub_token
        fds: list[int] = []
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout * 4)
            sock.connect(self.path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            buffer = b""
            while True:
                data, got, _, _ = socket.recv_fds(sock, 1 << 16, 4, socket.MSG_CMSG_CLOEXEC)
                fds += got
                if not data:
                    raise errors.EngineUnreachable(f"the GPU broker at {self.path} closed the connection mid-answer")
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    answer = json.loads(line)
                    if "error" in answer:
                        raise _refusal(answer["error"])
                    if "result" in answer:
                        if answer["result"] is None:
                            return None, None
                        if len(fds) != 1:
                            raise errors.EngineUnreachable("the GPU broker handed a warm kernel without its lock")
                        return answer["result"], fds.pop()
        except (OSError, ValueError) as exc:
            raise errors.EngineUnreachable(
                f"the GPU broker at {self.path} did not hand over a warm kernel ({exc.__class__.__name__})"
            ) from None
        finally:
            sock.close()
            for fd in fds:
                os.close(fd)

    async def environment(self, name: str, specs: dict[str, Any] | None = None) -> Environment:
        for row in await self.environments():
            if row["name"] == name:
                return parse_environment(name, row["definition"], "the GPU broker")
        raise errors.NotPermitted(f"the environment {name!r} is not one this host's administrator lets you use")

    async def socket_folder(self, kernel_id: str) -> str:
        return (await self.call("socket_folder", {"kernel_id": kernel_id}))["path"]

    async def remove_socket_folder(self, kernel_id: str, path: str) -> None:
        """Done with a kernel's socket folder: what is inside is this user's to remove, the folder the broker's (its
        parents are root's, so only it can). If the broker cannot be asked, it sweeps the folder after
        c.Broker.socket_folder_grace."""
        shutil.rmtree(path, ignore_errors=True)
        with suppress(errors.GpuEnvError):
            await self.call("remove_socket_folder", {"kernel_id": kernel_id})

    async def park(self, container_id: str) -> dict[str, Any]:
        """Park one of this user's kernels (the broker acts on its process); its park row. Takes as long as the
        driver does, hence no answer time limit (the broker's own c.Broker.park_timeout bounds it)."""
        return await self.call("park", {"container_id": container_id}, progress=lambda line: None)

    async def resume(self, container_id: str) -> dict[str, Any]:
        return await self.call("resume", {"container_id": container_id}, progress=lambda line: None)

    async def kernel_rows(self) -> list[dict[str, Any]]:
        """This user's kernels as the broker's lease book has them, each with its park row."""
        return await self.call("kernels")

    async def parking(self) -> dict[str, Any]:
        return await self.call("parking")

    # -- the Engine interface ----------------------------------------------------------------------------
    async def image_facts(self, image: str, python: str | None = None, env: dict[str, str] | None = None) -> ImageFacts:
        raise errors.NotPermitted("with a broker, the broker checks images (GET environments says what it found)")

    async def pull(self, image: str, on_progress: Callable | None = None) -> None:
        raise errors.NotPermitted("with a broker, images are pulled by the broker when a kernel starts")

    def pull_progress(self, image: str) -> None:
        return None  # the broker's rows carry their pull's progress (GET environments)

    def pull_failure(self, image: str) -> None:
        return None

    async def kernels(self) -> list[KernelContainer]:
        return [
            KernelContainer(
                id=k["container_id"],
                name=f"gpuenv-{k['kernel_id']}",
                kernel_id=k["kernel_id"],
                active=True,
                environment=k["environment"],
                gpus=tuple(k["gpus"]),
            )  # fmt: skip
            for k in await self.call("kernels")
        ]

    async def start_kernel(self, request: KernelRequest) -> Placement:
        answer = await self.call(
            "start_kernel",
            {
                "kernel_id": request.kernel_id,
                "environment": request.environment.name,
                "root_dir": request.root_dir,
                "cwd": request.cwd,
                "socket_dir": request.socket_dir,
                "connection_file": request.connection_file,
                "keep_gpus": list(request.keep_gpus),
                "server_env": request.server_env,
                "terminal": request.terminal,
            },
            progress=lambda line: None,
        )
        gpus = tuple(AssignedGpu(g["index"], g["uuid"], g.get("minor")) for g in answer["gpus"])
        return Placement(answer["container_id"], answer["gpu_mode"], gpus)

    async def state(self, container_id: str) -> ContainerState:
        return ContainerState(**await self.call("state", {"container_id": container_id}))

    async def signal(self, container_id: str, signum: int) -> None:
        await self.call("signal", {"container_id": container_id, "signum": int(signum)})

    async def remove(self, container_id: str) -> ContainerState | None:
        last = await self.call("remove", {"container_id": container_id})
        return ContainerState(**last) if last else None

    async def exec_shell(self, container_id: str, user: str) -> BrokerShell:
        """A shell in one of this user's kernel containers: the broker runs it as this server's user, whatever
        ``user`` says, and keeps the connection to carry its bytes."""
        reader, writer = await self._connect()
        request: dict[str, Any] = {"op": "exec_shell", "args": {"container_id": container_id}}
        if self.hub_token:
            request["hub_token"] = self.hub_token
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), self.timeout * 4) or b"{}")
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            writer.close()
            raise errors.EngineUnreachable(
                f"the GPU broker at {self.path} did not open the shell ({exc.__class__.__name__})"
            ) from None
        if "result" not in answer:
            writer.close()
            raise _refusal(answer.get("error") or {})
        return BrokerShell(self, answer["result"]["shell"], reader, writer)


class BrokerShell(StreamShell):
    """A terminal's shell that the broker opened: its bytes on the request's own connection (``Engine.Shell``)."""

    def __init__(
        self, client: BrokerClient, shell_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self.client, self.shell_id = client, shell_id

    async def resize(self, rows: int, cols: int) -> None:
        await self.client.call("shell_resize", {"shell": self.shell_id, "rows": rows, "cols": cols})

    async def close(self) -> None:
        self._writer.close()  # the broker hangs the shell up when its connection ends

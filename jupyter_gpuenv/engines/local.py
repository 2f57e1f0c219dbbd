"""One person's machine: the Docker engine, and around it what a shared host's broker does for its users.

``DockerEngine`` runs containers. ``LocalEngine`` adds what a start needs around them, from this server's own
settings: environments from ``c.GpuEnv.environments`` and the kernelspecs, the verdict of ``preflight`` from the
engine's image facts, socket folders in this user's private folder, and a reaper that removes this process's
kernels should it die. ``engines.broker.BrokerClient`` answers the same questions over the broker's socket.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from jupyter_gpuenv import host
from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.engines import orphans, reaper
from jupyter_gpuenv.engines.base import WarmTaken, image_facts_of
from jupyter_gpuenv.engines.docker.engine import DockerEngine
from jupyter_gpuenv.environments import kernelspecs, preflight, runtime
from jupyter_gpuenv.environments.definition import Environment
from jupyter_gpuenv.errors import EngineUnavailable, InvalidEnvironment, InvalidKernelId
from jupyter_gpuenv.gpus.nvml import Snapshot
from jupyter_gpuenv.pulls.progress import progress_row

UNSUITED = (preflight.INVALID, preflight.UNAVAILABLE, preflight.INCOMPATIBLE)  # states no waiting changes
SOCKET_PATH_LIMIT = 100  # bytes of a unix socket's path (sun_path is 108, less what ZMQ adds: "k-<port>")


def private_dir(settings: GpuEnv) -> str:
    """This user's private folder under ``c.GpuEnv.socket_root`` (not made here)."""
    return os.path.join(settings.socket_root, f"gpuenv-{os.getuid()}")


class LocalEngine(DockerEngine):
    """The Docker engine of one person's machine, with this server deciding what the broker decides elsewhere."""

    shared_host = False

    def __init__(self, settings: GpuEnv, log: logging.Logger | None = None) -> None:
        super().__init__(
            settings.docker_url,
            settings.docker_timeout,
            private_dir(settings),
            log,
            pull_stall_timeout=settings.pull_stall_timeout,
        )
        self.settings = settings
        self.books_dir = private_dir(settings)

    def kernelspec_environment(self, config: dict[str, Any], source: str) -> tuple[str, Environment | None]:
        env = kernelspecs.resolve(self.settings, config, source)
        return env.name, env

    async def environment(self, name: str, specs: dict[str, Any] | None = None) -> Environment:
        defined = {d.name: d for d in kernelspecs.defined_environments(self.settings, specs or {})}
        item = defined.get(name)
        if item is None:
            raise InvalidEnvironment(f"no environment {name!r} here (defined: {', '.join(sorted(defined)) or 'none'})")
        return item.definition()

    async def verdict(self, env: Environment, snapshot: Snapshot, pull_allowed: bool) -> preflight.Verdict:
        situation = preflight.Situation(
            image=await image_facts_of(self, env),
            snapshot=snapshot,
            prepared_runtimes=runtime.prepared_versions(self.settings.kernel_runtime_dir),
            pull_allowed=pull_allowed,
        )
        return preflight.check(env, situation)

    async def socket_folder(self, kernel_id: str) -> str:
        root = host.private_folder(private_dir(self.settings))
        path = os.path.join(root, kernel_id)
        if len(os.path.join(path, "k-9999")) > SOCKET_PATH_LIMIT:
            raise InvalidKernelId(
                f"socket folder {path} is too long for unix sockets (at most ~{SOCKET_PATH_LIMIT} bytes): "
                "set c.GpuEnv.socket_root to a shorter path"
            )
        os.mkdir(path, 0o700)
        return path

    async def remove_socket_folder(self, kernel_id: str, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def watch_client(self) -> None:
        reaper.watch_client(self.settings)

    async def sweep_orphans(self) -> list[str]:
        return await orphans.remove_orphans(self)

    async def holders(self) -> dict[str, Any]:
        return {}  # one person's machine: their own kernels are the server's to name

    async def keep_warm(self, root_dir: str) -> None:
        return None  # the server keeps its own warm kernels (server.warm)

    async def take_warm(
        self, kernel_id: str, env: Environment, root_dir: str, server_env: dict[str, str]
    ) -> WarmTaken | None:
        return None

    async def environment_report(self, specs: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
        prepared = runtime.prepared_versions(self.settings.kernel_runtime_dir)
        engine_error: EngineUnavailable | None = None
        rows = []
        for item in kernelspecs.defined_environments(self.settings, specs):
            env, image, progress, failure = item.environment, None, None, None
            if env is None:
                assert item.error is not None  # kernelspecs.Defined holds an environment or its error
                verdict = preflight.invalid(item.error)
            else:
                if engine_error is None:
                    try:
                        image = await image_facts_of(self, env)
                    except EngineUnavailable as exc:
                        engine_error = exc
                progress = self.pull_progress(env.image)
                if progress is None and not (image and image.present):  # why the last pull failed, while it matters
                    failure = self.pull_failure(env.image)
                situation = preflight.Situation(
                    image=image,
                    snapshot=snapshot,
                    prepared_runtimes=prepared,
                    pull_allowed=self.settings.pull_missing_images,
                    pulling=progress is not None,
                    has_kernelspec=item.kernelspec is not None,
                    engine_error=engine_error,
                )
                verdict = preflight.check(env, situation)
            rows.append(
                {
                    "name": item.name,
                    "kernelspec": item.kernelspec,
                    "source": item.source,
                    "display_name": env.display_name if env else item.name,
                    "image": env.image if env else None,
                    "gpus": str(env.gpus) if env else None,
                    "image_present": image.present if image else None,
                    "cuda_version": (env.cuda_version or (image.cuda_version if image else None)) if env else None,
                    "pull_progress": progress_row(progress) if progress else None,
                    "pull_error": {"message": failure.error, "code": failure.error_code} if failure else None,
                    "state": verdict.state,
                    "can_start": verdict.can_start,
                    "compatible": verdict.state not in UNSUITED,
                    "reason": verdict.reason,
                    "reason_code": verdict.reason_code,
                }
            )
        if engine_error is None and not any(r["image_present"] is not None for r in rows):
            try:  # no environment asked the engine anything: ask it whether it is there at all
                await self.kernels()
            except EngineUnavailable as exc:
                engine_error = exc
        docker = {"available": engine_error is None, "reason": str(engine_error) if engine_error else None}
        return {"docker": docker, "environments": rows}

"""Can this environment start here, now? One verdict, read by the provisioner and by GET environments.

:func:`check` is pure: the caller gathers the facts (what the engine says of the image, asked the one way
``engines.base.image_facts_of`` asks it; the GPU snapshot; which kernel runtimes are prepared; whether pulling is
allowed) and it decides. The provisioner raises the
verdict's error; ``GET environments`` reports its state, ``can_start`` and reason, so the panel never offers
what the provisioner would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_gpuenv import errors
from jupyter_gpuenv.environments.definition import Environment, cuda_compatibility
from jupyter_gpuenv.gpus.nvml import Snapshot


@dataclass(frozen=True)
class ImageFacts:
    """What the engine says of an image. The Python facts come from running it once (cached by image id)."""

    present: bool
    id: str | None = None
    cuda_version: str | None = None
    python_version: str | None = None  # "3.11"; None when not asked, or the image has no such interpreter
    has_ipykernel: bool | None = None  # None when not asked


# states, in the order the checks run
INVALID, UNAVAILABLE, INCOMPATIBLE, PULLING, IMAGE_MISSING, RUNTIME_MISSING, READY = (
    "invalid",
    "unavailable",
    "incompatible",
    "pulling",
    "image-missing",
    "runtime-missing",
    "ready",
)


@dataclass(frozen=True)
class Situation:
    """The facts a verdict is made of."""

    image: ImageFacts | None  # None: the engine could not be asked (engine_error says why)
    snapshot: Snapshot
    prepared_runtimes: frozenset[str] = frozenset()  # Python versions ("3.11") with a prepared kernel runtime
    pull_allowed: bool = True
    pulling: bool = False
    has_kernelspec: bool = True
    engine_error: errors.EngineUnavailable | None = None


@dataclass(frozen=True)
class Verdict:
    state: str
    can_start: bool
    reason: str | None = None  # a sentence for the person; set whenever something is worth saying
    error: errors.GpuEnvError | None = None  # what a start raises when it cannot start
    runtime_version: str | None = None  # mount the kernel runtime prepared for this Python version

    @property
    def reason_code(self) -> str | None:
        if self.error is not None:
            return self.error.code
        return {PULLING: "pulling", IMAGE_MISSING: "image-missing"}.get(self.state)

    def raise_if_refused(self) -> None:
        if not self.can_start and self.error is not None:
            raise self.error


def _refused(state: str, error: errors.GpuEnvError) -> Verdict:
    return Verdict(state, False, str(error), error)


def invalid(error: errors.InvalidEnvironment) -> Verdict:
    return _refused(INVALID, error)


def check(env: Environment, situation: Situation) -> Verdict:
    """The verdict for starting a kernel of ``env`` in ``situation``."""
    s, image = situation, situation.image
    if not s.has_kernelspec:
        return _refused(
            UNAVAILABLE,
            errors.NoKernelspec(
                f"no kernelspec starts {env.name!r}: add one with `jupyter gpuenv add {env.name}` or a kernelspec "
                f"whose metadata.kernel_provisioner.config is {{'environment': '{env.name}'}}"
            ),
        )
    if image is None:
        return _refused(UNAVAILABLE, s.engine_error or errors.EngineUnreachable("the Docker engine is not reachable"))
    if env.gpus.wants_gpus:
        if not s.snapshot.available:
            return _refused(
                INCOMPATIBLE,
                errors.NoGpu(
                    f"environment {env.name!r} asks for GPUs ({env.gpus}) but this server sees none: give it "
                    f"`--gpus none` to run it on the CPU\n`jupyter gpuenv add {env.name} --image {env.image} --gpus "
                    f'none` (or "gpus": "none" in its definition). {s.snapshot.reason}'
                ),
            )
        ok, why = cuda_compatibility(env.cuda_version or image.cuda_version, s.snapshot.cuda_driver_version)
        if not ok:
            return _refused(INCOMPATIBLE, errors.CudaTooNew(f"environment {env.name!r} cannot start: {why}"))
    if s.pulling:
        return Verdict(PULLING, True, f"image {env.image} is being pulled; a kernel started now waits for it")
    if not image.present:
        if not s.pull_allowed:
            return _refused(
                IMAGE_MISSING,
                errors.ImageMissing(
                    f"image {env.image} is not on the Docker engine and pulling is off "
                    "(c.GpuEnv.pull_missing_images): pull or build it on the host first"
                ),
            )
        return Verdict(IMAGE_MISSING, True, f"image {env.image} is not on the engine yet: it is pulled at first start")
    return _runtime(env, situation)


def _runtime(env: Environment, s: Situation) -> Verdict:
    """Whether the kernel can run: ipykernel in the image, or a prepared runtime to mount."""
    image = s.image
    assert image is not None
    needs_runtime = env.kernel_runtime == "mount" or (env.kernel_runtime == "auto" and image.has_ipykernel is False)
    if not needs_runtime:
        return Verdict(READY, True)
    version = image.python_version
    if version is None:
        return _refused(
            RUNTIME_MISSING,
            errors.NoKernelRuntime(
                f"image {env.image} has no working {env.python!r}: set 'python' in the environment to the "
                "interpreter's path in the image"
            ),
        )
    if version not in s.prepared_runtimes:
        return _refused(
            RUNTIME_MISSING,
            errors.NoKernelRuntime(
                f"image {env.image} has no ipykernel and no kernel runtime for Python {version} is prepared: "
                f"run `jupyter gpuenv prepare-runtime {version}` (or install ipykernel in the image)"
            ),
        )
    return Verdict(READY, True, runtime_version=version)

"""Every error a container kernel can meet, as one tree. Each class carries the HTTP status it answers.

    GpuEnvError                    base: a sentence for the person, a status, a machine-readable code
    ├── InvalidRequest (400)       what the caller sent, or an administrator wrote, is malformed
    │   ├── InvalidEnvironment     an environment definition (configuration or kernelspec) is wrong
    │   ├── InvalidKernelId        a client-chosen kernel id is not a safe name
    │   └── OutsideRoot            the notebook's folder is outside what the container can see
    ├── NotPermitted (403)         the administrator's policy does not allow it (shared hosts: the broker)
    ├── UnknownKernel (404)        no such kernel of the caller's (another user's is unknown too)
    ├── TooMany (429)              the caller holds as many of a shared resource as one person may (broker)
    ├── CannotStartHere (409)      well-formed, but this machine cannot start it now
    │   ├── NoGpu                  GPUs are asked for and this server sees none
    │   ├── NoFreeGpu              the GPU policy cannot be met: other kernels hold them
    │   ├── CudaTooNew             the image's CUDA is newer than the host driver supports
    │   ├── ImageMissing           the image is not on the engine and pulling is off
    │   ├── NoKernelRuntime        the image has no ipykernel and no kernel runtime is prepared
    │   ├── NoKernelspec           no kernelspec starts the environment (reported, never raised by a start)
    │   ├── UnsafeFolder           a folder we must own is another user's, or open to others
    │   ├── DiskTooSmall           the engine's disk has no room for the image (checked before pulling)
    │   └── CannotPark             this kernel cannot be parked now (busy, nothing on a GPU, no checkpoint API)
    └── EngineUnavailable (503)    the Docker engine could not do it
        ├── EngineUnreachable      no answer: not running, no permission, or it did not answer in time
        ├── EngineRefused          it answered with an error
        └── PullFailed             the registry could not give the image
            ├── RegistryUnreachable    the registry does not answer: down, a wrong address, TLS
            ├── UnknownImage           the registry has no such repository or tag
            ├── RegistryAuthRequired   the registry wants credentials the server's user has not got
            ├── PullStalled            no bytes for c.GpuEnv.pull_stall_timeout seconds: abandoned
            └── PullInterrupted        the process that pulled it stopped (reported after a restart)
    └── DriverFailed (503)         the NVIDIA driver could not park or resume a kernel (parking/)

A sentence leads with what to do. What a lower layer said (NVML's reason, the engine's words) goes after a
newline: the panel folds the lines after the first behind a toggle, and Lab's "Error Starting Kernel" dialog
shows the first line on its own.

The Docker SDK's own exceptions are translated into these in one place (``engines.docker.engine.translated``),
and ``server.refusals.to_http`` is the one place that turns them into tornado's ``HTTPError``. Nothing a person or
an engine can cause becomes a 500.
"""

from __future__ import annotations


class GpuEnvError(Exception):
    """Base class: ``str(exc)`` is the sentence the person sees."""

    status = 500
    code = "error"


class InvalidRequest(GpuEnvError):
    status, code = 400, "invalid-request"


class InvalidEnvironment(InvalidRequest):
    code = "invalid-definition"


class InvalidKernelId(InvalidRequest):
    code = "invalid-kernel-id"


class OutsideRoot(InvalidRequest):
    code = "outside-root"


class NotPermitted(GpuEnvError):
    status, code = 403, "not-permitted"


class UnknownKernel(GpuEnvError):
    status, code = 404, "unknown-kernel"


class TooMany(GpuEnvError):
    status, code = 429, "too-many"


class CannotStartHere(GpuEnvError):
    status, code = 409, "cannot-start"


class NoGpu(CannotStartHere):
    code = "no-gpu"


class NoFreeGpu(CannotStartHere):
    code = "no-free-gpu"


class CudaTooNew(CannotStartHere):
    code = "cuda-too-new"


class ImageMissing(CannotStartHere):
    code = "image-missing"


class NoKernelRuntime(CannotStartHere):
    code = "no-kernel-runtime"


class NoKernelspec(CannotStartHere):
    code = "no-kernelspec"


class UnsafeFolder(CannotStartHere):
    code = "unsafe-folder"


class DiskTooSmall(CannotStartHere):
    code = "disk-too-small"


class CannotPark(CannotStartHere):
    code = "cannot-park"


class EngineUnavailable(GpuEnvError):
    status, code = 503, "engine-unavailable"


class EngineUnreachable(EngineUnavailable):
    pass


class EngineRefused(EngineUnavailable):
    code = "engine-refused"


class PullFailed(EngineUnavailable):
    code = "pull-failed"


class RegistryUnreachable(PullFailed):
    code = "registry-unreachable"


class UnknownImage(PullFailed):
    code = "unknown-image"


class RegistryAuthRequired(PullFailed):
    code = "registry-auth"


class PullStalled(PullFailed):
    code = "pull-stalled"


class PullInterrupted(PullFailed):
    code = "pull-interrupted"


class DriverFailed(GpuEnvError):
    status, code = 503, "driver-failed"

"""jupyter_gpuenv: GPUs in JupyterLab — an NVML panel and kernels in PyTorch-CUDA containers."""

from jupyter_gpuenv._version import __version__


def _jupyter_server_extension_points():
    from jupyter_gpuenv.server.extension import GpuEnvApp

    return [{"module": "jupyter_gpuenv", "app": GpuEnvApp}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyter-gpuenv"}]


__all__ = ["__version__"]

"""The GPUs: ``nvml`` (NVML read into dataclasses; ``load_pynvml`` is the one seam tests replace), ``sampler``
(the background thread every tab and the metrics read), ``visibility`` (which GPUs this server shows),
``attribution`` (a GPU process → its kernel, pure)."""

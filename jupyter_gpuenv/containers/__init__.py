"""What a kernel's container is, decided without I/O: ``spec`` (an environment and the launch facts → the
container), ``labels`` (what the engine records of a kernel, read back), ``allocation`` (which GPUs a start gets),
``claims`` (warm kernels' soft claims), ``warm`` (what a warm kernel's container runs)."""

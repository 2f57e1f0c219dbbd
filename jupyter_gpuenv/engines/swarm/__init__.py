"""Kernels placed across GPU hosts by Docker Swarm mode (issue 22): the third engine beside the local Docker
engine and the broker client.

    service      pure: a kernel start → the Swarm service of one task that runs it
    placements   pure: services, tasks and nodes as Swarm reports them → who runs where, holding which GPUs
    gpu_runtime  the OCI runtime wrapper a GPU host registers in daemon.json: the task's GPUs
    engine       ``SwarmEngine``: start, list, state, signal and remove kernels through a manager's Engine API

Importing this package imports nothing else (``gpu_runtime`` runs on every container start of a host).
"""

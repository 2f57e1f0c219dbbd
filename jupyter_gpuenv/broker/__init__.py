"""The shared host's broker: one root daemon that owns the Docker engine, the GPU leases and the checkpoints for
every user, and answers their servers over a unix socket.

``daemon`` (the wire protocol and every operation), ``settings`` (``c.Broker``), ``setup`` (the configuration
checked as a whole), ``main`` (the entry), ``folders`` (every user path by descriptor, never twice), ``leases``
(the lease book), ``policy`` (who may use what), ``parking``, ``metrics`` (Prometheus and the usage ledger for
every user), ``catalog`` (what environments the host has, the readiness table), ``warm`` (each person's warm
kernels), ``install`` (the host's part of the setup). Security model: docs/shared-host.md.
"""

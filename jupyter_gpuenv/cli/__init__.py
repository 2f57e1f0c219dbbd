"""``jupyter gpuenv``: ``main`` (add, list, remove, prepare-runtime, pull), ``broker`` (run or install the shared
host's broker), ``usage`` (GPU-hours from a ledger)."""

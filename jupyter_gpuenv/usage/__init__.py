"""GPU usage: ``counter`` (GPU-seconds per kernel each sample), ``ledger`` (the usage ledger on disk),
``metrics`` (Prometheus series from the counter's last view)."""

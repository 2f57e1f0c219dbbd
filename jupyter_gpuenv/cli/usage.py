"""``jupyter gpuenv usage``: GPU-hours per user or notebook, from a usage ledger, without Prometheus."""

from __future__ import annotations

import argparse
import json
import os
import sys

from jupyter_gpuenv.config import GpuEnv
from jupyter_gpuenv.usage.ledger import BY, Ledger, local_time, summarize, usage_query


def add_usage_parser(sub) -> argparse.ArgumentParser:
    """Add ``usage`` to ``jupyter gpuenv``'s subcommands."""
    p = sub.add_parser(
        "usage",
        help="GPU-hours per user or notebook, from the usage ledger (no Prometheus needed)",
        description="GPU-hours per user or notebook over a period, read from the ledger that the Jupyter server "
        "writes (up to c.GpuEnv.usage_flush_interval behind; GET gpuenv/api/usage is current).",
    )
    p.add_argument(
        "--since",
        help="start: a date (2025-11-01, local midnight), a date and time, or seconds since the epoch; "
        "default: the first day of the month that --until falls in",
    )
    p.add_argument("--until", help="end, not included, in the same forms; default: now")
    p.add_argument("--by", choices=BY, default="user", help="one line per user (default) or per notebook")
    p.add_argument(
        "--dir",
        action="append",
        help="a usage ledger folder (default: <jupyter data dir>/gpuenv/usage); repeat it to add up several users'",
    )
    p.add_argument("--json", action="store_true", help="print what GET gpuenv/api/usage answers")
    p.set_defaults(func=cmd_usage)
    return p


def cmd_usage(args) -> int:
    try:
        since, until, by = usage_query(args.since, args.until, args.by)
    except ValueError as exc:
        print(f"jupyter gpuenv usage: {exc}", file=sys.stderr)
        return 2
    folders = args.dir or [GpuEnv().usage_dir]
    missing = [folder for folder in folders if not os.path.isdir(folder)]
    if missing:  # a mistyped --dir must not read as "nobody used a GPU"
        print(f"jupyter gpuenv usage: no ledger there: {', '.join(missing)} is not a folder (c.GpuEnv.usage_dir, or "
              "c.Broker.usage_dir on a shared host, says where it is)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        records = [r for folder in folders for r in Ledger(folder).read(since, until)]
    except OSError as exc:
        print(f"jupyter gpuenv usage: cannot read the ledger: {exc} (run as its owner or as root)", file=sys.stderr)
        return 1
    rows = summarize(records, since, until, by)
    if args.json:
        print(json.dumps({"since": since, "until": until, "by": by, "usage": rows}, indent=1))
        return 0
    print(f"GPU usage from {local_time(since)} to {local_time(until)}, by {by}, in {', '.join(folders)}")
    if not rows:
        print("No GPU use recorded in this period.")
        return 0
    header = ["USER", "NOTEBOOK", "GPU-HOURS", "GPU-MEMORY GiB-HOURS"]
    table = [
        [
            row["user"],
            row.get("notebook") or "(no notebook)",
            f"{row['gpu_hours']:.3f}",
            f"{row['gpu_memory_gib_hours']:.3f}",
        ]
        for row in rows
    ]
    total = sum(row["gpu_hours"] for row in rows)
    table.append(["total", "", f"{total:.3f}", ""])
    if by == "user":
        header, table = [header[0], *header[2:]], [[r[0], *r[2:]] for r in table]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for r in [header, *table]:
        names, numbers = r[: len(r) - 2], r[len(r) - 2 :]
        cells = [c.ljust(w) for c, w in zip(names, widths, strict=False)]
        cells += [c.rjust(w) for c, w in zip(numbers, widths[len(names) :], strict=True)]
        print("  ".join(cells).rstrip())
    return 0

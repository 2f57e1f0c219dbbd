"""The table prove_on_gpu.sh prints: every check of tests/gpu/prove.py, then the bench and its ratios.

python3 tests/gpu/report.py OUT      (reads OUT/results.json and OUT/bench.json; prints Markdown)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    out = Path(sys.argv[1])
    lines = []
    results = out / "results.json"
    if results.exists():
        rows = json.loads(results.read_text())["results"]
        lines += ["| step | check | result | detail |", "|---|---|---|---|"]
        for r in rows:
            detail = str(r.get("detail", "")).replace("|", "/").replace("\n", " ")[:260]
            lines.append(f"| {r['step']} | {r['check']} | {r['status']} | {detail} |")
        counts = {s: sum(1 for x in rows if x["status"] == s) for s in ("PASS", "FAIL", "SKIP")}
        lines.append(f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP\n")
        smi = next((r.get("table") for r in rows if r.get("table")), None)
        if smi:
            lines += ["| field | nvidia-smi | GET gpus | same |", "|---|---|---|---|"]
            for t in smi:
                same = {True: "yes", False: "NO", None: "~ (live value)"}[t["ok"]]
                lines.append(f"| {t['field']} | {t['nvidia-smi']} | {t['GET gpus']} | {same} |")
            lines.append("")
    bench = out / "bench.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        lines += [
            f"Bench ({b['duration']} s windows, {b['cpus']} CPUs, Python {b['python']}"
            f"{', fake NVML ' + b['fake_nvml'] if b['fake_nvml'] else ', real NVML'}):",
            "",
            b["table"],
            "",
        ]
        for r in b["ratios"]:

            def x(key, r=r):
                a, v = r[key + "_values"]
                return f"x{r[key]:.1f}" if r[key] is not None else f"{v} vs {a}"

            lines.append(
                f"- nvdashboard {r['nvdashboard']} / jupyter_gpuenv panel, {r['clients']} client(s): "
                f"loop blocked beyond 1 ms {x('blocked_ms_per_s')}, wake-ups >1 ms late "
                f"{x('lag_over_1ms')}, worst lag {x('lag_max_ms')}, p99 lag {x('lag_p99_ms')}, "
                f"server CPU {x('cpu_ms_per_s')}, loop-thread CPU {x('loop_cpu_ms_per_s')}"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Footprint of the platform on kind: requested CPU and memory of values-local.yaml idle and at the churn
training peak, kube-system included, from the full render with the real upstream charts
(``kpi.platform.footprint``). Prints a table and writes benchmarks/results/footprint.json; exits 1 when the
training peak would not fit a public GitHub runner (3.5 CPU / 12 GiB requested at most).

Run: .venv/bin/python benchmarks/footprint.py [ENV]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(env: str = "local") -> dict:
    from kpi.platform.chart import assemble
    from kpi.platform.footprint import footprint

    with tempfile.TemporaryDirectory() as folder:
        result = footprint(assemble(Path(folder)), env)
    print(f"{'component':44} {'phase':12} {'replicas':>8} {'cpu':>6} {'MiB':>6}")
    for row in result["components"]:
        print(f"{row['component']:44} {row['phase']:12} {row['replicas']:>8} {row['cpu']:>6.2f} {row['memory_mib']:>6}")
    for key in ("kube_system", "platform_idle", "training_extra", "training_peak_with_kube_system"):
        print(f"{key:32} {result[key]['cpu']:.2f} CPU  {result[key]['memory_gib']:.2f} GiB")
    print(f"fits a GitHub runner (<= {result['runner_limits']['cpu']} CPU, {result['runner_limits']['memory_gib']} GiB):"
          f" {result['fits_runner']}")
    out = ROOT / "benchmarks" / "results" / ("footprint.json" if env == "local" else f"footprint-{env}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main(*sys.argv[1:2])["fits_runner"] else 1)

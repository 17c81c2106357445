"""A no-change rerun of `gla run` as a share of the first run (goal <= 5%).

Default: a synthetic matrix (``--models`` × ``--datasets`` cells, N rows × C classes)
through ``gla run CONFIG --stages analyze,report`` on a fresh results folder, then the
same command again with nothing changed, then once more after one cell's logits were
rewritten (only that cell is recomputed). With ``--config PATH`` it instead runs
``gla run PATH`` (all stages) twice as given — use a config whose store does not exist
yet to measure a real first run (e.g. the demo).

    .venv/bin/python bench/bench_rerun.py [--models 6] [--datasets 5] [--rows 10000] [--classes 100]
    .venv/bin/python bench/bench_rerun.py --config demo.toml
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GLA = str(REPO / ".venv" / "bin" / "gla")


def run(cmd: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}


def synthetic(a) -> None:
    from gla.pipeline.synthetic import write_cell

    work = Path(a.workdir)
    store = work / "store"
    cells = [(f"model-{i}", f"data-{j}") for i in range(a.models) for j in range(a.datasets)]
    marker = work / f".ok-{a.models}-{a.datasets}-{a.rows}-{a.classes}"
    if not marker.exists():
        shutil.rmtree(work, ignore_errors=True)
        for k, (m, d) in enumerate(cells):
            write_cell(store, m, d, num_classes=a.classes, fit_per_class=20, eval_rows=a.rows, seed=k)
        marker.write_text("ok")
    shutil.rmtree(store / "results", ignore_errors=True)
    shutil.rmtree(store / "report", ignore_errors=True)
    cfg = work / "run.toml"
    cfg.write_text(
        f'store = "store"\n[compute]\nworkers = {a.workers}\n'
        + "".join(f'[[models]]\nname = "model-{i}"\narch = "synthetic"\npretrained = "none"\n' for i in range(a.models))
        + "".join(f'[[datasets]]\nname = "data-{j}"\nkind = "synthetic"\n' for j in range(a.datasets))
    )
    cmd = [GLA, "run", str(cfg), "--stages", "analyze,report", "--json", "--no-progress"]
    print(f"bench_rerun: {len(cells)} synthetic cells, N={a.rows:,}, C={a.classes}, {a.workers} workers")
    first, _ = run(cmd)
    second, out = run(cmd)
    assert out["analysed"] == [], out
    write_cell(store, "model-0", "data-0", num_classes=a.classes, fit_per_class=20, eval_rows=a.rows, seed=99)
    third, out3 = run(cmd)
    print(f"  first run (analyse {len(cells)} cells + report): {first:7.2f} s")
    print(f"  no-change rerun:                            {second:7.2f} s  = {100 * second / first:5.1f}% "
          "of the first (goal <= 5%)")
    print(f"  rerun after one cell's logits changed:      {third:7.2f} s  (recomputed: {', '.join(out3['analysed'])})")
    print(f"command: .venv/bin/python bench/bench_rerun.py --models {a.models} --datasets {a.datasets} "
          f"--rows {a.rows} --classes {a.classes}")


def from_config(a) -> None:
    cmd = [GLA, "run", a.config, "--json", "--no-progress"]
    print(f"bench_rerun: {' '.join(cmd[1:])}")
    first, _ = run(cmd)
    second, out = run(cmd)
    print(f"  first run:        {first:7.2f} s")
    print(f"  no-change rerun:  {second:7.2f} s  = {100 * second / first:5.1f}% of the first (goal <= 5%)"
          f"; analysed again: {out.get('analysed')}, extracted again: {out.get('extracted')}")
    print(f"command: .venv/bin/python bench/bench_rerun.py --config {a.config}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="measure `gla run CONFIG` (all stages) instead of a synthetic matrix")
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--datasets", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "rerun"))
    a = ap.parse_args()
    (from_config if a.config else synthetic)(a)


if __name__ == "__main__":
    main()

"""Model look-ups without network: how long an uncached pretrained tag takes to fail, and
what `gla models` costs next to importing open_clip.

For each case it prints the wall time, the exit code and how many lines reached stderr:

- ``gla extract`` (and ``gla run``, which checks before loading torch) of a one-image config whose model is an open_clip tag (default
  ViT-B-32 / laion2b_s34b_b79k) with an empty Hugging Face cache and ``HF_HUB_OFFLINE=1``
  (no request at all), then without it (gla probes the hub for ``GLA_HUB_PROBE_TIMEOUT``
  seconds; with no network open_clip's own retries took 58 s before this check existed);
- ``gla models`` (reads open_clip's registry without torch) vs ``python -c "import open_clip"``.

    .venv/bin/python bench/bench_offline_models.py [--arch ViT-B-32] [--tag laion2b_s34b_b79k] [--repeat 3]

Without ``HF_HUB_OFFLINE`` and with network, the second case would start a real download:
the script skips it unless ``--probe`` is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int, int]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t, p.returncode, len(p.stderr.strip().splitlines())


def report(name: str, runs: list[tuple[float, int, int]]) -> None:
    times = [r[0] for r in runs]
    print(f"{name:<48} median {statistics.median(times):6.2f} s  (min {min(times):.2f})  "
          f"exit {runs[0][1]}  stderr lines {runs[0][2]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--tag", default="laion2b_s34b_b79k")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--probe", action="store_true", help="also time the case without HF_HUB_OFFLINE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gla-bench-offline-") as tmp:
        work = Path(tmp)
        (work / "imgs" / "a").mkdir(parents=True)
        (work / "imgs" / "b").mkdir(parents=True)
        subprocess.run([str(BIN / "python"), "-c",
                        "from PIL import Image; [Image.new('RGB', (8, 8)).save(f'imgs/{c}/{i}.png') "
                        "for c in 'ab' for i in range(2)]"],
                       cwd=work, check=True)
        (work / "c.toml").write_text(
            f'store = "S"\n[[models]]\nname = "m"\narch = "{args.arch}"\npretrained = "{args.tag}"\n'
            '[[datasets]]\nname = "d"\nkind = "imagefolder"\nroot = "imgs"\n'
            '[datasets.splits]\nval = { per_class = 1 }\ntest = { rest = true }\n')
        env = {**os.environ, "HF_HOME": str(work / "hf"), "OMP_NUM_THREADS": "1"}
        extract = [str(BIN / "gla"), "extract", "c.toml"]
        report(f"gla extract, uncached {args.tag}, HF_HUB_OFFLINE=1",
               [timed(extract, work, {**env, "HF_HUB_OFFLINE": "1"}) for _ in range(args.repeat)])
        report(f"gla run, uncached {args.tag}, HF_HUB_OFFLINE=1",
               [timed([str(BIN / "gla"), "run", "c.toml", "--no-progress"], work, {**env, "HF_HUB_OFFLINE": "1"})
                for _ in range(args.repeat)])
        if args.probe:
            report(f"gla extract, uncached {args.tag}, probe",
                   [timed(extract, work, env) for _ in range(args.repeat)])
        report("gla models", [timed([str(BIN / "gla"), "models"], work, env) for _ in range(args.repeat)])
        report("python -c 'import open_clip'",
               [timed([str(BIN / "python"), "-c", "import open_clip"], work, env) for _ in range(args.repeat)])
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

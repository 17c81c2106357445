"""The analysis install needs no torch: ``analyze`` and the ``gla import``/``gla analyze``
path work with torch, torchvision and open_clip unimportable, and ``import gla.pipeline.cli``
does not load torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys
# A None entry in sys.modules is what Python reports as "not installed": `import torch`
# raises ImportError and importlib.util.find_spec("torch") returns None (libraries that
# probe for optional torch support, such as polars, see it as absent).
BLOCKED = ("torch", "torchvision", "open_clip", "open_clip_torch")
for _m in list(sys.modules):
    if _m.split(".")[0] in BLOCKED:
        del sys.modules[_m]
for _m in BLOCKED:
    sys.modules[_m] = None
"""


def _run(code: str, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_blocker_really_blocks(tmp_path):
    out = _run(BLOCKER + textwrap.dedent("""
        import json
        try:
            import torch  # noqa: F401
            ok = False
        except ImportError:
            ok = True
        import importlib.util
        print(json.dumps({"blocked": ok and importlib.util.find_spec("open_clip") is None}))
    """), tmp_path)
    assert out["blocked"]


def test_analysis_path_without_torch(tmp_path):
    out = _run(BLOCKER + textwrap.dedent("""
        import json, sys
        import numpy as np
        import gla.analyze, gla.analyze.priors, gla.analyze.adjust, gla.analyze.stats, gla.analyze.cell  # noqa: F401
        import gla.pipeline.store, gla.pipeline.analysis, gla.pipeline.results  # noqa: F401
        from gla.analyze.synthetic import planted_world
        from gla.pipeline.cli import main

        for split, n, seed in (("val", 30, 1), ("test", 60, 2)):
            w = planted_world(8, n, seed=seed)
            np.save(f"y_{split}.npy", w.labels)
            np.save(f"zs_{split}.npy", w.zs)
            np.save(f"ft_{split}.npy", w.ft)
            rc = main(["import", "--store", "S", "--model", "m", "--dataset", "d",
                       "--split", split, "--labels", f"y_{split}.npy",
                       "--zs", f"zs_{split}.npy", "--ft", f"ft_{split}.npy"])
            assert rc == 0, rc
        np.save("counts.npy", np.full(8, 100))
        assert main(["import", "--store", "S", "--dataset", "d", "--train-counts", "counts.npy"]) == 0
        rc = main(["analyze", "--store", "S", "--quiet"])
        from gla.pipeline import publication
        s = publication.read_table("S", "summary")
        loaded = sorted(m for m, mod in sys.modules.items()
                        if m.split(".")[0] in BLOCKED and mod is not None)
        print(json.dumps({"rc": rc, "methods": sorted(s["method"].to_list()), "loaded": loaded}))
    """), tmp_path)
    assert out["rc"] == 0
    assert out["methods"] == sorted(["zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla"])
    assert out["loaded"] == []


def test_pipeline_cli_does_not_import_torch(tmp_path):
    out = _run("""
        import json, sys
        import gla.pipeline.cli
        gla.pipeline.cli.build_parser()  # imports every sub-command module
        import gla.pipeline.store, gla.pipeline.analysis, gla.pipeline.results, gla.pipeline.importer  # noqa: F401
        import gla.analyze  # noqa: F401
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip"))
        print(json.dumps({"heavy": heavy}))
    """, tmp_path)
    assert out["heavy"] == []

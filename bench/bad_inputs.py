"""The bad-input battery as one figure: how many of its cases end in one stderr line
naming the file/column/option, exit code 2, and every byte of the store (and inputs)
unchanged. The cases are those of tests/test_bad_inputs.py (tests/bad_inputs_cases.py).

    .venv/bin/python bench/bad_inputs.py [-v] [-k SUBSTRING]

Prints each failing case with what went wrong, then "N of M bad inputs: one line +
exit 2 + store unchanged".
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bad_inputs_cases import all_cases, build_world, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case's stderr line")
    ap.add_argument("-k", default="", help="only cases whose name holds this text")
    args = ap.parse_args()
    has_torch = importlib.util.find_spec("torch") is not None
    cases = [c for c in all_cases() if args.k in c.name and (has_torch or not c.torch)]
    t0 = time.perf_counter()
    ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        template = build_world(Path(tmp) / "template")
        for i, case in enumerate(cases):
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            out = run_case(case, template, work)
            logging.getLogger().handlers.clear()  # gla extract configures logging per call
            problems = out.problems()
            ok += not problems
            if problems:
                print(f"FAIL {case.name}: {'; '.join(problems)}")
                print("     " + "\n     ".join(out.stderr.strip().splitlines()[-3:] or ["(no stderr)"]))
            elif args.verbose:
                print(f"ok   {case.name}: {out.lines[0]}")
    print(f"{ok} of {len(cases)} bad inputs: one line + exit 2 + store unchanged "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0 if ok == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())

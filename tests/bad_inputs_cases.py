"""The bad-input battery: one list of cases, each a way to break a CLI call, a config or
an input file, run against a small world (a store with two analysed cells, good input
arrays, an image folder and a sound run config).

Each case must end with exit code 2, exactly one line on stderr holding every needle,
and every byte under the world (store, inputs, config) as it was. Used by
``tests/test_bad_inputs.py`` (one test per case) and ``bench/bad_inputs.py`` (the
"N of M" figure).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gla.pipeline.cli import main

ASSETS = Path(__file__).resolve().parent.parent / "extract" / "demo" / "assets"
C = 5  # classes of the imported cells

CONFIG = """\
store = "store"
[analysis]
estimators = ["gla"]
fit_split = "val"
eval_split = "test"
[[models]]
name = "tiny"
arch = "gla-tiny-clip"
model_config = "{assets}/gla-tiny-clip.json"
pretrained = "{assets}/gla-tiny-clip.safetensors"
[[datasets]]
name = "pets"
kind = "imagefolder"
root = "images"
[datasets.splits]
val = {{ per_class = 2 }}
test = {{ rest = true }}
"""


# --------------------------------------------------------------------------- the world


def build_world(root: Path) -> Path:
    """The template world (built once; each case runs on a copy)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    inp = root / "in"
    inp.mkdir(parents=True)
    for split, n in (("val", 40), ("test", 120)):
        y = np.concatenate([np.arange(C), rng.integers(0, C, n - C)])
        np.save(inp / f"y_{split}.npy", y)
        np.save(inp / f"zs_{split}.npy", rng.standard_normal((n, C)).astype(np.float32))
        np.save(inp / f"ft_{split}.npy", rng.standard_normal((n, C)).astype(np.float32))
    np.save(inp / "y.npy", np.concatenate([np.arange(C), rng.integers(0, C, 25)]))
    np.save(inp / "zs.npy", rng.standard_normal((30, C)).astype(np.float32))
    np.save(inp / "ft.npy", rng.standard_normal((30, C)).astype(np.float32))
    (inp / "names.txt").write_text("".join(f"class_{k}\n" for k in range(C)))
    (inp / "counts.csv").write_text("class_index,count\n" + "".join(f"{k},{10 + k}\n" for k in range(C)))
    store = root / "store"
    for m in ("m1", "m2"):
        for split in ("val", "test"):
            _call(["import", "--store", store, "--model", m, "--dataset", "d", "--split", split,
                   "--labels", inp / f"y_{split}.npy", "--zs", inp / f"zs_{split}.npy",
                   "--ft", inp / f"ft_{split}.npy"])
    _call(["import", "--store", store, "--dataset", "d", "--train-counts", inp / "counts.csv"])
    _call(["analyze", "--store", store, "--workers", "0", "--quiet"])
    for ci, n in enumerate((6, 5, 7)):
        d = root / "images" / f"class{ci}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (ci * 50, i, 0)).save(d / f"{i:02d}.png")
    (root / "run.toml").write_text(CONFIG.format(assets=ASSETS))
    return root


def _call(argv) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main([str(a) for a in argv])
    if rc != 0:
        raise RuntimeError(f"world set-up failed: {argv}: {out.getvalue()}")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file and the name of every folder and link under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


# --------------------------------------------------------------------------- a case


@dataclass
class Case:
    name: str
    argv: list[str]  # "{w}" stands for the world folder
    needles: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    torch: bool = False  # gla extract: needs the extract extra (torch, open_clip), else skipped


@dataclass
class Outcome:
    case: Case
    rc: int | None
    stderr: str
    error: str = ""  # traceback of an exception that escaped main()
    changed: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()

    def problems(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"escaped main(): {self.error.strip().splitlines()[-1]}")
        elif self.rc != 2:
            out.append(f"exit code {self.rc}")
        if len(self.lines) != 1:
            out.append(f"{len(self.lines)} stderr lines")
        else:
            out += [f"line lacks {n!r}" for n in self.case.needles if n not in self.lines[0]]
        if self.changed:
            out.append(f"world changed: {', '.join(self.changed[:4])}")
        return out


def run_case(case: Case, template: Path, work: Path) -> Outcome:
    """Copy the world, apply the case's set-up, run the CLI in this process, compare bytes."""
    w = work / "w"
    shutil.copytree(template, w, symlinks=True)
    if case.setup is not None:
        case.setup(w)
    before = snapshot(w)
    argv = [a.replace("{w}", str(w)) for a in case.argv]
    err, out = io.StringIO(), io.StringIO()
    rc, error = None, ""
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the battery looks for
            error = traceback.format_exc()
    after = snapshot(w)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return Outcome(case, rc, err.getvalue() + (error if error else ""), error, changed)


# --------------------------------------------------------------------------- set-up helpers


def npy(name: str, make: Callable[[np.random.Generator], np.ndarray]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        np.save(w / "in" / name, make(np.random.default_rng(1)), allow_pickle=True)
    return setup


def raw(name: str, data: bytes | str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def parquet(name: str, columns: dict) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        pq.write_table(pa.table(columns), w / "in" / name)
    return setup


def cfg(*edits: tuple[str, str], extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Edit run.toml: each (old, new) replaces the first occurrence (old must be there)."""
    def setup(w: Path) -> None:
        p = w / "run.toml"
        text = p.read_text()
        for old, new in edits:
            assert old in text, old
            text = text.replace(old, new, 1)
        p.write_text(text)
        if extra is not None:
            extra(w)
    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        for s in setups:
            s(w)
    return setup


def store_file(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / "store" / rel
        p.write_bytes(change(p.read_bytes()))
    return setup


def _damage_published(table: str) -> Callable[[Path], None]:
    """Garbage in a published table: the newest committed run's file (publication by
    run, results/runs/<id>.json), else results/<table>.parquet."""
    def setup(w: Path) -> None:
        runs = w / "store" / "results" / "runs"
        recs = sorted(runs.glob("*.json")) if runs.is_dir() else []
        if recs:
            path = runs / recs[-1].stem / json.loads(recs[-1].read_text())["tables"][table]["file"]
        else:
            path = w / "store" / "results" / f"{table}.parquet"
        path.write_bytes(b"garbage")
    return setup


def first(pattern: str) -> Callable[[Path], Path]:
    return lambda w: sorted((w / "store").glob(pattern))[0]


def damage(pattern: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = first(pattern)(w)
        p.write_bytes(change(p.read_bytes()))
    return setup


def _unlabelled_split(w: Path) -> None:
    """Split ``dep`` of m1/d imported without labels (deployment data)."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["import", "--store", f"{w}/store", "--model", "m1", "--dataset", "d", "--split", "dep",
                     "--zs", f"{w}/in/zs.npy", "--ft", f"{w}/in/ft.npy"])
    assert code == 0


# --------------------------------------------------------------------------- argv builders

S = "{w}/store"
IN = "{w}/in"


def imp(split: str = "new", **opts: str | None) -> list[str]:
    """gla import of split ``split`` of m1/d from the good 30-row arrays, with overrides."""
    base = {"store": S, "model": "m1", "dataset": "d", "split": split, "labels": f"{IN}/y.npy",
            "zs": f"{IN}/zs.npy", "ft": f"{IN}/ft.npy"}
    base.update(opts)
    argv = ["import"]
    for k, v in base.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", v]
    return argv


def counts(file: str, **opts: str | None) -> list[str]:
    base = {"store": S, "dataset": "d", "train_counts": file}
    base.update(opts)
    argv = ["import"]
    for k, v in base.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", v]
    return argv


def ana(*extra: str) -> list[str]:
    return ["analyze", "--store", S, "--workers", "0", "--quiet", *extra]


RUN = "{w}/run.toml"


def _bad_pickle(rng):
    return np.array([{"a": 1}] * 30, dtype=object)


# --------------------------------------------------------------------------- the cases


def import_cases() -> list[Case]:
    f = lambda x: f"{IN}/{x}"  # noqa: E731
    return [
        # missing or unreadable files
        Case("import: labels file missing", imp(labels=f("nope.npy")), ("nope.npy", "not found")),
        Case("import: zs file missing", imp(zs=f("nope.npy")), ("nope.npy", "not found")),
        Case("import: ft file missing", imp(ft=f("nope.npy")), ("nope.npy", "not found")),
        Case("import: classnames file missing", imp(classnames=f("nope.txt")), ("nope.txt",)),
        Case("import: sample-ids file missing", imp(sample_ids=f("nope.txt")), ("nope.txt",)),
        Case("import: labels is a folder", imp(labels=f("dir.npy")), ("dir.npy",),
             lambda w: (w / "in" / "dir.npy").mkdir()),
        Case("import: zs is a folder", imp(zs=f("dir.npy")), ("dir.npy",), lambda w: (w / "in" / "dir.npy").mkdir()),
        Case("import: truncated .npy", imp(zs=f("cut.npy")), ("cut.npy",),
             lambda w: (w / "in" / "cut.npy").write_bytes((w / "in" / "zs.npy").read_bytes()[:200])),
        Case("import: garbage .npy", imp(zs=f("junk.npy")), ("junk.npy",), raw("junk.npy", b"not numpy at all")),
        Case("import: empty .npy", imp(labels=f("empty.npy")), ("empty.npy",), raw("empty.npy", b"")),
        Case("import: pickled object labels", imp(labels=f("obj.npy")), ("obj.npy",), npy("obj.npy", _bad_pickle)),
        Case("import: unsupported suffix", imp(zs=f("zs.csv")), ("zs.csv", "unsupported file type"),
             raw("zs.csv", "1,2\n3,4\n")),
        Case("import: .npy with a key", imp(zs=f("zs.npy") + ":x"), ("zs.npy", "no keys")),
        Case("import: npz with two arrays", imp(zs=f("two.npz")), ("two.npz", "name one"),
             lambda w: np.savez(w / "in" / "two.npz", a=np.zeros((30, C)), b=np.zeros((30, C)))),
        Case("import: npz key not found", imp(zs=f("one.npz") + ":b"), ("one.npz", "key b not found"),
             lambda w: np.savez(w / "in" / "one.npz", a=np.zeros((30, C)))),
        Case("import: garbage npz", imp(zs=f("junk.npz")), ("junk.npz",), raw("junk.npz", b"PK\x03\x04garbage")),
        Case("import: garbage parquet", imp(zs=f("junk.parquet")), ("junk.parquet",),
             raw("junk.parquet", b"PAR1 not really")),
        Case("import: parquet column missing", imp(zs=f("zs.parquet") + ":nope"), ("zs.parquet", "nope"),
             parquet("zs.parquet", {"a": [[1.0] * C] * 30})),
        Case("import: parquet ragged list column", imp(zs=f("rag.parquet")), ("rag.parquet", "row 1"),
             parquet("rag.parquet", {"zs": [[1.0] * C, [1.0] * 3] + [[1.0] * C] * 28})),
        Case("import: parquet null logits", imp(zs=f("nul.parquet")), ("nul.parquet", "null"),
             parquet("nul.parquet", {"zs": [[1.0] * C, None] + [[1.0] * C] * 28})),
        Case("import: parquet string labels", imp(labels=f("sl.parquet")), ("sl.parquet",),
             parquet("sl.parquet", {"label": ["a"] * 30})),
        Case("import: parquet null labels", imp(labels=f("nl.parquet")), ("nl.parquet", "null"),
             parquet("nl.parquet", {"label": [0, None] + [1] * 28})),
        Case("import: parquet labels, several columns", imp(labels=f("lc.parquet")), ("lc.parquet", "name one"),
             parquet("lc.parquet", {"a": [0] * 30, "b": [1] * 30})),
        Case("import: parquet string logit column", imp(zs=f("sz.parquet")), ("sz.parquet", "not numeric"),
             parquet("sz.parquet", {"a": [1.0] * 30, "b": ["x"] * 30})),
        Case("import: parquet two list columns", imp(zs=f("tl.parquet")), ("tl.parquet", "several list columns"),
             parquet("tl.parquet", {"a": [[1.0] * C] * 30, "b": [[1.0] * C] * 30})),
        # shapes and dtypes
        Case("import: labels 2-D", imp(labels=f("y2.npy")), ("y2.npy", "1-D"), npy("y2.npy", lambda r: np.zeros((30, 2), int))),
        Case("import: labels 0-D", imp(labels=f("y0.npy")), ("y0.npy", "1-D"), npy("y0.npy", lambda r: np.array(3))),
        Case("import: zs 1-D", imp(zs=f("z1.npy")), ("z1.npy", "2-D"), npy("z1.npy", lambda r: np.zeros(30))),
        Case("import: zs 3-D", imp(zs=f("z3.npy")), ("z3.npy", "2-D"), npy("z3.npy", lambda r: np.zeros((30, C, 2)))),
        Case("import: ft 1-D", imp(ft=f("f1.npy")), ("f1.npy", "2-D"), npy("f1.npy", lambda r: np.zeros(30))),
        Case("import: zs one column", imp(zs=f("zc.npy"), ft=None), ("zc.npy", "at least 2"),
             npy("zc.npy", lambda r: np.zeros((30, 1), np.float32))),
        Case("import: zs no rows", imp(zs=f("z0.npy"), labels=f("y00.npy"), ft=f("z0.npy")), ("z0.npy",),
             both(npy("z0.npy", lambda r: np.zeros((0, C), np.float32)), npy("y00.npy", lambda r: np.zeros(0, int)))),
        Case("import: labels float non-integer", imp(labels=f("yf.npy")), ("yf.npy", "integers"),
             npy("yf.npy", lambda r: np.full(30, 0.5))),
        Case("import: labels NaN", imp(labels=f("yn.npy")), ("yn.npy", "finite"),
             npy("yn.npy", lambda r: np.r_[np.nan, np.zeros(29)])),
        Case("import: labels Inf", imp(labels=f("yi.npy")), ("yi.npy", "finite"),
             npy("yi.npy", lambda r: np.r_[np.inf, np.zeros(29)])),
        Case("import: labels huge", imp(labels=f("yh.npy")), ("yh.npy",), npy("yh.npy", lambda r: np.r_[2.0**60, np.zeros(29)])),
        Case("import: labels uint64 huge", imp(labels=f("yu.npy")), ("yu.npy",),
             npy("yu.npy", lambda r: np.r_[np.uint64(2**63), np.zeros(29, np.uint64)])),
        Case("import: labels strings", imp(labels=f("ys.npy")), ("ys.npy",), npy("ys.npy", lambda r: np.array(["a"] * 30))),
        Case("import: labels bool", imp(labels=f("yb.npy")), ("yb.npy",), npy("yb.npy", lambda r: np.ones(30, bool))),
        Case("import: labels complex", imp(labels=f("yc.npy")), ("yc.npy",), npy("yc.npy", lambda r: np.zeros(30, complex))),
        Case("import: zs strings", imp(zs=f("zstr.npy")), ("zstr.npy",), npy("zstr.npy", lambda r: np.full((30, C), "x"))),
        Case("import: zs complex", imp(zs=f("zcx.npy")), ("zcx.npy",), npy("zcx.npy", lambda r: np.zeros((30, C), complex))),
        Case("import: zs bool", imp(zs=f("zb.npy")), ("zb.npy",), npy("zb.npy", lambda r: np.ones((30, C), bool))),
        Case("import: zs structured dtype", imp(zs=f("zrec.npy")), ("zrec.npy",),
             npy("zrec.npy", lambda r: np.zeros((30, C), dtype=[("a", "f4")]))),
        Case("import: zs NaN", imp(zs=f("zn.npy")), ("zn.npy", "NaN", "row 3"),
             npy("zn.npy", lambda r: np.where(np.arange(30 * C).reshape(30, C) == 3 * C + 1, np.nan, 0.0))),
        Case("import: zs Inf", imp(zs=f("zi.npy")), ("zi.npy", "Inf"), npy("zi.npy", lambda r: np.full((30, C), -np.inf))),
        Case("import: ft NaN", imp(ft=f("fn.npy")), ("fn.npy", "NaN"), npy("fn.npy", lambda r: np.full((30, C), np.nan))),
        Case("import: zs beyond float32", imp(zs=f("zbig.npy")), ("zbig.npy", "float32"),
             npy("zbig.npy", lambda r: np.full((30, C), 1e300))),
        Case("import: labels shorter than zs", imp(labels=f("ysh.npy")), ("ysh.npy", "29 labels"),
             npy("ysh.npy", lambda r: np.zeros(29, int))),
        Case("import: ft other width", imp(ft=f("fw.npy")), ("fw.npy", "columns"), npy("fw.npy", lambda r: np.zeros((30, 4)))),
        Case("import: ft other rows", imp(ft=f("fr.npy")), ("fr.npy", "rows"), npy("fr.npy", lambda r: np.zeros((31, C)))),
        Case("import: label out of range", imp(labels=f("yo.npy")), ("yo.npy", "out of range"),
             npy("yo.npy", lambda r: np.r_[C, np.zeros(29, int)])),
        Case("import: label -2", imp(labels=f("ym.npy")), ("ym.npy", "out of range"), npy("ym.npy", lambda r: np.r_[-2, np.zeros(29, int)])),
        # names
        Case("import: model name with a slash", imp(model="a/b"), ("--model",)),
        Case("import: model name ..", imp(model=".."), ("--model",)),
        Case("import: dataset name empty", imp(dataset=""), ("--dataset",)),
        Case("import: split name with a space", imp(split="my split"), ("--split",)),
        Case("import: split name absolute", imp(split="/etc"), ("--split",)),
        # against the cell
        Case("import: zs width differs from the cell", imp(split="val", zs=f("z4.npy"), ft=f("f4.npy"), labels=f("y4.npy")),
             ("z4.npy", "4 columns", "5 classes"),
             both(npy("z4.npy", lambda r: np.zeros((30, 4), np.float32)), npy("f4.npy", lambda r: np.zeros((30, 4), np.float32)),
                  npy("y4.npy", lambda r: np.arange(30) % 4))),
        Case("import: ft missing where the cell has it", imp(ft=None), ("--ft",)),
        Case("import: ft given where the cell has none", imp(model="m3", dataset="d", split="new2"),
             ("--ft",), lambda w: _call(imp(model="m3", ft=None, split="first", labels=f"{w}/in/y.npy",
                                            zs=f"{w}/in/zs.npy", store=f"{w}/store"))),
        Case("import: class names count", imp(classnames=f("n4.txt")), ("n4.txt", "4 class names"),
             raw("n4.txt", "a\nb\nc\nd\n")),
        Case("import: class names empty line", imp(classnames=f("ne.txt")), ("ne.txt", "empty class name"),
             raw("ne.txt", "a\n\nc\nd\ne\n")),
        Case("import: class names repeated", imp(classnames=f("nd.txt")), ("nd.txt", "twice"),
             raw("nd.txt", "a\nb\na\nd\ne\n")),
        Case("import: class names differ from the cell", imp(classnames=f("nx.txt")), ("nx.txt", "differ"),
             raw("nx.txt", "a\nb\nc\nd\ne\n")),
        Case("import: class names not UTF-8", imp(classnames=f("n8.txt")), ("n8.txt",), raw("n8.txt", b"\xff\xfe\x00a\n")),
        Case("import: sample ids count", imp(sample_ids=f("ids.txt")), ("ids.txt", "29 sample ids"),
             raw("ids.txt", "".join(f"s{i}\n" for i in range(29)))),
        Case("import: sample ids repeated", imp(sample_ids=f("ids.txt")), ("ids.txt", "twice"),
             raw("ids.txt", "".join(f"s{i % 29}\n" for i in range(30)))),
        Case("import: sample id used by another split", imp(sample_ids=f("ids.txt")), ("'val-0'", "already used", "unique in the cell"),
             raw("ids.txt", "".join(f"val-{i}\n" for i in range(30)))),
        Case("import: windows count", imp(window=f("win.txt")), ("win.txt", "29 windows"),
             raw("win.txt", "".join("w1\n" for _ in range(29)))),
        Case("import: window empty", imp(window=f("win.txt")), ("win.txt", "row 2", "empty"),
             raw("win.txt", "".join(("w1\n" if i != 2 else " \n") for i in range(30)))),
        Case("import: window neither file nor column", imp(window="month"), ("--window month",)),
        Case("import: window column missing from parquet", imp(zs=f("zw.parquet"), window="month"),
             ("--window month",), parquet("zw.parquet", {"zs": [[1.0] * C] * 30})),
        # usage
        Case("import: --zs without --split", imp(split=None), ("--split",)),
        Case("import: no --model", imp(model=None), ("--model",)),
        Case("import: no --store", imp(store=None), ("--store",)),
        Case("import: --train-counts with --zs", imp(train_counts=f("../in/counts.csv")), ("--train-counts",)),
        Case("import: store is a file", imp(store=f("y.npy")), ("y.npy",)),
        Case("import: bad input into a new store", imp(store="{w}/fresh", labels=f("nope.npy")), ("nope.npy",)),
        Case("import: bad names into a new store", imp(store="{w}/fresh", model="a/b"), ("--model",)),
    ]


def counts_cases() -> list[Case]:
    f = lambda x: f"{IN}/{x}"  # noqa: E731
    return [
        Case("counts: file missing", counts(f("nope.csv")), ("nope.csv", "not found")),
        Case("counts: CSV empty", counts(f("c.csv")), ("c.csv", "empty"), raw("c.csv", "")),
        Case("counts: CSV without class_index", counts(f("c.csv")), ("c.csv", "class_index"), raw("c.csv", "klass,count\n0,3\n")),
        Case("counts: CSV one column", counts(f("c.csv")), ("c.csv", "two columns"), raw("c.csv", "3\n4\n")),
        Case("counts: CSV text count", counts(f("c.csv")), ("c.csv", "line 3"), raw("c.csv", "class_index,count\n0,3\n1,many\n")),
        Case("counts: CSV fractional count", counts(f("c.csv")), ("c.csv", "line 2", "integer"),
             raw("c.csv", "class_index,count\n0,2.5\n1,3\n2,3\n3,3\n4,3\n")),
        Case("counts: CSV NaN count", counts(f("c.csv")), ("c.csv", "integer"), raw("c.csv", "class_index,count\n0,nan\n1,3\n")),
        Case("counts: CSV repeated class", counts(f("c.csv")), ("c.csv", "twice"),
             raw("c.csv", "class_index,count\n0,3\n0,4\n1,3\n2,3\n3,3\n4,3\n")),
        Case("counts: CSV class out of range", counts(f("c.csv")), ("c.csv", "out of range"),
             raw("c.csv", "class_index,count\n0,3\n1,3\n2,3\n3,3\n4,3\n9,3\n")),
        Case("counts: CSV negative class", counts(f("c.csv")), ("c.csv", "out of range"),
             raw("c.csv", "class_index,count\n-1,3\n1,3\n")),
        Case("counts: CSV negative count", counts(f("c.csv")), ("c.csv", ">= 0"),
             raw("c.csv", "class_index,count\n0,-3\n1,3\n2,3\n3,3\n4,3\n")),
        Case("counts: CSV not UTF-8", counts(f("c.csv")), ("c.csv",), raw("c.csv", b"\xff\xfe\xfa,\xfb\n")),
        Case("counts: npy all zero", counts(f("c.npy")), ("c.npy", "zero"), npy("c.npy", lambda r: np.zeros(C, int))),
        Case("counts: npy one class", counts(f("c.npy")), ("c.npy",), npy("c.npy", lambda r: np.array([4]))),
        Case("counts: npy 2-D", counts(f("c.npy")), ("c.npy", "1-D"), npy("c.npy", lambda r: np.ones((C, 2), int))),
        Case("counts: npy fractional", counts(f("c.npy")), ("c.npy", "integers"), npy("c.npy", lambda r: np.full(C, 1.5))),
        Case("counts: npy NaN", counts(f("c.npy")), ("c.npy", "finite"), npy("c.npy", lambda r: np.r_[np.nan, np.ones(C - 1)])),
        Case("counts: npy wrong length for the cells", counts(f("c.npy")), ("c.npy", "6 counts", "5 classes"),
             npy("c.npy", lambda r: np.ones(C + 1, int))),
        Case("counts: npy negative", counts(f("c.npy")), ("c.npy", ">= 0"), npy("c.npy", lambda r: np.r_[-1, np.ones(C - 1, int)])),
        Case("counts: class names count", counts(f("counts.csv"), classnames=f("n3.txt")), ("n3.txt", "3 class names"),
             raw("n3.txt", "a\nb\nc\n")),
        Case("counts: bad dataset name", counts(f("counts.csv"), dataset="../x"), ("--dataset",)),
        Case("counts: with --labels", counts(f("counts.csv"), labels=f("y.npy")), ("--labels",)),
    ]


def analyze_cases() -> list[Case]:
    f = lambda x: f"{IN}/{x}"  # noqa: E731
    return [
        Case("analyze: store missing", ["analyze", "--store", "{w}/nowhere", "--workers", "0"], ("nowhere", "--store")),
        Case("analyze: store is a file", ["analyze", "--store", f("y.npy"), "--workers", "0"], ("y.npy",)),
        Case("analyze: fit split is the eval split", ana("--fit-split", "test"), ("both 'test'", "--allow-fit-on-eval")),
        Case("analyze: unlabelled eval split without --target-estimator",
             ana("--eval-split", "dep", "--only", "model=m1,dataset=d"), ("'dep'", "--target-estimator"),
             _unlabelled_split),
        Case("analyze: fit split missing", ana("--fit-split", "vall"), ("'vall'", "--fit-split")),
        Case("analyze: eval split missing", ana("--eval-split", "tset"), ("'tset'", "--eval-split")),
        Case("analyze: unknown estimator", ana("--estimator", "glaa"), ("--estimator", "glaa")),
        Case("analyze: estimator twice", ana("--estimator", "gla", "--estimator", "gla"), ("--estimator",)),
        Case("analyze: bad temperature word", ana("--temperature", "hot"), ("--temperature",)),
        Case("analyze: negative temperature", ana("--temperature", "-1"), ("--temperature",)),
        Case("analyze: zero temperature", ana("--temperature", "0"), ("--temperature",)),
        Case("analyze: NaN temperature", ana("--temperature", "nan"), ("--temperature",)),
        Case("analyze: negative smoothing", ana("--smoothing", "-1"), ("--smoothing",)),
        Case("analyze: NaN smoothing", ana("--smoothing", "nan"), ("--smoothing",)),
        Case("analyze: text smoothing", ana("--smoothing", "lots"), ("--smoothing",)),
        Case("analyze: text workers", ana("--workers", "two"), ("--workers",)),
        Case("analyze: negative workers", ana("--workers", "-1"), ("--workers",)),
        Case("analyze: negative threads", ana("--threads", "-2"), ("--threads",)),
        Case("analyze: zero threads per worker", ana("--threads-per-worker", "0"), ("--threads-per-worker",)),
        Case("analyze: negative worker timeout", ana("--worker-timeout", "-5"), ("--worker-timeout",)),
        Case("analyze: scheduler file missing", ana("--scheduler", "{w}/sched.json"), ("sched.json",)),
        Case("analyze: target prior missing", ana("--target-prior", f("nope.npy")), ("nope.npy",)),
        Case("analyze: target prior wrong length", ana("--target-prior", f("tp.npy")), ("tp.npy", "3"),
             npy("tp.npy", lambda r: np.full(3, 1 / 3))),
        Case("analyze: target prior 2-D", ana("--target-prior", f("tp.npy")), ("tp.npy", "1-D"),
             npy("tp.npy", lambda r: np.full((C, 2), 0.1))),
        Case("analyze: target prior negative", ana("--target-prior", f("tp.npy")), ("tp.npy",),
             npy("tp.npy", lambda r: np.r_[-0.2, np.full(C - 1, 0.3)])),
        Case("analyze: target prior NaN", ana("--target-prior", f("tp.npy")), ("tp.npy",),
             npy("tp.npy", lambda r: np.r_[np.nan, np.full(C - 1, 0.25)])),
        Case("analyze: target prior all zero", ana("--target-prior", f("tp.npy")), ("tp.npy",),
             npy("tp.npy", lambda r: np.zeros(C))),
        Case("analyze: target prior text file", ana("--target-prior", f("tp.txt")), ("tp.txt",), raw("tp.txt", "a\nb\n")),
        Case("analyze: fdr without label issues", ana("--fdr", "0.2"), ("--fdr",)),
        Case("analyze: fdr out of range", ana("--label-issues", "--fdr", "1.5"), ("--fdr",)),
        Case("analyze: label-issue split missing", ana("--label-issues", "--label-issue-split", "nope"), ("nope",)),
        Case("analyze: clean split missing", ana("--label-issues", "--clean-split", "nope"), ("nope",)),
        Case("analyze: bad target estimator", ana("--target-estimator", "mle"), ("--target-estimator",)),
        Case("analyze: --only bad syntax", ana("--only", "modl=m1"), ("--only",)),
        Case("analyze: --only matches nothing", ana("--only", "model=zz"), ("--only",)),
        Case("analyze: unknown option", ana("--bogus"), ("--bogus",)),
        Case("analyze: gate rule bad syntax", ana("--gate", "gla accuracy high"), ("--gate",)),
        Case("analyze: gate unknown metric", ana("--gate", "gla.acuracy >= 0.5"), ("--gate", "acuracy")),
        Case("analyze: gate bad operator", ana("--gate", "gla.accuracy == 0.5"), ("--gate",)),
        Case("analyze: gate relative on untestable metric", ana("--gate", "gla.nll <= previous"), ("--gate",)),
        Case("analyze: gate no method", ana("--gate", ".accuracy >= 0.5"), ("--gate",)),
        Case("analyze: gate alpha out of range", ana("--gate", "gla.accuracy >= 0.1", "--gate-alpha", "2"), ("--gate-alpha",)),
        Case("analyze: gate alpha text", ana("--gate-alpha", "x"), ("--gate-alpha",)),
        Case("analyze: gate number garbage", ana("--gate", "gla.accuracy >= 0.5.5"), ("--gate",)),
        # the store's own files
        Case("analyze: part overwritten in place", ana("--force"), ("part-test",),
             damage("logits/m1/d/part-test*.parquet", lambda b: b[:300] + bytes(64) + b[364:])),
        Case("analyze: part truncated", ana(), ("part-val",), damage("logits/m2/d/part-val*.parquet", lambda b: b[:-50])),
        Case("analyze: part replaced by garbage of the same size", ana(), ("part-val",),
             damage("logits/m1/d/part-val*.parquet", lambda b: bytes(len(b)))),
        Case("analyze: manifest not JSON", ana(), ("_split-test",), damage("logits/m1/d/_split-test*.json", lambda b: b"{")),
        Case("analyze: manifest a list", ana(), ("_split-val",), damage("logits/m2/d/_split-val*.json", lambda b: b"[]")),
        Case("analyze: manifest lists a missing part", ana(), ("part-",),
             lambda w: first("logits/m1/d/part-val*.parquet")(w).unlink()),
        Case("analyze: manifest without parts", ana(), ("_split-val",),
             damage("logits/m1/d/_split-val*.json", lambda b: json.dumps({"parts": "x"}).encode())),
        Case("analyze: cell record garbage", ana(), ("_cell.json",), store_file("logits/m1/d/_cell.json", lambda b: b"\x00\x01")),
        Case("analyze: cell record names a missing manifest", ana(), ("m1",),
             lambda w: [p.unlink() for p in (w / "store" / "logits" / "m1" / "d").glob("_split-test*.json")]),
        Case("analyze: manifest unreadable bytes", ana(), ("_split-val",), damage("logits/m2/d/_split-val*.json", lambda b: b"\xff\xfe")),
        Case("analyze: class counts miss a class, no smoothing", ana(), ("class_counts", "class 2", "--smoothing"),
             lambda w: (raw("c.csv", "class_index,count\n0,3\n1,4\n")(w), _call(counts(f"{w}/in/c.csv", store=f"{w}/store")))),
        Case("analyze: class counts garbage", ana("--force"), ("class_counts",),
             store_file("datasets/d/class_counts.parquet", lambda b: b[:10] + bytes(20) + b[30:])),
        Case("analyze: class counts truncated", ana("--force"), ("class_counts",),
             store_file("datasets/d/class_counts.parquet", lambda b: b[: len(b) // 2])),
    ]


def other_command_cases() -> list[Case]:
    return [
        Case("cli: no command", [], ("COMMAND",)),
        Case("cli: unknown command", ["analyse"], ("analyse",)),
        Case("cli: unknown top-level option", ["--verbose", "analyze", "--store", S], ("--verbose",)),
        Case("report: store missing", ["report", "--store", "{w}/nowhere"], ("nowhere",)),
        Case("report: negative max cells", ["report", "--store", S, "--max-cells", "-1"], ("--max-cells",)),
        Case("report: text max cells", ["report", "--store", S, "--max-cells", "all"], ("--max-cells",)),
        Case("report: diff-from missing", ["report", "--store", S, "--out", "{w}/r.html", "--diff-from", "{w}/nope"], ("nope",)),
        Case("report: out is a folder", ["report", "--store", S, "--out", "{w}/in"], ("in",)),
        Case("report: summary table garbage", ["report", "--store", S, "--out", "{w}/r.html"], ("summary",),
             damage("results/runs/*/summary.parquet", lambda b: b"garbage")),
        Case("diff: store missing", ["diff", "--store", "{w}/nowhere", "--from", S], ("nowhere",)),
        Case("diff: fdr out of range", ["diff", "--store", S, "--fdr", "0"], ("--fdr",)),
        Case("diff: no history and no --from", ["diff", "--store", S], ("--from",)),
        Case("diff: from folder missing", ["diff", "--store", S, "--from", "{w}/nope"], ("nope",)),
        Case("diff: against missing", ["diff", "--store", S, "--against", "{w}/nope"], ("nope", "--against")),
        Case("diff: against and from", ["diff", "--store", S, "--against", S, "--from", S], ("--from", "--against")),
        Case("diff: bad gate", ["diff", "--store", S, "--from", "{w}/store/results", "--gate", "x"], ("--gate",)),
        Case("diff: from a folder with no tables", ["diff", "--store", S, "--from", "{w}/in"], ("in",)),
        Case("init: out exists", ["init", "{w}/run.toml"], ("run.toml",)),
        Case("init: unknown option", ["init", "--bogus"], ("--bogus",)),
        Case("extract: bad shard", ["extract", RUN, "--shard", "3/2"], ("--shard",), torch=True),
        Case("extract: shard text", ["extract", RUN, "--shard", "a/b"], ("--shard",), torch=True),
        Case("extract: shard zero parts", ["extract", RUN, "--shard", "0/0"], ("--shard",), torch=True),
        Case("extract: --only matches nothing", ["extract", RUN, "--only", "model=zz"], ("--only",), torch=True),
        Case("run: unknown stage", ["run", RUN, "--stages", "extrct"], ("extrct", "did you mean 'extract'")),
        Case("run: --set without =", ["run", RUN, "--set", "analysis.fit_split"], ("--set",)),
        Case("run: --set unknown key", ["run", RUN, "--set", "analysis.fitsplit=val"], ("fitsplit",)),
        Case("run: --set wrong type", ["run", RUN, "--set", "compute.workers=many"], ("compute.workers",)),
        Case("run: --set into a value", ["run", RUN, "--set", "store.x=1"], ("store",)),
        Case("run: negative workers", ["run", RUN, "--workers", "-1"], ("--workers",)),
        Case("run: text workers", ["run", RUN, "--workers", "x"], ("--workers",)),
        Case("run: zero threads per worker", ["run", RUN, "--threads-per-worker", "0"], ("threads_per_worker",)),
        Case("run: negative worker timeout", ["run", RUN, "--worker-timeout", "-1"], ("worker_timeout",)),
        Case("run: --only bad syntax", ["run", RUN, "--only", "mdl=tiny"], ("--only",)),
        Case("run: --only matches nothing", ["run", RUN, "--only", "model=zz"], ("--only",)),
        Case("run: bad gate rule", ["run", RUN, "--gate", "gla.accuracy >>= 1"], ("--gate",)),
        Case("run: gate alpha", ["run", RUN, "--gate", "gla.accuracy >= 0.1", "--gate-alpha", "0"], ("alpha",)),
        Case("check: --set unknown table", ["check", RUN, "--set", "analysys.fit_split=val"], ("analysys",)),
        Case("check: --stages empty word", ["check", RUN, "--stages", "extract,report,plot"], ("plot",)),
    ]


def config_cases() -> list[Case]:
    """Config mistakes, found by ``gla check`` (also run by ``gla run`` / ``gla extract``)."""
    chk = ["check", RUN]
    out = [
        Case("config: file missing", ["check", "{w}/nope.toml"], ("nope.toml", "not found")),
        Case("config: is a folder", ["check", "{w}/in"], ("in",)),
        Case("config: not UTF-8", chk, ("run.toml",), lambda w: (w / "run.toml").write_bytes(b"store = \"\xff\xfe\"\n")),
        Case("config: empty file", chk, ("store",), lambda w: (w / "run.toml").write_text("")),
        Case("config: not TOML", chk, ("not valid TOML",), cfg(("[analysis]", "[analysis"))),
        Case("config: duplicate key", chk, ("run.toml",), cfg(("[analysis]", "[analysis]\nfit_split = \"val\""))),
        Case("config: store missing", chk, ("store", "required"), cfg(('store = "store"\n', ""))),
        Case("config: store is a file", chk, ("store",), cfg(('store = "store"', 'store = "in/y.npy"'))),
        Case("config: store a number", chk, ("store",), cfg(('store = "store"', "store = 3"))),
        Case("config: no models", chk, ("model",), cfg(("[[models]]", "[[xmodels]]"))),
        Case("config: models a table", chk, ("models",), cfg(("[[models]]", "[models]"))),
        Case("config: model without a name", chk, ("name", "required"), cfg(('name = "tiny"\n', ""))),
        Case("config: model without arch", chk, ("arch", "required"), cfg(('arch = "gla-tiny-clip"\n', ""))),
        Case("config: model name with a slash", chk, ("name",), cfg(('name = "tiny"', 'name = "a/b"'))),
        Case("config: dataset name ..", chk, ("..",), cfg(('name = "pets"', 'name = ".."'))),
        Case("config: dataset without kind", chk, ("kind", "required"), cfg(('kind = "imagefolder"\n', ""))),
        Case("config: unknown dataset kind", chk, ("kind", "did you mean 'imagefolder'"), cfg(('"imagefolder"', '"imagefoldr"'))),
        Case("config: unknown key in a model", chk, ("pretraind",), cfg(('pretrained = ', 'pretraind = "x"\npretrained = '))),
        Case("config: unknown top-level key", chk, ("stor",), cfg(('store = "store"', 'store = "store"\nstor = 1'))),
        Case("config: unknown split key", chk, ("per_clas",), cfg(("per_class = 2", "per_clas = 2"))),
        Case("config: split with no way", chk, ("exactly one",), cfg(("per_class = 2", ""))),
        Case("config: split per_class text", chk, ("per_class",), cfg(("per_class = 2", 'per_class = "two"'))),
        Case("config: split count negative", chk, ("count",), cfg(("per_class = 2", "count = -3"))),
        Case("config: two rest splits", chk, ("rest",), cfg(("per_class = 2", "rest = true"))),
        Case("config: split name with a slash", chk, ("split",), cfg(("val = {", '"v/al" = {'))),
        Case("config: split root missing", chk, ("nowhere",),
             cfg(("per_class = 2", 'root = "nowhere"'))),
        Case("config: split file missing", chk, ("nolist.txt",), cfg(("per_class = 2", 'file = "nolist.txt"'))),
        Case("config: estimators empty", chk, ("estimators",), cfg(('estimators = ["gla"]', "estimators = []"))),
        Case("config: estimators a string", chk, ("estimators",), cfg(('estimators = ["gla"]', 'estimators = "gla"'))),
        Case("config: estimator repeated", chk, ("estimators",), cfg(('estimators = ["gla"]', 'estimators = ["gla", "gla"]'))),
        Case("config: unknown estimator", chk, ("estimators", "glaa"), cfg(('estimators = ["gla"]', 'estimators = ["glaa"]'))),
        Case("config: bad temperature", chk, ("temperature",), cfg(("[analysis]", '[analysis]\ntemperature = "warm"'))),
        Case("config: negative smoothing", chk, ("smoothing",), cfg(("[analysis]", "[analysis]\nsmoothing = -1"))),
        Case("config: fdr 1", chk, ("fdr",), cfg(("[analysis]", "[analysis]\nfdr = 1.0"))),
        Case("config: unknown target estimator", chk, ("target_estimators",),
             cfg(("[analysis]", '[analysis]\ntarget_estimators = ["mle"]'))),
        Case("config: fit split is the eval split", chk, ("both 'test'", "allow_fit_on_eval"),
             cfg(('fit_split = "val"', 'fit_split = "test"'))),
        Case("config: fit split missing", chk, ("fit_split", "'vall'"), cfg(('fit_split = "val"', 'fit_split = "vall"'))),
        Case("config: eval split missing", chk, ("eval_split", "'tst'"), cfg(('eval_split = "test"', 'eval_split = "tst"'))),
        Case("config: fit split lacks a class", chk, ("fit split", "'class2'"),
             cfg(('root = "images"\n', ""), ("val = { per_class = 2 }\ntest = { rest = true }",
                                              'val = { root = "valimgs" }\ntest = { root = "images" }'),
                 extra=_partial_val)),
        Case("config: workers negative", chk, ("compute.workers",), cfg(("[analysis]", "[compute]\nworkers = -1\n[analysis]"))),
        Case("config: workers text", chk, ("compute.workers",), cfg(("[analysis]", '[compute]\nworkers = "x"\n[analysis]'))),
        Case("config: scheduler file missing", chk, ("compute.scheduler",),
             cfg(("[analysis]", '[compute]\nscheduler = "nosched.json"\n[analysis]'))),
        Case("config: batch size 0", chk, ("extract.batch_size",), cfg(("[analysis]", "[extract]\nbatch_size = 0\n[analysis]"))),
        Case("config: precision", chk, ("extract.precision",), cfg(("[analysis]", '[extract]\nprecision = "fp8"\n[analysis]'))),
        Case("config: on_error", chk, ("extract.on_error",), cfg(("[analysis]", '[extract]\non_error = "ignore"\n[analysis]'))),
        Case("config: gate rule bad", chk, ("gate",), cfg(("[analysis]", '[gate]\nrules = ["gla >= 1"]\n[analysis]'))),
        Case("config: gate alpha", chk, ("gate.alpha",), cfg(("[analysis]", "[gate]\nalpha = 2\n[analysis]"))),
        Case("config: gate rules a string", chk, ("gate.rules",), cfg(("[analysis]", '[gate]\nrules = "gla.accuracy >= 0"\n[analysis]'))),
        Case("config: model config missing", chk, ("model_config", "not found"), cfg(("gla-tiny-clip.json", "nope.json"))),
        Case("config: model config not JSON", chk, ("model_config", "not valid JSON"),
             cfg((f"{ASSETS}/gla-tiny-clip.json", "bad.json"), extra=lambda w: (w / "bad.json").write_text("{"))),
        Case("config: model config lacks keys", chk, ("model_config", "embed_dim"),
             cfg((f"{ASSETS}/gla-tiny-clip.json", "bad.json"), extra=lambda w: (w / "bad.json").write_text("{}"))),
        Case("config: checkpoint missing", chk, ("pretrained", "not found"), cfg(("gla-tiny-clip.safetensors", "nope.safetensors"))),
        Case("config: checkpoint truncated", chk, ("pretrained", "cut.safetensors"),
             cfg((f"{ASSETS}/gla-tiny-clip.safetensors", "cut.safetensors"),
                 extra=lambda w: (w / "cut.safetensors").write_bytes((ASSETS / "gla-tiny-clip.safetensors").read_bytes()[:5000]))),
        Case("config: checkpoint garbage", chk, ("pretrained", "not a safetensors"),
             cfg((f"{ASSETS}/gla-tiny-clip.safetensors", "junk.safetensors"),
                 extra=lambda w: (w / "junk.safetensors").write_bytes(b"junk" * 10))),
        Case("config: checkpoint empty", chk, ("pretrained",),
             cfg((f"{ASSETS}/gla-tiny-clip.safetensors", "empty.safetensors"),
                 extra=lambda w: (w / "empty.safetensors").write_bytes(b""))),
        Case("config: checkpoint is a folder", chk, ("pretrained",),
             cfg((f"{ASSETS}/gla-tiny-clip.safetensors", "in"))),
        Case("config: finetuned for an unknown dataset", chk, ("finetuned", "did you mean 'pets'"),
             cfg(("pretrained = ", 'finetuned = { petz = "ft.safetensors" }\npretrained = '))),
        Case("config: finetuned checkpoint missing", chk, ("finetuned", "not found"),
             cfg(("pretrained = ", 'finetuned = { pets = "noft.safetensors" }\npretrained = '))),
        Case("config: finetuned checkpoint garbage", chk, ("finetuned",),
             cfg(("pretrained = ", 'finetuned = { pets = "j.safetensors" }\npretrained = '),
                 extra=lambda w: (w / "j.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}garbage"))),
        Case("config: wiseft alpha out of range", chk, ("wiseft_alphas",), cfg(("pretrained = ", "wiseft_alphas = [1.5]\npretrained = "))),
        Case("config: unknown template set", chk, ("templates", "did you mean 'simple'"),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "simpel"'))),
        Case("config: templates file missing", chk, ("templates", "none.txt"),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "none.txt"'))),
        Case("config: template without a slot", chk, ("templates", "exactly one"),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "t.txt"'),
                 extra=lambda w: (w / "t.txt").write_text("a photo\n"))),
        Case("config: template with two slots", chk, ("templates",),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "t.txt"'),
                 extra=lambda w: (w / "t.txt").write_text("a {} of a {}\n"))),
        Case("config: templates empty", chk, ("templates", "no templates"),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "t.txt"'), extra=lambda w: (w / "t.txt").write_text("\n"))),
        Case("config: templates not UTF-8", chk, ("templates",),
             cfg(('name = "tiny"', 'name = "tiny"\ntemplates = "t.txt"'), extra=lambda w: (w / "t.txt").write_bytes(b"\xff{}\n"))),
        Case("config: dataset templates missing", chk, ("datasets['pets'].templates",),
             cfg(('root = "images"', 'root = "images"\ntemplates = "none.txt"'))),
        Case("config: dataset root missing", chk, ("nowhere",), cfg(('root = "images"', 'root = "nowhere"'))),
        Case("config: dataset root empty", chk, ("pets",), cfg(('root = "images"', 'root = "in"'))),
        Case("config: dataset root a file", chk, ("pets",), cfg(('root = "images"', 'root = "run.toml"'))),
        Case("config: dataset root unset", chk, ("pets",), cfg(('root = "images"\n', ""))),
        Case("config: one class only", chk, ("pets",),
             cfg(('root = "images"', 'root = "one"'),
                 extra=lambda w: shutil.copytree(w / "images" / "class0", w / "one" / "class0"))),
        Case("config: partial class names", chk, ("class_names", "'cat'"),
             cfg(('root = "images"', 'root = "images"\nclass_names = ["class0", "class1", "cat"]'))),
        Case("config: class names too few", chk, ("class_names",),
             cfg(('root = "images"', 'root = "images"\nclass_names = ["a", "b"]'))),
        Case("config: class names repeated", chk, ("twice",),
             cfg(('root = "images"', 'root = "images"\nclass_names = ["class0", "class0", "class1"]'))),
        Case("config: class mapping misses a folder", chk, ("class2",),
             cfg(('root = "images"', 'root = "images"\nclass_names = { class0 = "a", class1 = "b" }'))),
        Case("config: class mapping names an unknown folder", chk, ("class9",),
             cfg(('root = "images"', 'root = "images"\nclass_names = { class0 = "a", class1 = "b", class9 = "c" }'))),
        Case("config: class names and file", chk, ("class_names_file",),
             cfg(('root = "images"', 'root = "images"\nclass_names = ["a", "b", "c"]\nclass_names_file = "n.txt"'),
                 extra=lambda w: (w / "n.txt").write_text("a\nb\nc\n"))),
        Case("config: class names file missing", chk, ("class_names_file", "not found"),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.txt"'))),
        Case("config: class names file bad JSON", chk, ("class_names_file", "not valid JSON"),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.json"'), extra=lambda w: (w / "n.json").write_text("[1"))),
        Case("config: class names file JSON numbers", chk, ("class_names_file",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.json"'), extra=lambda w: (w / "n.json").write_text("[1, 2, 3]"))),
        Case("config: class names CSV header", chk, ("folder,name",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.csv"'), extra=lambda w: (w / "n.csv").write_text("a,b\n"))),
        Case("config: class names CSV short row", chk, ("class_names_file",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.csv"'),
                 extra=lambda w: (w / "n.csv").write_text("folder,name\nclass0\n"))),
        Case("config: class names file empty CSV", chk, ("class_names_file",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.csv"'), extra=lambda w: (w / "n.csv").write_text(""))),
        Case("config: class names file not UTF-8", chk, ("class_names_file",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.txt"'), extra=lambda w: (w / "n.txt").write_bytes(b"\xff\n"))),
        Case("config: class names file wrong count", chk, ("class",),
             cfg(('root = "images"', 'root = "images"\nclass_names_file = "n.txt"'), extra=lambda w: (w / "n.txt").write_text("a\nb\n"))),
        Case("config: per_class too many", chk, ("per_class = 6", "'class1' has only 5"), cfg(("per_class = 2", "per_class = 6"))),
        Case("config: count too many", chk, ("count = 99",), cfg(("per_class = 2", "count = 99"))),
        Case("config: limit_per_class 0", chk, ("limit_per_class",), cfg(('root = "images"', 'root = "images"\nlimit_per_class = 0'))),
        Case("config: severity 9", chk, ("severity",), cfg(('root = "images"', 'root = "images"\nseverity = 9'))),
        Case("config: corruption unknown", chk, ("corruption",), cfg(('root = "images"', 'root = "images"\ncorruption = "rain"'))),
        Case("config: evaluate_with unknown", chk, ("evaluate_with",), cfg(('root = "images"', 'root = "images"\nevaluate_with = "catz"'))),
        Case("config: evaluate_with itself", chk, ("evaluate_with",), cfg(('root = "images"', 'root = "images"\nevaluate_with = "pets"'))),
        Case("config: classes out of range", chk, ("pets",), cfg(('root = "images"', 'root = "images"\nclasses = [0, 7]'))),
        Case("config: train counts missing", chk, ("train_counts", "not found"), cfg(('root = "images"', 'root = "images"\ntrain_counts = "c.csv"'))),
        Case("config: train counts short", chk, ("train_counts", "class 2"),
             cfg(('root = "images"', 'root = "images"\ntrain_counts = "c.csv"'),
                 extra=lambda w: (w / "c.csv").write_text("class_index,count\n0,4\n1,3\n"))),
        Case("config: train counts wrong length npy", chk, ("train_counts", "2 counts"),
             cfg(('root = "images"', 'root = "images"\ntrain_counts = "c.npy"'),
                 extra=lambda w: np.save(w / "c.npy", np.array([3, 4])))),
        Case("config: train counts garbage", chk, ("train_counts",),
             cfg(('root = "images"', 'root = "images"\ntrain_counts = "c.csv"'),
                 extra=lambda w: (w / "c.csv").write_text("class_index,count\n0,x\n"))),
        Case("config: target prior missing", chk, ("target_prior",), cfg(("[analysis]", '[analysis]\ntarget_prior = "tp.npy"'))),
        Case("config: target prior wrong length", chk, ("target_prior", "2 values"),
             cfg(("[analysis]", '[analysis]\ntarget_prior = "tp.npy"'), extra=lambda w: np.save(w / "tp.npy", np.array([0.5, 0.5])))),
        Case("config: target prior negative", chk, ("target_prior",),
             cfg(("[analysis]", '[analysis]\ntarget_prior = "tp.npy"'), extra=lambda w: np.save(w / "tp.npy", np.array([-0.5, 1.0, 0.5])))),
        Case("config: target prior NaN", chk, ("target_prior",),
             cfg(("[analysis]", '[analysis]\ntarget_prior = "tp.npy"'), extra=lambda w: np.save(w / "tp.npy", np.array([np.nan, 0.5, 0.5])))),
        Case("config: duplicate model", chk, ("unique",), cfg(("[[datasets]]", '[[models]]\nname = "tiny"\narch = "x"\npretrained = "none"\n[[datasets]]'))),
        Case("config: pretrained empty", chk, ("pretrained", "none"), cfg((f'pretrained = "{ASSETS}/gla-tiny-clip.safetensors"', 'pretrained = ""'))),
        Case("config: pretrained missing", chk, ("pretrained", "none"), cfg((f'pretrained = "{ASSETS}/gla-tiny-clip.safetensors"\n', ""))),
        Case("config: duplicate dataset", chk, ("unique",),
             cfg(("[datasets.splits]", '[datasets.splits]\nval = { per_class = 2 }\ntest = { rest = true }\n'
                  '[[datasets]]\nname = "pets"\nkind = "imagefolder"\nroot = "images"\n[datasets.splits]'))),
        Case("config: placeholder left", chk, ("fill in",), cfg(('root = "images"', 'root = "<fill in: the images>"'))),
        Case("config: split roots share ids", ["run", RUN], ("sample id",),
             cfg(('root = "images"\n', ""), ("val = { per_class = 2 }\ntest = { rest = true }",
                                              'val = { root = "images" }\ntest = { root = "images2" }'),
                 extra=lambda w: shutil.copytree(w / "images", w / "images2"))),
        Case("config: manifest row outside the root", chk, ("row", "outside the dataset root"),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: _manifest(w, ["../in/y.npy"]))),
        Case("config: manifest absolute row", chk, ("row", "outside the dataset root"),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: _manifest(w, [str(w / "run.toml")]))),
        Case("config: manifest symlink out of the root", chk, ("row", "outside the dataset root"),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: (_link(w), _manifest(w, ["out/00.png"])))),
        Case("config: manifest row missing", chk, ("m.csv",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: _manifest(w, ["class0/99.png"]))),
        Case("config: manifest no path column", chk, ("m.csv",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: (w / "images" / "m.csv").write_text("file,label\na.png,x\n"))),
        Case("config: manifest empty", chk, ("m.csv",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: (w / "images" / "m.csv").write_text("path,label\n"))),
        Case("config: manifest missing", chk, ("m.csv",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'))),
        Case("config: manifest empty label", chk, ("m.csv",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "manifest"\nroot = "images/m.csv"'),
                 extra=lambda w: (_manifest(w, []), (w / "images" / "m.csv").open("a").write("class0/00.png,\n")))),
        Case("config: webdataset no shard matches", chk, ("pets",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "webdataset"\nroot = "shards/*.tar"\nclass_names = ["a", "b"]'))),
        Case("config: webdataset shard garbage", chk, ("a.tar",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "webdataset"\nroot = "shards/*.tar"\nclass_names = ["a", "b"]'),
                 extra=lambda w: ((w / "shards").mkdir(), (w / "shards" / "a.tar").write_bytes(b"not a tar" * 100)))),
        Case("config: builtin pool unknown", chk, ("pool",),
             cfg(('kind = "imagefolder"\nroot = "images"', 'kind = "fashion-mnist"\npool = "nopool"'))),
    ]
    # every config mistake is also refused by gla run and gla extract, before any work
    also = ["config: not TOML", "config: unknown estimator", "config: partial class names", "config: checkpoint garbage",
            "config: per_class too many", "config: manifest symlink out of the root", "config: templates empty",
            "config: train counts short", "config: store is a file", "config: class names file bad JSON"]
    by_name = {c.name: c for c in out}
    for name in also:
        c = by_name[name]
        for command in ("run", "extract"):
            out.append(Case(f"{name} ({command})", [command, *c.argv[1:]], c.needles, c.setup,
                            torch=command == "extract"))
    return out


def _manifest(w: Path, extra_rows: list[str]) -> None:
    rows = [f"class{c}/{i:02d}.png,class{c}" for c in range(3) for i in range(5)]
    (w / "images" / "m.csv").write_text("path,label\n" + "".join(r + "\n" for r in rows)
                                        + "".join(f"{r},class0\n" for r in extra_rows))


def _partial_val(w: Path) -> None:
    """A val folder with no image of class2 (its folder is there, empty)."""
    for c in range(3):
        (w / "valimgs" / f"class{c}").mkdir(parents=True)
    for c in range(2):
        shutil.copy(w / "images" / f"class{c}" / "00.png", w / "valimgs" / f"class{c}" / "v00.png")


def _link(w: Path) -> None:
    (w / "images" / "out").symlink_to(w / "images2" if (w / "images2").exists() else w / "in")
    from PIL import Image

    Image.new("RGB", (4, 4)).save(w / "in" / "00.png")


def all_cases() -> list[Case]:
    cases = import_cases() + counts_cases() + analyze_cases() + other_command_cases() + config_cases()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases

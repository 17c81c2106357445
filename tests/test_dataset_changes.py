"""#8.5: `gla run` sees a changed dataset (an image added in a nested folder, an image
overwritten in place under the same name, an added webdataset shard) and re-extracts
that cell, while an unchanged cell stays skipped."""

from __future__ import annotations

import io
import json
import tarfile
import time

import numpy as np
import pytest

pytestmark = pytest.mark.torch


def _shard(path, images, start: int) -> None:
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for n, (c, arr) in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(c).encode())):
                info = tarfile.TarInfo(f"k{start + n:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_gla_run_re_extracts_changed_datasets_only(tmp_path):
    pytest.importorskip("open_clip")
    from fixtures_tiny_clip import CLASSES, make_images, make_tiny_clip
    from gla.pipeline.config import load_config
    from gla.pipeline.matrix_run import run_config

    tc = make_tiny_clip(tmp_path / "tc")
    make_images(tmp_path / "more", per_class=2, seed=5)
    (tc.images / "dog" / "deeper").mkdir()  # a nested folder, there from the start
    (tmp_path / "more" / "dog" / "001.png").rename(tc.images / "dog" / "deeper" / "old.png")
    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "a-000.tar", [(c, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                                  for c in range(3) for _ in range(2)], 0)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'store = "store"\n[compute]\nworkers = 0\n[extract]\nbatch_size = 8\nnum_workers = 0\n'
        f'[[models]]\nname = "tiny"\narch = "{tc.arch}"\nmodel_config = "{tc.config}"\n'
        f'pretrained = "{tc.checkpoint}"\n'
        f'[[datasets]]\nname = "pics"\nkind = "imagefolder"\nroot = "{tc.images}"\n'
        f'[[datasets]]\nname = "wds"\nkind = "webdataset"\nroot = "{shards}/*.tar"\n'
        f"class_names = {json.dumps(CLASSES)}\n"
    )
    config = load_config(cfg)

    def run():
        s = run_config(config, stages=("extract",), progress=False, quiet=True)
        assert s.ok, s.failed
        return sorted(s.extracted), sorted(s.extract_skipped)

    both = [("tiny", "pics"), ("tiny", "wds")]
    assert run() == (both, [])
    assert run() == ([], both)
    # an image added in a nested folder (the class folder itself is unchanged)
    (tmp_path / "more" / "dog" / "000.png").rename(tc.images / "dog" / "deeper" / "new.png")
    assert run() == ([("tiny", "pics")], [("tiny", "wds")])
    assert run() == ([], both)
    # an image overwritten in place under the same name (same file, no folder change)
    target = tc.images / "cat" / "000.png"
    time.sleep(0.01)
    with open(target, "wb") as f:
        f.write((tmp_path / "more" / "cat" / "000.png").read_bytes())
    assert run() == ([("tiny", "pics")], [("tiny", "wds")])
    # an added webdataset shard: its rows reach the store
    _shard(shards / "a-001.tar", [(1, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))], 100)
    assert run() == ([("tiny", "wds")], [("tiny", "pics")])
    from gla.pipeline.store import Store

    assert Store(tmp_path / "store").split_info("tiny", "wds", "test").rows == 7

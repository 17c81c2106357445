"""The report renders in headless Chromium with no console errors and every image loaded.

Chromium is driven over ``--remote-debugging-pipe`` with a tiny Chrome DevTools Protocol
client (no extra dependency): console messages, page exceptions, log entries (failed
loads, security errors) and every network request are collected while the page loads,
then the images' ``complete``/``naturalWidth`` are read from the page. A control page
with a broken image and a console error proves the harness sees both.
Chromium comes from Debian's package (``make browser``); in CI (``CI=true``) its absence
fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        msg = "chromium not found: run `make browser` (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class Browser:
    """Chromium over the DevTools pipe: fd 3 carries commands in, fd 4 replies out."""

    def __init__(self, exe: str, profile: Path):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def plumb():  # runs in the child before exec
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=plumb,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self.events: queue.Queue = queue.Queue()
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cv:
                            self._replies[msg["id"]] = msg
                            self._cv.notify_all()
                    else:
                        self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._id += 1
        mid = self._id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method} (chromium exit code {self.proc.poll()})")
                self._cv.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)


# Layout, read from the page by the harness (the page itself has no scripts): the page's
# scroll width against the viewport, every element that sticks out of its parent's box
# to the right (text, tables, figures running off the page or out of a cell), and the
# tables that only fit by scrolling inside their box (part of them hidden until scrolled).
LAYOUT = """(() => {
  const out = [];
  for (const e of document.querySelectorAll('main *')) {
    const p = e.parentElement;
    if (!p || e.closest('div.tw') && e.tagName !== 'DIV') continue;  // scrolls inside its own box
    const r = e.getBoundingClientRect(), q = p.getBoundingClientRect();
    if (r.width > 0 && r.right > q.right + 1) out.push(e.tagName.toLowerCase() + '.' + e.className);
  }
  const scrolling = Array.from(document.querySelectorAll('div.tw')).filter(d => d.scrollWidth > d.clientWidth + 1)
    .map(d => (d.closest('section') || {id: 'overview'}).id + ': ' + d.querySelector('tr').textContent.slice(0, 60));
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, overflowing: out, scrolling};
})()"""


# Text boxes that overlap: every text node's line boxes (Range.getClientRects), pairwise,
# for nodes of different elements; boxes that share more than 2 × 2 px are reported.
OVERLAPS = """(() => {
  const boxes = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walk.nextNode());) {
    if (!n.textContent.trim()) continue;
    const r = document.createRange();
    r.selectNodeContents(n);
    for (const b of r.getClientRects())
      if (b.width > 0 && b.height > 0) boxes.push({l: b.left, t: b.top + scrollY, r: b.right, b: b.bottom + scrollY, n});
  }
  boxes.sort((a, b) => a.t - b.t);
  const out = [];
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length && boxes[j].t < boxes[i].b; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.n === b.n) continue;
      const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
      if (w > 2 && h > 2) out.push(a.n.textContent.trim().slice(0, 40) + ' | ' + b.n.textContent.trim().slice(0, 40));
    }
  return {boxes: boxes.length, overlaps: out.slice(0, 20)};
})()"""

# Per image: its displayed size and the share of its pixels that are coloured (channels
# differing by more than 40): a plot whose axes hold no data is black, grey and white.
IMAGES = """(() => Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  if (!i.complete || !i.naturalWidth) return {alt: i.alt, width: r.width, height: r.height, coloured: 0};
  const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(i, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let coloured = 0;
  for (let k = 0; k < d.length; k += 4)
    if (Math.max(d[k], d[k + 1], d[k + 2]) - Math.min(d[k], d[k + 1], d[k + 2]) > 40) coloured++;
  return {alt: i.alt, width: r.width, height: r.height, coloured: coloured / Math.max(1, d.length / 4)};
}))()"""


def evaluate(browser: Browser, sid: str, expression: str):
    res = browser.send("Runtime.evaluate", {"expression": f"JSON.stringify({expression})", "returnByValue": True},
                       session=sid)
    if "exceptionDetails" in res:
        raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
    return json.loads(res["result"]["value"])


def screenshot(browser: Browser, sid: str, width: int) -> bytes:
    """The whole page, ``width`` CSS px wide, as PNG bytes."""
    height = evaluate(browser, sid, "document.documentElement.scrollHeight")
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": min(int(height), 16000), "deviceScaleFactor": 1, "mobile": False},
                 session=sid)
    shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=sid)
    return base64.b64decode(shot["data"])


def load_page(browser: Browser, url: str, timeout: float = 90, width: int = 1400,
              shot: Path | None = None) -> dict:
    """Open ``url`` in a fresh tab ``width`` CSS px wide; return problems seen, the images'
    load state and content, the layout (LAYOUT, OVERLAPS, IMAGES); with ``shot``, a
    full-page screenshot is written there."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable", session=sid)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=sid)
    browser.send("Page.navigate", {"url": url}, session=sid)
    problems, requests, loaded = [], [], False
    deadline = time.monotonic() + timeout
    while not loaded:
        try:
            ev = browser.events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{url}: page did not finish loading") from None
        if ev.get("sessionId") != sid:
            continue
        method, p = ev["method"], ev.get("params", {})
        if method == "Page.loadEventFired":
            loaded = True
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            problems.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            problems.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
        elif method == "Network.loadingFailed":
            problems.append(f"load failed: {p.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    # Drain what arrived with the load event.
    time.sleep(0.3)
    while not browser.events.empty():
        ev = browser.events.get_nowait()
        if ev.get("sessionId") == sid and ev["method"] in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown",
                                                            "Log.entryAdded"):
            problems.append(f"{ev['method']}: {json.dumps(ev.get('params'))[:200]}")
    expr = ("JSON.stringify({title: document.title, imgs: Array.from(document.images).map("
            "i => [i.complete, i.naturalWidth, i.naturalHeight]), tables: document.querySelectorAll('table').length})")
    res = browser.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
    state = json.loads(res["result"]["value"])
    state["layout"] = evaluate(browser, sid, LAYOUT)
    state["text"] = evaluate(browser, sid, OVERLAPS)
    state["images"] = evaluate(browser, sid, IMAGES)
    if shot is not None:
        shot.write_bytes(screenshot(browser, sid, width))
    browser.send("Target.closeTarget", {"targetId": target})
    return {"problems": problems, "requests": requests, **state}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(chromium_path(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def test_harness_sees_broken_images_and_console_errors(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        "<img src='missing.png' alt='x'><script>console.error('planted error')</script></body></html>"
    )
    page = load_page(browser, bad.as_uri())
    assert any("planted error" in p for p in page["problems"]), page
    assert page["imgs"] and not all(c and w > 0 for c, w, _ in page["imgs"])


def test_harness_sees_horizontal_overflow(browser, tmp_path):
    wide = tmp_path / "wide.html"
    wide.write_text("<!DOCTYPE html><html><head><title>wide</title></head><body><main style='width:600px'>"
                    "<table class='big' style='width:2000px'><tr><td>x</td></tr></table></main></body></html>")
    layout = load_page(browser, wide.as_uri())["layout"]
    assert layout["scrollWidth"] > layout["innerWidth"] == 1400
    assert "table.big" in layout["overflowing"]
    boxed = tmp_path / "boxed.html"
    boxed.write_text("<!DOCTYPE html><html><head><title>boxed</title></head><body><main style='width:600px'>"
                     "<div class='tw' style='overflow-x:auto'><table style='width:2000px'><tr><td>wide row</td>"
                     "</tr></table></div></main></body></html>")
    layout = load_page(browser, boxed.as_uri())["layout"]
    assert layout["overflowing"] == [] and layout["scrolling"] == ["overview: wide row"]


def test_report_renders_cleanly(browser, tmp_path):
    from gla.pipeline.report import write_report
    from report_world import make_store  # tests/ is on sys.path (rootdir import mode)

    path, _ = write_report(make_store(tmp_path / "store"))
    page = load_page(browser, path.as_uri())
    assert page["problems"] == []
    assert page["title"] == "GLA audit report"
    assert page["tables"] >= 2
    assert len(page["imgs"]) >= 2
    assert all(complete and w > 0 and h > 0 for complete, w, h in page["imgs"]), page["imgs"]
    # At 1,400 px nothing runs off the page or out of its box.
    layout = page["layout"]
    assert layout["innerWidth"] == 1400 and layout["scrollWidth"] <= 1400, layout
    assert layout["overflowing"] == [], layout["overflowing"]
    # Nothing but the file itself and its inline data: URIs was requested.
    assert all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]


def test_harness_sees_overlapping_text_and_empty_images(browser, tmp_path):
    blank = base64.b64encode(_png(np.full((40, 80, 3), 255, np.uint8))).decode()
    plot = base64.b64encode(_png(np.tile(np.array([200, 40, 40], np.uint8), (40, 80, 1)))).decode()
    bad = tmp_path / "overlap.html"
    bad.write_text("<!DOCTYPE html><html><head><title>o</title></head><body><main>"
                   "<p style='position:absolute;top:10px;left:10px'>first label</p>"
                   "<p style='position:absolute;top:14px;left:20px'>second label</p>"
                   f"<img alt='blank' src='data:image/png;base64,{blank}'>"
                   f"<img alt='plot' src='data:image/png;base64,{plot}'></main></body></html>")
    page = load_page(browser, bad.as_uri())
    assert page["text"]["overlaps"] == ["first label | second label"]
    share = {i["alt"]: i["coloured"] for i in page["images"]}
    assert share["blank"] == 0 and share["plot"] == 1


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_audit_report_at_1400_px(browser, tmp_path):
    """The report with every audit table, the run diff and a stale cell, as a reader sees
    it at 1,400 px: no console problems, nothing sticking out, no two text boxes on top
    of each other, every image loaded, shown at a readable size and holding coloured
    marks (no empty panel). The screenshot stays in tmp_path (or $GLA_REPORT_SHOTS)."""
    from report_world import audit_page

    html = audit_page(tmp_path / "store", stale={("clip-a", "animals")})
    path = tmp_path / "audit.html"
    path.write_text(html)
    assert "Changes since the previous run" in html and "Significant changes" in html and "not_in_config" in html
    shot = Path(os.environ.get("GLA_REPORT_SHOTS") or tmp_path) / "report-1400.png"
    page = load_page(browser, path.as_uri(), shot=shot)
    assert page["problems"] == []
    layout = page["layout"]
    assert layout["innerWidth"] == 1400 and layout["scrollWidth"] <= 1400, layout
    assert layout["overflowing"] == [], layout["overflowing"]
    assert layout["scrolling"] == [], layout["scrolling"]  # at 1,400 px every table fits whole
    assert page["text"]["boxes"] > 500 and page["text"]["overlaps"] == [], page["text"]
    assert len(page["images"]) == 2 + 4 * 3
    for im in page["images"]:
        assert im["width"] >= 400 and im["height"] >= 150, im  # a readable size, not squeezed
        assert im["coloured"] > 0.003, im  # data drawn: not an empty panel
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">I", shot.read_bytes()[16:20])[0] == 1400  # the PNG is 1,400 px wide


def test_fifty_cell_overview_at_1400_px(browser, tmp_path):
    """A 5 × 10 matrix with long names: the heatmaps take the whole row, and nothing
    overlaps, overflows or needs scrolling at 1,400 px."""
    from gla.pipeline.report import ReportData, render
    from report_world import matrix_tables

    data = ReportData(store=tmp_path, tables=matrix_tables())
    path = tmp_path / "matrix.html"
    path.write_text(render(data, max_cells=2))
    page = load_page(browser, path.as_uri())
    assert page["problems"] == []
    layout = page["layout"]
    assert layout["scrollWidth"] <= 1400 and layout["overflowing"] == [], layout
    # Eight methods with two intervals make the matrix table wider than the page: it may
    # scroll inside its box (nothing else may), with the flags beside the cell's name,
    # in view before any scrolling.
    assert all(t.startswith("overview: modeldatasetflags") for t in layout["scrolling"]), layout["scrolling"]
    assert page["text"]["overlaps"] == [], page["text"]
    maps = [im for im in page["images"] if im["alt"].endswith("heatmap")]
    assert len(maps) == 2 and all(im["width"] > 1000 and im["coloured"] > 0.1 for im in maps), maps

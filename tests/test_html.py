"""The rendered book, checked as a reader would see it.

The book is rendered once per session, from the committed executed notebooks, into a
temporary folder with the flags ``layerif book`` uses (``jupyter-book build -W -n
--keep-going --all``: any Sphinx warning fails the build; nothing is executed). Then, over
the HTML:

* every page of ``_toc.yml`` exists, and every executed notebook is in ``_toc.yml``;
* every ``<img>`` resolves to a non-empty local file (or a non-empty ``data:`` URI);
* no page shows error output: no traceback, stderr or error output block, no docutils
  system message, no "Traceback (most recent call last)";
* no internal link is broken: every local ``href``/``src`` names an existing file, and every
  ``#anchor`` an ``id`` of its target page;
* every notebook page shows a "paper vs ours" table: a ``<table>`` whose header has a column
  ``paper`` beside a column ``ours`` (``paper.compare``'s layout) or ``this study ...``
  (notebook 00's setting table). The rule holds for every notebook page, 00 included;
  pages that do not meet it yet are listed in ``NO_COMPARISON_TABLE_YET`` as strict xfails,
  so adding the table makes the test fail until the page is taken off the list; pages with
  nothing of the paper's to compare (``BEYOND_THE_PAPER``) are exempt.

* every figure of a notebook page sits in a ``<figure>`` with a caption (myst-nb's
  ``mystnb: figure: caption:`` cell metadata), and no notebook's prose (markdown cells of
  ``notebooks/*.md``) types a number by hand (:func:`typed_numbers` states the rule); pages
  still being rewritten are strict xfails (``UNCAPTIONED_YET``, ``TYPED_NUMBERS_YET``);
* the executed notebooks keep results only: no stderr, absolute paths or object reprs.

Finally each page is opened in headless Chromium (``test_pages_load_in_a_browser``): no
console error, uncaught exception or failed load, and a screenshot that is not blank; at a
1400 px window with every http(s) request blocked, method.html's equations are typeset by the
MathJax the build serves, no table or printed output is wider than the content column without
a scroll container, and no figure is shrunk below its own size. These tests skip, saying how
to install Chromium, when no browser is found.
"""
from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

import pytest
import yaml

from layerif import notebook_exec, study

CHECKOUT = Path(__file__).resolve().parent.parent

# Notebook pages whose comparison with the paper is prose or printed text, not a table yet.
NO_COMPARISON_TABLE_YET = {
    "02_expert_allocation": "Fig. 4 prints no numbers: no paper | ours table yet",
    "04_sparsity_allocation": "the paper prints no per-block sparsities: no table yet",
}


# Notebook pages with nothing of the paper's to compare: checked by their own verdict tables.
BEYOND_THE_PAPER = {
    "09_influence_validation": "the paper never measures its approximation, retraining or stability",
}


class Page(html.parser.HTMLParser):
    """What the checks need from one HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url)
        self.images: list[str] = []
        self.error_blocks: list[str] = []
        self.tables: list[list[str]] = []  # header cells of each table
        self._in_th = False
        self.text_parts: list[str] = []
        self.figures: list[dict] = []  # per <figure>: its images and its caption's text
        self.loose_images = 0  # <img> outside any <figure>
        self._figure_depth = 0
        self._in_caption = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) is not None and tag in ("a", "link", "script", "img", "iframe"):
                self.links.append((tag, a[key]))
        if tag == "img":
            self.images.append(a.get("src") or "")
            if self._figure_depth:
                self.figures[-1]["images"] += 1
            else:
                self.loose_images += 1
        if tag == "figure":
            self._figure_depth += 1
            self.figures.append({"images": 0, "caption": ""})
        if tag == "figcaption":
            self._in_caption = True
        classes = set((a.get("class") or "").split())
        if classes & {"traceback", "stderr", "system-message"} or (
                "output" in classes and "error" in classes):
            self.error_blocks.append(f"<{tag} class={a.get('class')!r}>")
        if tag == "table":
            self.tables.append([])
        if tag == "th":
            self._in_th = True
            if self.tables:
                self.tables[-1].append("")

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False
        if tag == "figure":
            self._figure_depth -= 1
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._in_caption and self.figures:
            self.figures[-1]["caption"] += data
        if self._in_th and self.tables and self.tables[-1]:
            self.tables[-1][-1] += data

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def toc_files(root: Path = CHECKOUT) -> list[str]:
    """Every ``root`` / ``file`` entry of ``_toc.yml``, in order (without suffix)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    found.append(str(Path(node[key]).with_suffix("")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load((root / "_toc.yml").read_text()))
    return found


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    """The book rendered as ``layerif book`` renders it, into a temporary folder."""
    index = study.render_book(CHECKOUT, tmp_path_factory.mktemp("book"))
    return index.parent


@pytest.fixture(scope="module")
def pages(html_dir) -> dict[str, Page]:
    """Every HTML page of the book outside ``_static``/``_sources``, parsed, by relative path."""
    out = {}
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir).as_posix()
        if not rel.startswith(("_static/", "_sources/")):
            out[rel] = Page(path.read_text(encoding="utf-8"))
    return out


def test_every_toc_page_is_rendered_and_every_notebook_is_in_the_toc(html_dir):
    files = toc_files()
    missing = [f for f in files if not (html_dir / f"{f}.html").is_file()]
    assert not missing, f"_toc.yml pages not rendered: {missing}"
    executed = sorted(f"book/executed/{p.stem}"
                      for p in (CHECKOUT / "book" / "executed").glob("*.ipynb"))
    assert not sorted(set(executed) - set(files)), "executed notebooks missing from _toc.yml"
    assert (html_dir / "index.html").is_file()


def _local_target(page: str, url: str, html_dir: Path) -> tuple[Path | None, str]:
    """(file, fragment) a local URL of ``page`` points to; file None for external URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc:
        return None, ""
    base = (html_dir / page).parent
    target = (base / urllib.parse.unquote(parts.path)).resolve() if parts.path else html_dir / page
    return target, urllib.parse.unquote(parts.fragment)


def bad_images(html_dir: Path, pages: dict[str, Page], names: list[str]) -> list[str]:
    """``<img>`` of pages ``names`` that do not resolve to a non-empty file or data URI."""
    problems = []
    for rel in names:
        for src in pages[rel].images:
            if src.startswith("data:"):
                ok = len(src.split(",", 1)[-1]) > 0
            else:
                target, _ = _local_target(rel, src, html_dir)
                ok = target is not None and target.is_file() and target.stat().st_size > 0
            if not ok:
                problems.append(f"{rel}: <img src={src[:80]!r}>")
    return problems


def error_output(pages: dict[str, Page], names: list[str]) -> list[str]:
    """Error blocks and tracebacks shown on pages ``names``."""
    problems = []
    for rel in names:
        problems += [f"{rel}: {block}" for block in pages[rel].error_blocks]
        for needle in ("Traceback (most recent call last)", "An Exception was encountered"):
            if needle in pages[rel].text:
                problems.append(f"{rel}: shows {needle!r}")
    return problems


def broken_links(html_dir: Path, pages: dict[str, Page]) -> list[str]:
    """Local links (href/src) of every page to a missing file or a missing ``#id``."""
    problems = set()
    for rel, page in pages.items():
        for tag, url in page.links:
            if url.startswith(("mailto:", "javascript:", "data:")) or url in ("", "#"):
                continue
            target, fragment = _local_target(rel, url, html_dir)
            if target is None:
                continue
            if not target.exists():
                problems.add(f"{rel}: <{tag}> {url!r}: no such file")
            elif fragment and target.suffix == ".html":
                key = target.relative_to(html_dir.resolve()).as_posix()
                ids = pages[key].ids if key in pages else Page(target.read_text()).ids
                if fragment not in ids:
                    problems.add(f"{rel}: <{tag}> {url!r}: no id {fragment!r} there")
    return sorted(problems)


def _toc_pages() -> list[str]:
    return [f"{f}.html" for f in toc_files()]


def test_every_image_resolves_to_a_non_empty_file(html_dir, pages):
    problems = bad_images(html_dir, pages, _toc_pages())
    assert not problems, "images not resolving to a non-empty file:\n" + "\n".join(problems)
    figures = sum(len(pages[rel].images) for rel in _toc_pages() if "executed" in rel)
    assert figures >= 10, f"only {figures} images over the notebook pages: figures lost?"


def test_no_page_shows_error_output(pages):
    problems = error_output(pages, _toc_pages())
    assert not problems, "\n".join(problems)


def test_no_internal_link_is_broken(html_dir, pages):
    problems = broken_links(html_dir, pages)
    assert not problems, "broken internal links:\n" + "\n".join(problems)


def test_the_checks_find_what_they_look_for(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "ok.png").write_bytes(b"png")
    (tmp_path / "sub" / "b.html").write_text('<h2 id="there">b</h2>')
    a = ('<img src="ok.png"><img src="empty.png"><img src="gone.png"><img src="data:,">'
         '<a href="sub/b.html#there">ok</a><a href="sub/b.html#nowhere">x</a>'
         '<a href="missing.html">x</a><a href="#top">x</a><a href="https://x.org/y">ext</a>'
         '<div class="cell_output docutils container"><div class="output traceback '
         'highlight-ipythontb">x</div></div><pre>Traceback (most recent call last):</pre>')
    (tmp_path / "a.html").write_text(a)
    pages = {"a.html": Page(a), "sub/b.html": Page('<h2 id="there">b</h2>')}
    assert bad_images(tmp_path, pages, ["a.html"]) == [
        "a.html: <img src='empty.png'>", "a.html: <img src='gone.png'>",
        "a.html: <img src='data:,'>"]
    assert broken_links(tmp_path, pages) == [
        "a.html: <a> '#top': no id 'top' there", "a.html: <a> 'missing.html': no such file",
        "a.html: <a> 'sub/b.html#nowhere': no id 'nowhere' there",
        "a.html: <img> 'gone.png': no such file"]
    assert error_output(pages, ["a.html"]) == [
        "a.html: <div class='output traceback highlight-ipythontb'>",
        "a.html: shows 'Traceback (most recent call last)'"]


def _has_comparison(page: Page) -> bool:
    for header in page.tables:
        cells = [" ".join(c.split()).lower() for c in header]
        if "paper" in cells and any(c == "ours" or c.startswith("this study") for c in cells):
            return True
    return False


NOTEBOOK_PAGES = [pytest.param(
    f, marks=[pytest.mark.xfail(strict=True, reason=NO_COMPARISON_TABLE_YET[Path(f).name])]
    if Path(f).name in NO_COMPARISON_TABLE_YET else [])
    for f in toc_files() if f.startswith("book/executed/") and Path(f).name not in BEYOND_THE_PAPER]


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_notebook_page_shows_a_paper_vs_ours_table(page, pages):
    tables = pages[f"{page}.html"].tables
    assert _has_comparison(pages[f"{page}.html"]), (
        f"{page}.html has no table with a 'paper' column beside an 'ours' (or 'this study') "
        f"column; its table headers: {[t[:6] for t in tables]}")


def test_comparison_rule_tells_tables_apart():
    yes = Page("<table><tr><th></th><th>paper</th><th>ours</th><th>difference</th></tr></table>")
    setting = Page("<table><tr><th></th><th>paper</th><th>this study (<code>cpu</code>)</th>"
                   "</tr></table>")
    no = Page("<table><tr><th>paper</th><th>model</th></tr></table><p>ours</p>")
    assert _has_comparison(yes) and _has_comparison(setting) and not _has_comparison(no)


# ----------------------------------------------------------------------------- a real browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = ("no Chromium found (looked for $LAYERIF_CHROMIUM, then " + ", ".join(BROWSERS) +
           " on PATH): install it with `apt-get install chromium` (Debian; "
           "`apt-get install chromium-browser` on Ubuntu) to run the browser check")


def find_browser() -> str | None:
    """The Chromium to use: ``$LAYERIF_CHROMIUM``, else the first of :data:`BROWSERS` on PATH."""
    env = os.environ.get("LAYERIF_CHROMIUM")
    if env:
        return env
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (stdlib only)."""

    def __init__(self, exe: str, width: int = 1280, height: int = 1000):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def wire():  # the protocol pipe is fds 3 (commands in) and 4 (replies out)
            os.dup2(to_child, 3)  # dup2's copies are inheritable; Python's other fds are not
            os.dup2(from_child, 4)
            os.set_inheritable(3, True)  # dup2(3, 3) leaves close-on-exec set: clear it
            os.set_inheritable(4, True)

        self._profile = tempfile.TemporaryDirectory(prefix="layerif-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-extensions", f"--user-data-dir={self._profile.name}",
             "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method, session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    def _read(self, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        """Send one command and return its result (events met meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply is None:
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str, settle: float = 1.0, timeout: float = 30) -> list[dict]:
        """Load ``url``; return the events from the navigation until ``settle`` s after load."""
        self.events = []
        self.call("Page.navigate", session=True, url=url)
        end, loaded = time.monotonic() + timeout, None
        while time.monotonic() < end:
            if loaded is None and any(e.get("method") == "Page.loadEventFired"
                                      for e in self.events):
                loaded = time.monotonic()
            if loaded is not None and time.monotonic() > loaded + settle:
                return self.events
            event = self._read(0.2)
            if event is not None:
                self.events.append(event)
        raise TimeoutError(f"{url} did not finish loading in {timeout} s")

    def screenshot(self) -> bytes:
        shot = self.call("Page.captureScreenshot", session=True, format="png")
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._in)
        os.close(self._out)
        self._profile.cleanup()


def unreachable(events: list[dict]) -> list[str]:
    """Remote (http/https) resources that failed to load for want of a network (the reader's
    connection decides them, not the book: MathJax comes from a CDN)."""
    return [e["params"]["entry"]["url"] for e in events if e.get("method") == "Log.entryAdded"
            and e["params"]["entry"].get("url", "").startswith(("http://", "https://"))
            and "net::ERR_" in e["params"]["entry"]["text"]
            and not any(code in e["params"]["entry"]["text"] for code in ("_BLOCKED", "_FILE_"))]


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among DevTools events, less
    :func:`unreachable` remote resources."""
    found, remote = [], set(unreachable(events))
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            found.append(details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif (method == "Log.entryAdded" and p["entry"]["level"] == "error"
              and p["entry"].get("url") not in remote):
            found.append(f"{p['entry']['text']} ({p['entry'].get('url', '')})")
    return found


def blank_fraction(png: bytes) -> float:
    """The fraction of a screenshot's pixels that have its most common colour."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = image.getcolors(maxcolors=image.width * image.height)
    return max(c for c, _ in counts) / (image.width * image.height)


def test_the_browser_helpers_tell_errors_and_blank_pages(tmp_path):
    def console(kind, text):
        return {"method": "Runtime.consoleAPICalled",
                "params": {"type": kind, "args": [{"value": text}]}}

    events = [console("log", "hi"), console("error", "boom"),
              {"method": "Log.entryAdded", "params": {"entry": {"level": "error", "text": "Failed",
                                                                  "url": "x.js"}}},
              {"method": "Runtime.exceptionThrown", "params": {"exceptionDetails": {
                  "text": "Uncaught", "exception": {"description": "ReferenceError: f"}}}},
              {"method": "Log.entryAdded", "params": {"entry": {
                  "level": "error", "url": "https://cdn.org/m.js",
                  "text": "Failed to load resource: net::ERR_NAME_NOT_RESOLVED"}}},
              {"method": "Log.entryAdded", "params": {"entry": {
                  "level": "error", "url": "file:///b/_static/x.css",
                  "text": "Failed to load resource: net::ERR_FILE_NOT_FOUND"}}}]
    assert console_errors(events) == ["boom", "Failed (x.js)", "ReferenceError: f",
                                      "Failed to load resource: net::ERR_FILE_NOT_FOUND "
                                      "(file:///b/_static/x.css)"]
    assert unreachable(events) == ["https://cdn.org/m.js"]
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (100, 100), "white")
    buf = io.BytesIO()
    image.save(buf, format="png")
    assert blank_fraction(buf.getvalue()) == 1.0
    ImageDraw.Draw(image).rectangle((10, 10, 60, 40), fill="black")
    buf = io.BytesIO()
    image.save(buf, format="png")
    assert blank_fraction(buf.getvalue()) == pytest.approx(1 - 51 * 31 / 10000)


@pytest.fixture(scope="module")
def browser():
    exe = find_browser()
    if exe is None:
        pytest.skip(INSTALL)
    chromium = Chromium(exe)
    yield chromium
    chromium.close()


def test_pages_load_in_a_browser_without_errors_and_not_blank(html_dir, browser, tmp_path):
    problems, offline = [], set()
    for rel in ["index.html"] + _toc_pages():
        events = browser.open((html_dir / rel).as_uri())
        problems += [f"{rel}: console: {text}" for text in console_errors(events)]
        offline.update(unreachable(events))
        png = browser.screenshot()
        (tmp_path / rel.replace("/", "_")).with_suffix(".png").write_bytes(png)
        if blank_fraction(png) > 0.98:
            problems.append(f"{rel}: blank screenshot ({blank_fraction(png):.1%} one colour)")
    assert not problems, f"screenshots in {tmp_path}:\n" + "\n".join(problems)
    if offline:
        warnings.warn(f"not checked, no network here: {sorted(offline)}")


# ------------------------------------------------ as a reader sees it: widths, math, no network
#: What one page looks like in the browser (measured by :data:`LAYOUT_JS`).
LAYOUT_JS = r"""
(() => {
  const article = document.querySelector('article') || document.body;
  const box = article.getBoundingClientRect();
  const scrolls = (el) => {
    for (let e = el.parentElement; e && e !== article.parentElement; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (['auto', 'scroll'].includes(s.overflowX) && e.getBoundingClientRect().right <= box.right + 1)
        return true;
    }
    return false;
  };
  const clipped = [];
  for (const el of article.querySelectorAll('table, pre')) {
    const r = el.getBoundingClientRect();
    const wider = el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible';
    if ((r.right > box.right + 1 || wider) && !scrolls(el) &&
        !['auto', 'scroll'].includes(getComputedStyle(el).overflowX))
      clipped.push(el.tagName.toLowerCase() + ': ' + (el.innerText || '').slice(0, 60).replace(/\s+/g, ' '));
  }
  const maths = [...document.querySelectorAll('.math')];
  return {content: box.width, clipped: clipped, maths: maths.length,
          typeset: maths.filter(m => m.querySelector('mjx-container')).length,
          images: [...article.querySelectorAll('img')].map(i => [i.naturalWidth, i.clientWidth])};
})()
"""


def page_layout(browser, url: str, settle: float = 1.5) -> dict:
    """Open ``url`` with every http(s) request blocked and return :data:`LAYOUT_JS`'s findings."""
    browser.call("Network.enable", session=True)
    browser.call("Network.setBlockedURLs", session=True, urls=["http://*", "https://*"])
    browser.open(url, settle=settle)
    reply = browser.call("Runtime.evaluate", session=True, expression=LAYOUT_JS,
                         returnByValue=True)
    return reply["result"]["value"]


@pytest.fixture(scope="module")
def reader():
    """Chromium at a 1400 px wide window (the width the issue was read at)."""
    exe = find_browser()
    if exe is None:
        pytest.skip(INSTALL)
    chromium = Chromium(exe, width=1400, height=1000)
    yield chromium
    chromium.close()


def test_an_equation_renders_with_no_network(html_dir, reader):
    layout = page_layout(reader, (html_dir / "book" / "method.html").as_uri(), settle=3.0)
    assert layout["maths"] > 5, "method.html has no math: the check has nothing to look at"
    assert layout["typeset"] == layout["maths"], (
        f"{layout['maths'] - layout['typeset']} of {layout['maths']} formulas not typeset by "
        "MathJax with the network blocked: is mathjax_path served from _static?")


@pytest.fixture(scope="module")
def layouts(html_dir, reader) -> dict[str, dict]:
    """:func:`page_layout` of the index and every toc page, measured once for the checks below."""
    return {rel: page_layout(reader, (html_dir / rel).as_uri()) for rel in ["index.html"] + _toc_pages()}


def test_no_table_or_printed_output_is_clipped(layouts):
    problems = []
    for rel in ["index.html"] + _toc_pages():
        layout = layouts[rel]
        problems += [f"{rel}: {c}" for c in layout["clipped"]]
    assert not problems, ("wider than the content column without a scroll container:\n"
                          + "\n".join(problems))


def test_figures_are_shown_at_their_own_size(layouts):
    """A figure wider than the content column is shrunk, and its fonts with it."""
    problems = []
    for rel in _toc_pages():
        layout = layouts[rel]
        problems += [f"{rel}: {natural} px drawn at {shown} px"
                     for natural, shown in layout["images"] if shown and natural > shown * 1.05]
    assert not problems, "figures scaled down (fonts shrink with them):\n" + "\n".join(problems)


# ------------------------------------------------------------- captions and computed prose
# Notebook pages other helpers are still rewriting (issue 25): their figures have no caption
# yet, their prose still types numbers. Strict xfails: a page that meets the rule fails here
# until it is taken off the list.
# (Empty since part 2: 05, 07-10 meet both rules once executed from the current sources.)
UNCAPTIONED_YET: set[str] = set()
TYPED_NUMBERS_YET: set[str] = set()


def uncaptioned(page: Page) -> list[str]:
    """Figures of a page that a reader meets without a caption saying what to look at."""
    found = [f"{page.loose_images} image(s) outside a <figure>"] if page.loose_images else []
    found += [f"figure {i} ({f['images']} image(s)) has no caption"
              for i, f in enumerate(page.figures) if f["images"] and not f["caption"].strip()]
    return found


def _pages_except(waiting: set[str]) -> list:
    return [pytest.param(f, marks=[pytest.mark.xfail(strict=True, reason="issue 25: not yet")]
                         if Path(f).name in waiting else [])
            for f in toc_files() if f.startswith("book/executed/")]


@pytest.mark.parametrize("page", _pages_except(UNCAPTIONED_YET))
def test_every_figure_has_a_caption(page, pages):
    problems = uncaptioned(pages[f"{page}.html"])
    assert not problems, f"{page}.html: " + "; ".join(problems)


#: Where a digit may stand in a notebook's prose (markdown cells) outside myst-nb glue: the
#: numbers of the paper's tables, figures, sections and appendices and of the study's
#: notebooks ("Table 7", "Tables 1, 4", "Fig. 2", "§4.1", "App. E", "notebook 01"), names
#: that hold digits (a word with a letter: SmolLM2-135M, Gemma-3-270M, SST-2, Q4_K_M, top-k),
#: the paper's aggregation "Top 25%", headings, inline code, math and roles. Any other number
#: in prose is typed by hand: it must come from the cell (glue, or a package-built Markdown).
REFERENCE = re.compile(r"(Tables?|Figs?\.|Figures?|§|App\.|Appendix|Eqs?\.|Sec\.|Sections?"
                       r"|notebooks?)\s*\(?\d[\d.]*(\s*(,|and|/|–|-|or)\s*\d[\d.]*)*")
#: Names with numbers in them that are not words: the paper's aggregation and MoLA's patterns.
NAMES = re.compile(r"Top 25%|MoLA\s*\(?[\d,]+\)?")
#: A number with a unit is still a typed number ("54x", "135M", "3.5 s" are quantities).
QUANTITY = re.compile(r"[-+]?\d[\d.,]*(x|×|%|M|B|k|s|min|h|pt|px)?")
STRIPPED = [re.compile(p, re.S | re.M) for p in (
    r"\A---\n.*?\n---\n",            # YAML front matter of a cell
    r"^#+ .*?$",                        # headings
    r"```.*?```|^:::.*?^:::",           # fenced blocks, directives' bodies
    r"\{[\w:-]+\}`[^`]*`",              # roles: {glue:text}`key`, {numref}`...`
    r"`[^`]*`",                         # inline code
    r"\$\$.*?\$\$|\$[^$]*\$",             # math
    r"\]\([^)]*\)",                     # link targets
    r"<!--.*?-->",                      # comments
)]


def typed_numbers(markdown: str) -> list[str]:
    """The numbers a markdown cell types by hand (see :data:`REFERENCE` for what is allowed)."""
    text = markdown
    for pattern in STRIPPED:
        text = pattern.sub(" ", text)
    text = NAMES.sub(" ", REFERENCE.sub(" ", text))
    words = [w.strip(".") for w in re.findall(r"[\w.%+×-]*\d[\w.%+×-]*", text)]
    return [w for w in words if not re.search(r"[A-Za-z]", w) or QUANTITY.fullmatch(w)]


def test_the_prose_rule_tells_typed_numbers_from_names_and_references():
    prose = ("Table 7 and Tables 1, 4 (Fig. 2, §4.1, App. E, notebook 01) on SmolLM2-135M, "
             "Gemma-3-270M and SST-2 (Q4_K_M); LayerIF Top 25%; `n_train = 32`; $\\beta = 2.5$; "
             "{glue:text}`acc:.1f` points. The paper's 80 / 160 experts, 0.3 and 25x smaller.")
    assert typed_numbers(prose) == ["80", "160", "0.3", "25x"]
    assert typed_numbers("## 03 · Table 4 heading 12\nno numbers here") == []
    assert typed_numbers("MoLA 2468 and MoLA(3,5,7,8); notebooks (05, 07, 08); 135M params") == \
        ["135M"]


@pytest.mark.parametrize("name", [pytest.param(
    n, marks=[pytest.mark.xfail(strict=True, reason="issue 25: not yet")]
    if n in TYPED_NUMBERS_YET else []) for n in study.list_notebooks(CHECKOUT)])
def test_no_number_is_typed_in_notebook_prose(name):
    import jupytext

    nb = jupytext.read(CHECKOUT / "notebooks" / f"{name}.md")
    found = {i: typed_numbers(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"}
    found = {i: words for i, words in found.items() if words}
    assert not found, (f"notebooks/{name}.md types numbers in prose (glue them or print them "
                       f"from a package function): {found}")


def glued_text(notebook: Path, key: str) -> str:
    """The text of the HTML that ``notebook`` (executed) glues under ``key`` (myst-nb glue),
    whitespace collapsed; "" when it glues nothing under that key."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook", {})
            if scrap.get("name") == key:
                html = output["data"][scrap.get("mime_prefix", "") + "text/html"]
                return " ".join(Page(html).text.split())
    return ""


def test_the_landing_page_shows_notebook_10s_computed_summary(pages):
    """Cross-document glue (``{glue}`` with ``:doc:``): the landing page pastes the summary
    notebook 10 computed, word for word, so it never types a number of its own."""
    summary = glued_text(CHECKOUT / "book" / "executed" / "10_summary.ipynb", "study_summary")
    assert "claim rows" in summary, "notebook 10 glues no study_summary: re-execute it"
    landing = " ".join(pages["book/intro.html"].text.split())
    assert summary in landing, "book/intro.md does not show notebook 10's glued summary"


def test_the_layout_check_finds_a_clipped_table(reader, tmp_path):
    cells = "".join(f"<td>column{i:02d}-wide-cell</td>" for i in range(40))
    page = ("<html><body><article style='width:600px'>"
            "<div id='a'><table><tr>{cells}</tr></table></div>"
            "<div style='overflow-x:auto'><table><tr>{cells}</tr></table></div>"
            "<pre>{line}</pre><pre style='white-space:pre-wrap'>{line}</pre>"
            "</article></body></html>").format(cells=cells, line="x " * 400)
    (tmp_path / "p.html").write_text(page.replace("x x", "xx"))
    layout = page_layout(reader, (tmp_path / "p.html").as_uri(), settle=0.2)
    assert layout["content"] == 600
    # the bare table and the unwrapped line are clipped; the scrolled table and wrapped text not
    assert [c.split(":")[0] for c in layout["clipped"]] == ["table", "pre"]


# ------------------------------------------------------- what the executed notebooks keep
REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")
ABSOLUTE = re.compile(r"(?<![\w.])/(home|work|tmp|root|Users|private|var)/[\w.-]+")


def output_clutter(nb) -> list[str]:
    """What a notebook's outputs show that is not a result: stderr (progress bars, library
    warnings), absolute paths of the machine that ran it, and object reprs."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append(f"cell {index}: stderr {output.get('text', '')[:50]!r}")
                continue
            texts = [output.get("text", "")] + [v for k, v in output.get("data", {}).items()
                                                  if k.startswith("text/") and isinstance(v, str)]
            for text in texts:
                found += [f"cell {index}: path {m.group(0)!r}" for m in ABSOLUTE.finditer(text)]
                found += [f"cell {index}: repr {m.group(0)!r}" for m in REPR.finditer(text)]
    return found


def test_quiet_outputs_moves_stderr_out_and_the_clutter_check_sees_it():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="\rLoading weights: 100%"),
        nbformat.v4.new_output("stream", name="stdout", text="result 1.0"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "<Styler at 0x7f5a2>"}),
        nbformat.v4.new_output("display_data", data={"text/plain": "/work/main/results/x"})])])
    assert output_clutter(nb) == ["cell 0: stderr '\\rLoading weights: 100%'",
                                  "cell 0: repr '<Styler at 0x7f5a2>'",
                                  "cell 0: path '/work/main'"]
    quiet, removed = notebook_exec.quiet_outputs(nb)
    assert removed == "[cell 0] \rLoading weights: 100%"
    assert [o.get("name", o["output_type"]) for o in quiet.cells[0].outputs] == [
        "stdout", "execute_result", "display_data"]


@pytest.mark.parametrize("name", study.list_notebooks(CHECKOUT))
def test_executed_notebooks_show_results_only(name):
    import nbformat

    path = CHECKOUT / "book" / "executed" / f"{name}.ipynb"
    if not path.exists():
        pytest.skip(f"{path} not executed")
    problems = output_clutter(nbformat.read(path, as_version=4))
    assert not problems, (f"{name}: outputs that are not results (re-run it: `layerif run "
                          f"{name} --profile cpu`):\n" + "\n".join(problems[:10]))

"""The built book, looked at: pages with figures and tables, screenshots in headless Chromium, the user's numbers.

The book is built by the one command a user runs on their own films,
``python -m spanlib book`` (:func:`spanlib.book.own.own_book`), with the
``smoke`` preset on a folder of films the tests write (mixed sizes and bit
depths, masks, labels) and a casting-layout set without masks: it checks
the sets, executes every notebook of ``_toc.yml`` (papermill, once per
session: the executed copies are those of the ``smoke_notebooks`` fixture
of ``conftest.py``, shared with ``tests/test_notebooks.py``), puts each in
place of its text source in a copy of the book with execution off, and
``jupyter-book build -W --keep-going`` must succeed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from headless import Chromium, chromium_path

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 2000
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
)

pytestmark = pytest.mark.slow


def toc_files(toc: object) -> list[str]:
    """Every ``file`` entry of a ``_toc.yml`` (root included), in order."""
    found: list[str] = []
    if isinstance(toc, dict):
        for key in ("root", "file"):
            if isinstance(toc.get(key), str):
                found.append(toc[key])
        for value in toc.values():
            if isinstance(value, (list, dict)):
                found.extend(toc_files(value))
    elif isinstance(toc, list):
        for item in toc:
            found.extend(toc_files(item))
    return found


def _source(root: Path, entry: str) -> Path:
    matches = [root / f"{entry}{ext}" for ext in (".md", ".ipynb", ".rst") if (root / f"{entry}{ext}").is_file()]
    if not matches:
        raise FileNotFoundError(f"_toc.yml names {entry!r} but no such page exists")
    return matches[0]


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def _shows_dataframe(notebook: nbformat.NotebookNode) -> bool:
    return any("<table" in str(output.get("data", {}).get("text/html", "")) for output in _outputs(notebook))


def _image_outputs(notebook: nbformat.NotebookNode) -> int:
    return sum(1 for output in _outputs(notebook) if {"image/png", "image/svg+xml"} & set(output.get("data", {})))


def _figures_as_text(notebook: nbformat.NotebookNode) -> list[str]:
    """Figures a kernel printed as ``<Figure size ...>`` text instead of showing them."""
    found = []
    for output in _outputs(notebook):
        data = output.get("data", {})
        text = str(data.get("text/plain", ""))
        if "Figure size" in text and text.lstrip().startswith("<") and not {"image/png", "image/svg+xml"} & set(data):
            found.append(text)
    return found


@pytest.fixture(scope="module")
def built_book(smoke_notebooks) -> dict:
    """The book built by the one command, ``python -m spanlib book`` (:func:`spanlib.book.own.own_book`), with the
    smoke preset on the smoke notebooks' own films: its chapters are the ones the notebook smoke runs executed
    (same source and parameters), so nothing runs twice; the HTML is built with warnings as errors."""
    from spanlib.book.own import own_book

    lines: list[str] = []
    index = own_book(smoke_notebooks.sets, "smoke", out=smoke_notebooks.folder.parent, report=lines.append,
                     progress=False)
    html = index.parent
    entries = toc_files(yaml.safe_load((REPO / "_toc.yml").read_text()))
    notebooks = {entry: nbformat.read(smoke_notebooks.folder / f"{Path(entry).name}.ipynb", as_version=4)
                 for entry in entries if (smoke_notebooks.folder / f"{Path(entry).name}.ipynb").is_file()}
    return {"root": html.parent.parent, "html": html, "entries": entries, "notebooks": notebooks, "lines": lines,
            "sets": smoke_notebooks.sets}


def test_notebook_pages_have_figures_and_tables(built_book):
    assert built_book["notebooks"], "_toc.yml lists no notebook"
    for entry, notebook in built_book["notebooks"].items():
        page = built_book["html"] / f"{entry}.html"
        assert page.is_file(), f"{entry}: no HTML page"
        html = page.read_text()
        as_text = _figures_as_text(notebook)
        assert not as_text, f"{entry}: figures printed as text, not shown: {as_text[:3]} (return a spanlib.figures.style.BookFigure)"
        images, expected = html.count("<img"), _image_outputs(notebook)
        assert images >= max(1, expected), (
            f"{entry}: {images} <img> on the page for {expected} image outputs (a widget shown instead of its PNG?)"
        )
        if _shows_dataframe(notebook):
            assert "<table" in html, f"{entry}: the notebook shows a DataFrame but the page has no table"
        assert "Traceback" not in html, f"{entry}: an error is shown on the page"


def _screenshot(url: str, png: Path, profile: Path) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
            f"--window-size={WIDTH},{HEIGHT}", url]
    return subprocess.run(args, capture_output=True, text=True, timeout=90)


def test_pages_render_in_headless_chromium(built_book, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium not installed: apt-get install -y chromium (the .ci/run step) to screenshot the book")
    from PIL import Image

    pages = [e for e in built_book["entries"] if e == "notebooks/01_data" or "results" in Path(e).name]
    assert "notebooks/01_data" in pages
    for entry in pages:
        png = tmp_path / f"{Path(entry).name}.png"
        url = (built_book["html"] / f"{entry}.html").as_uri()
        result = _screenshot(url, png, tmp_path / f"profile-{Path(entry).name}")
        assert png.is_file(), f"{entry}: no screenshot (rc {result.returncode}):\n{result.stderr[-3000:]}"
        with Image.open(png) as shot:
            assert shot.size == (WIDTH, HEIGHT)
            rgb = shot.convert("RGB")
            colours = rgb.getcolors(maxcolors=WIDTH * HEIGHT)
        assert len(colours) > 500, f"{entry}: the screenshot has only {len(colours)} colours (blank page?)"
        white = {colour: count for count, colour in colours}.get((255, 255, 255), 0)
        assert white < 0.97 * WIDTH * HEIGHT, f"{entry}: the screenshot is almost all white"


def test_the_pages_show_the_users_films_and_their_numbers(built_book):
    """The data chapter names the user's folder; the knowledge-map chapter shows the Dice its own maps' build
    reported on that folder's masks; the inspection chapter says which rule kept its backbone without part masks."""
    html = built_book["html"]
    chest = Path(built_book["sets"].data)
    data_page = (html / "notebooks" / "01_data.html").read_text()
    assert f"images reader at {chest.name}" in data_page
    report = json.loads((REPO / "runs" / "smoke" / f"data-{chest.name}" / "maps" / "deformable" / "report.json").read_text())
    assert report["count"] == 48 and report["dice_films"] == 48
    maps_page = (html / "notebooks" / "02_knowledge_maps.html").read_text()
    assert f"Of the 48 registered films, {report['fell_back']} fell back" in maps_page
    for value in report["dice"].values():
        assert f"{100 * value:.1f}" in maps_page
    inspection = (html / "notebooks" / "06_inspection.html").read_text()
    assert "the set has no part masks to score attention against" in inspection
    assert any("no part masks" in line for line in built_book["lines"])


def _pages(built_book) -> list[tuple[str, Path]]:
    return [(entry, built_book["html"] / f"{entry}.html") for entry in built_book["entries"]]


TABLE = re.compile(r"<table\b.*?</table>", re.S | re.I)
NAN_CELL = re.compile(r"<t[dh][^>]*>\s*(?:NaN|nan)\s*</t[dh]>")


def test_no_table_shows_nan(built_book):
    found = {}
    for entry, page in _pages(built_book):
        cells = [m.group(0) for table in TABLE.findall(page.read_text()) for m in NAN_CELL.finditer(table)]
        if cells:
            found[entry] = cells[:3]
    assert not found, f"tables that show NaN (a dash where there is no value): {found}"


# Every table's visible box: within the text column, or inside a box that scrolls (its row names fixed).
TABLE_WIDTHS = """(() => {
  const column = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const right = column.getBoundingClientRect().right;
  const out = [];
  for (const table of document.querySelectorAll('article table')) {
    let scroller = null, clipper = null;
    for (let e = table.parentElement; e && e !== column; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX;
      if (!scroller && (o === 'auto' || o === 'scroll')) scroller = e;
      if (!scroller && !clipper && (o === 'hidden' || o === 'clip')) clipper = e;
    }
    const box = (scroller || table).getBoundingClientRect();
    const wide = table.scrollWidth > (scroller || column).clientWidth + 1;
    const head = table.querySelector('tbody th');
    out.push({text: table.innerText.slice(0, 60), right: box.right, column: right, clipped: !!clipper && wide,
              scrolls: !!scroller && table.scrollWidth > scroller.clientWidth + 1,
              sticky: head ? getComputedStyle(head).position === 'sticky' : null});
  }
  return out;
})()"""


def _chromium_or_skip() -> None:
    if chromium_path() is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (the .ci/run step) to look at the book")


def test_no_table_overflows_its_column(built_book, tmp_path):
    _chromium_or_skip()
    bad, seen = {}, 0
    with Chromium(tmp_path / "profile", width=WIDTH, height=1000) as page:
        for entry, html in _pages(built_book):
            page.load(html.as_uri())
            for table in page.evaluate(TABLE_WIDTHS):
                seen += 1
                if table["right"] > table["column"] + 1 or table["clipped"]:
                    bad.setdefault(entry, []).append(table)
                elif table["scrolls"] and table["sticky"] is False:
                    bad.setdefault(entry, []).append({**table, "why": "scrolls without fixed row names"})
    assert seen, "no table found on any page"
    assert not bad, f"tables that run past the text column or are cut: {bad}"


BROWSER = "notebooks/04_attention"
MODEL = "Bokeh.documents[0].get_model_by_name"


def test_attention_browser_runs_in_the_built_page(built_book, tmp_path):
    """The built page, opened from disk with no kernel: every control of the browser changes its picture."""
    _chromium_or_skip()
    assert BROWSER in built_book["entries"]
    with Chromium(tmp_path / "profile", width=WIDTH, height=1000) as page:
        page.load((built_book["html"] / f"{BROWSER}.html").as_uri())
        page.wait_for(f"window.Bokeh && Bokeh.documents.length > 0 && {MODEL}('status') && {MODEL}('status').text")
        page.evaluate("document.querySelector('.page-browser').scrollIntoView()")
        fits = page.evaluate("(() => { const b = document.querySelector('.page-browser');"
                             " const c = document.querySelector('article.bd-article') || document.body;"
                             " return {right: b.getBoundingClientRect().right, column: c.getBoundingClientRect().right,"
                             " content: b.scrollWidth, box: b.clientWidth}; })()")
        assert fits["right"] <= fits["column"] + 1 and fits["content"] <= fits["box"] + 1, \
            f"the browser does not fit the text column: {fits}"

        def picture() -> bytes:
            box = page.evaluate("(() => { const r = document.querySelector('.page-browser').getBoundingClientRect();"
                                " return {x: r.x + window.scrollX, y: r.y + window.scrollY, w: r.width, h: r.height}; })()")
            side = min(box["w"], box["h"])
            assert side > 100, f"the browser's picture is {box}"
            return page.screenshot({"x": box["x"], "y": box["y"], "width": side, "height": side})

        regimens = page.evaluate(f"{MODEL}('regimen').options")
        current = page.evaluate(f"{MODEL}('regimen').value")
        other = next(r for r in regimens if r != current)
        before = picture()
        for name, value, what in (("film", 2, "value"), ("regimen", other, "value"), ("head", "1", "value"),
                                  ("threshold", 0.6, "value"), ("overlay", [0], "active")):
            page.evaluate(f"{MODEL}({json.dumps(name)}).{what} = {json.dumps(value)}")
            after = picture()
            assert after != before, f"changing {name} to {value!r} left the picture as it was"
            before = after
        assert other in page.evaluate(f"{MODEL}('status').text")

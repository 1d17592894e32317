"""The built book, looked at: pages with figures and tables, screenshots in headless Chromium.

A copy of the book's real pages is built in a temporary folder: every
notebook of ``_toc.yml`` is executed with the ``smoke`` parameters
(papermill, once per session: the ``smoke_notebooks`` fixture of
``conftest.py``, shared with ``tests/test_notebooks.py``), the executed ``.ipynb`` replaces its text source, execution is
switched off in the copied ``_config.yml``, and ``jupyter-book build -W
--keep-going`` must succeed. ``spanlib`` is linked, not copied (the kernel
imports the installed package; the link lets ``spanlib.book.runs.project_root``
find the copy). The caches ``runs/`` and ``data/generated/`` are linked to
the repository's, the folders the notebook smoke runs of
``tests/test_notebooks.py`` use, so a run trained by one is reused by the
other (both are ignored by git and keyed by preset).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 2000
# Generated data and the npm digits under data/: shared with the repository, as runs/ is
CACHES = ("generated", ".npm")
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
def built_book(tmp_path_factory, smoke_notebooks) -> dict:
    """Copy the book, execute its notebooks with the smoke preset, build the HTML."""
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    for bib in REPO.glob("*.bib"):
        shutil.copy(bib, root / bib.name)
    shutil.copytree(REPO / "book", root / "book")
    (root / "spanlib").symlink_to(REPO / "spanlib", target_is_directory=True)
    (root / "data").mkdir()
    for item in (REPO / "data").iterdir():
        if item.name not in CACHES:
            (shutil.copytree if item.is_dir() else shutil.copy)(item, root / "data" / item.name)
    shared = [Path("runs"), Path("data/generated")] + ([Path("data/.npm")] if (REPO / "data/.npm").is_dir() else [])
    for cache in shared:
        (REPO / cache).mkdir(parents=True, exist_ok=True)
        (root / cache).symlink_to(REPO / cache, target_is_directory=True)

    entries = toc_files(yaml.safe_load((REPO / "_toc.yml").read_text()))
    notebooks: dict[str, nbformat.NotebookNode] = {}
    for entry in entries:
        source = _source(REPO, entry)
        target = root / source.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_relative_to(REPO / "book"):
            continue  # copied with book/
        notebook = jupytext.read(source)
        if "kernelspec" not in notebook.metadata:
            shutil.copy(source, target)
            continue
        executed = target.with_suffix(".ipynb")
        shutil.copy(smoke_notebooks.executed(source), executed)
        notebooks[entry] = nbformat.read(executed, as_version=4)
    if (REPO / "notebooks" / "params").is_dir():
        shutil.copytree(REPO / "notebooks" / "params", root / "notebooks" / "params", dirs_exist_ok=True)

    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    book_cmd = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(book_cmd), "build", str(root), "-W", "--keep-going"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return {"root": root, "html": root / "_build" / "html", "entries": entries, "notebooks": notebooks}


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

"""Shared fixtures: tiny models and toy samples written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spanlib.core.configs import ModelConfig


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(
        arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=6, drop_path_rate=0.0
    )


def toy_samples(n: int = 32, size: int = 32, seed: int = 0):
    """Noise images whose ground truth is an unmistakable band at the image's left."""
    from spanlib.data import Sample

    rng = np.random.default_rng(seed)
    band = np.zeros((size, size), bool)
    band[:, : size * 3 // 8] = True
    out = []
    for i in range(n):
        img = (rng.random((size, size)) * 0.5).astype(np.float32)
        out.append(
            Sample(
                id=f"toy{i:03d}",
                image=img,
                masks={"left_lung": band[:, ::-1].copy(), "right_lung": band.copy(), "heart": band.copy()},
            )
        )
    return out


@pytest.fixture
def toy() -> list:
    return toy_samples()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


REPO = Path(__file__).resolve().parents[1]


class SmokeNotebooks:
    """Each text notebook executed once per test session with the ``smoke`` parameters.

    ``tests/test_notebooks.py`` checks that every notebook runs;
    ``tests/test_book_html.py`` builds the book from the same executed
    copies instead of running every notebook a second time. A notebook runs
    from ``notebooks/`` in the repository (its caches ``data/generated/`` and
    ``runs/`` are keyed by preset and ignored by git) on first request.
    """

    def __init__(self, folder: Path) -> None:
        from spanlib.core.presets import notebook_parameters

        self.folder = folder
        self.parameters = notebook_parameters("smoke")
        self._done: dict[Path, Path | BaseException] = {}

    def executed(self, source: Path) -> Path:
        """The executed ``.ipynb`` of a text notebook; re-raises its failure on every request."""
        import jupytext
        import nbformat
        import papermill

        source = source.resolve()
        if source not in self._done:
            unexecuted = self.folder / f"{source.stem}.ipynb"
            out = self.folder / f"{source.stem}.out.ipynb"
            nbformat.write(jupytext.read(source), unexecuted)
            try:
                papermill.execute_notebook(str(unexecuted), str(out), parameters=self.parameters, cwd=str(source.parent),
                                           kernel_name="python3", progress_bar=False)
                self._done[source] = out
            except BaseException as error:  # noqa: BLE001 - kept and re-raised for every test that needs it
                self._done[source] = error
        result = self._done[source]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture(scope="session")
def smoke_notebooks(tmp_path_factory) -> SmokeNotebooks:
    return SmokeNotebooks(tmp_path_factory.mktemp("smoke-notebooks"))

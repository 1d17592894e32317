"""Feature and attention extraction: the CPU path as before, the disk cache in chunks, resuming, and CUDA."""

from __future__ import annotations

import pytest
import torch

from spanlib.core.configs import resolve
from spanlib.data import FolderDataset, make_default_data
from spanlib.data.transforms import EvaluationView
from spanlib.eval.extract import DiskCache, cached_extract, extract
from spanlib.model.export import load_backbone
from spanlib.model.vit import forward_with_attention
from spanlib.pretrain.train import pretrain

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path cannot run here")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    paths = make_default_data("smoke", root / "data")
    pretrain(resolve("smoke", "span_triangular", {"run.data": str(paths["chest"]), "optim.epochs": 1}), root / "run")
    return root / "run", FolderDataset(paths["chest"], split="train")


def test_the_cpu_path_gives_one_forward_pass_numbers(smoke_run):
    """On the CPU: float32, no autocast, the same numbers as one plain forward pass over the stacked views."""
    run, films = smoke_run
    cfg, model, _ = load_backbone(run)
    out = extract(model, cfg, films, batch_size=5, device="cpu")
    x = EvaluationView(cfg.views, cfg.model.img_size, cfg.model.in_chans).stack([films[i] for i in range(len(films))])
    features, attention = forward_with_attention(model, x)
    torch.testing.assert_close(out["features"], model.forward_features(x)[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["attention"], attention, rtol=1e-5, atol=1e-6)
    assert out["features"].dtype == torch.float32 and out["ids"] == films.ids
    assert features.shape[0] == len(films)


def test_the_disk_cache_in_chunks_equals_one_pass_and_resumes(smoke_run, tmp_path, monkeypatch):
    run, films = smoke_run
    backbone = load_backbone(run)
    whole = extract(backbone[1], backbone[0], films, device="cpu")
    calls = []
    import spanlib.eval.extract as E

    real = E.extract

    def failing(*args, **kwargs):
        calls.append(args[7])  # the chunk's first film
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "extract", failing)
    with pytest.raises(KeyboardInterrupt):
        cached_extract(run, films, backbone=backbone, chunk=7, device="cpu")
    folder = next((run / "eval").glob("cache-*"))
    assert DiskCache(folder).done_chunks() == {0, 1} and not DiskCache(folder).complete()
    monkeypatch.setattr(E, "extract", lambda *a, **k: calls.append(a[7]) or real(*a, **k))
    out = cached_extract(run, films, backbone=backbone, chunk=7, device="cpu")
    assert calls == [0, 7, 14, 14, 21, 28]  # killed in the third chunk, resumed there: 32 films in chunks of 7
    assert out["ids"] == whole["ids"] == films.ids
    # chunks of 7 against the whole set's batches: the same numbers up to float32 summation order (BLAS blocks a
    # matrix product by its batch size, and by the thread count)
    torch.testing.assert_close(out["features"], whole["features"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["attention"], whole["attention"], rtol=1e-4, atol=1e-5)
    assert isinstance(out["features"], torch.Tensor) and DiskCache(folder).complete()
    before = len(calls)
    again = cached_extract(run, films, backbone=backbone, chunk=7, device="cpu")  # complete: read back, no forward
    assert len(calls) == before and torch.equal(again["features"], out["features"])  # read back as written


@pytest.mark.gpu
@needs_cuda
def test_extraction_on_cuda_matches_the_cpu_within_bfloat16(smoke_run):
    run, films = smoke_run
    cfg, model, _ = load_backbone(run)
    cpu = extract(model, cfg, films, device="cpu")
    gpu = extract(model, cfg, films, device="cuda", workers=2)
    assert gpu["ids"] == cpu["ids"] and gpu["features"].device.type == "cpu"
    cos = torch.nn.functional.cosine_similarity(gpu["features"], cpu["features"], dim=-1)
    assert cos.min() > 0.99
    assert (gpu["attention"] - cpu["attention"]).abs().max() < 0.02


@pytest.mark.gpu
@needs_cuda
def test_the_disk_cache_on_cuda(smoke_run):
    run, films = smoke_run
    out = cached_extract(run, films, chunk=10, device="cuda", n_last_blocks=2)
    assert out["features"].shape[0] == len(films) and torch.isfinite(out["attention"]).all()

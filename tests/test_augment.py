import torch

from spanlib.pretrain.augment import HorizontalFlipSwap, ViewMaker, flip_permutation
from spanlib.core.configs import ViewConfig

ORGANS = ("left_lung", "right_lung", "heart")


def _image_and_maps(size=64):
    """A bright square; map 0 is the square, map 1 its mirror, map 2 a corner."""
    image = torch.zeros(size, size)
    image[10:26, 40:56] = 1.0
    maps = torch.zeros(3, size, size)
    maps[0, 10:26, 40:56] = 1
    maps[1, 10:26, 8:24] = 1
    maps[2, 50:60, 2:12] = 1
    return image, maps


def test_flip_permutation():
    assert flip_permutation(ORGANS) == [1, 0, 2]
    assert flip_permutation(("heart",)) == [0]


def test_flip_swaps_lungs():
    image, maps = _image_and_maps()
    from torchvision import tv_tensors

    t = HorizontalFlipSwap(ORGANS, p=1.0)
    img, m = t(tv_tensors.Image(image[None]), tv_tensors.Mask(maps))
    # the square moved to the mirror position, and its map moved with it AND changed channel
    assert img[0, 10:26, 8:24].min() == 1.0
    torch.testing.assert_close(m[1], maps[0].flip(-1))
    torch.testing.assert_close(m[0], maps[1].flip(-1))
    torch.testing.assert_close(m[2], maps[2].flip(-1))


def _check_maps_follow_image(kind):
    image, maps = _image_and_maps()
    maps[1] = 0  # only the bright square is mapped: after a flip it is channel 1
    cfg = ViewConfig(kind=kind, local_crops_number=2, local_crop_size=32, brightness=0.0, contrast=0.0, global_crop_scale=(0.5, 1.0))
    views = ViewMaker(cfg, 48, ORGANS, in_chans=1)
    for seed in range(12):
        torch.manual_seed(seed)
        out = views(image, maps)
        for v in range(2):
            img = out["global"][v, 0] * cfg.std + cfg.mean  # undo normalisation
            square = out["global_maps"][v, 0] + out["global_maps"][v, 1]  # either side after a flip
            inside = square > 0.5
            assert set(out["global_maps"][v].unique().tolist()) <= {0.0, 1.0}, "maps stay binary (nearest)"
            if inside.sum() > 20 and kind == "cxr":
                # where the map says "square", the image is bright; far outside it is dark
                assert img[inside].mean() > 0.6
                assert img[~inside].mean() < 0.25


def test_cxr_views_move_maps_with_image():
    _check_maps_follow_image("cxr")


def test_dino_views_shapes_and_locals():
    image, maps = _image_and_maps()
    views = ViewMaker(ViewConfig(kind="dino", local_crops_number=3, local_crop_size=24), 48, ORGANS)
    out = views(image, maps)
    assert out["global"].shape == (2, 3, 48, 48)
    assert out["global_maps"].shape == (2, 3, 48, 48)
    assert out["local"].shape == (3, 3, 24, 24)


def test_cxr_views_have_no_local_crops():
    image, maps = _image_and_maps()
    out = ViewMaker(ViewConfig(kind="cxr"), 48, ORGANS)(image, maps)
    assert "local" not in out

"""Object-level BYOL with refined masks ("Refine and Represent", thesis chapter 2).

BYOL (online network with predictor, EMA target, ``2 - 2 cos`` symmetrised)
in which global pooling is replaced by pooling under object masks: SLIC
superpixels of the original image, merged by K-means over the target
encoder's mask-pooled features, carried into both views with ROIAlign; the
loss is averaged over the masks present in both views.

* :mod:`spanlib.byol.config`: :class:`ByolConfig` and the presets (data).
* :mod:`spanlib.byol.masks`: SLIC priors, mask pooling, K-means refinement, ROI-aligned masks.
* :mod:`spanlib.byol.views`: BYOL's augmentations, keeping each view's crop box and flip.
* :mod:`spanlib.byol.model`: tiny ResNet, projector, predictor, the loss, the EMA.
* :mod:`spanlib.byol.train`: the training step and loop, checkpoints, the run cache.
* :mod:`spanlib.byol.data`: a split as cached arrays, with cached SLIC priors.
* :mod:`spanlib.byol.evaluate`: frozen features, segmentation probe, mask quality.
"""

from spanlib.byol.config import BYOL_PRESETS, BYOL_STUDIES, ByolConfig, ByolOptimConfig, ByolStudy, byol_config, byol_study
from spanlib.byol.masks import best_iou, carry_masks, kmeans, mask_pool, one_hot, refine_masks, slic_priors
from spanlib.byol.model import ByolNetwork, TinyResNet, byol_loss, update_target
from spanlib.byol.train import ByolRun, byol_step, ensure_byol, ensure_byol_runs, load_run, run_name, train_byol
from spanlib.byol.views import ByolViews

__all__ = [
    "BYOL_PRESETS",
    "BYOL_STUDIES",
    "ByolConfig",
    "ByolOptimConfig",
    "ByolNetwork",
    "ByolRun",
    "ByolStudy",
    "ByolViews",
    "TinyResNet",
    "best_iou",
    "byol_config",
    "byol_study",
    "byol_loss",
    "byol_step",
    "carry_masks",
    "ensure_byol",
    "ensure_byol_runs",
    "kmeans",
    "load_run",
    "mask_pool",
    "one_hot",
    "refine_masks",
    "run_name",
    "slic_priors",
    "train_byol",
    "update_target",
]

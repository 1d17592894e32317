"""What shapes attention maps: loss, views, crops per branch and resolution, on cluttered digits.

After Zhang's seminar study of DINO's attention maps: train a small ViT by
self-supervision on cluttered digits (one handwritten digit and fragments of
other digits on a canvas, :mod:`spanlib.data.digits`) and measure, per head
of the last block, how much of the CLS attention falls on the digit rather
than on the clutter. Four factors are varied, one at a time:

* **loss**: DINO's cross-entropy between an EMA teacher's centred, sharpened
  output and the student's (:class:`spanlib.model.dino.DINOLoss`), or SimCLR's
  contrastive NCE loss (:func:`nt_xent`: one network and a projection head;
  the other view of the same canvas is the positive, the ``2N - 2`` views of
  the other canvases of the batch the negatives);
* **views** (:data:`VIEW_MODES`): ``"same"``, both branches crop the same
  canvas, so the views share the digit *and* the clutter; ``"digit_only"``,
  each branch gets its own canvas on which the same digit image sits at a
  fresh random position among fresh clutter on a fresh background, so the
  views share only the digit;
* **crops per branch** (1, 2, 4): the loss runs over all pairs of one crop
  of each branch;
* **input resolution and patch size**, which set the attention grid.

Augmentations suit binary images: random resized crop, rotation and Gaussian
blur (torchvision transforms v2); no colour jitter, solarization or flips.

Modules: :mod:`~spanlib.attention_study.config` (variants and presets, as
data), :mod:`~spanlib.attention_study.views` (canvases and crops),
:mod:`~spanlib.attention_study.losses`, :mod:`~spanlib.attention_study.training`
(one variant, cached by its configuration), :mod:`~spanlib.attention_study.scoring`
(pixel AP and the pointing game of :mod:`spanlib.eval.metrics`, per head, and the
AP of digit against clutter ink), :mod:`~spanlib.attention_study.study`
(the results of every variant) and :mod:`~spanlib.attention_study.figures`.
The chapter's call, every variant of a preset trained (or loaded) and scored,
is :func:`spanlib.book.shapes.run_study`, beside the other chapters' calls.
"""

from spanlib.attention_study.config import (
    LOSSES,
    PRESETS,
    VIEW_MODES,
    StudyConfig,
    StudyDinoConfig,
    StudyModelConfig,
    StudyOptimConfig,
    StudyPreset,
    Variant,
    study_preset,
)
from spanlib.attention_study.losses import ProjectionHead, branch_dino_loss, branch_nce_loss, nt_xent, positive_top1
from spanlib.attention_study.scoring import (
    METRICS,
    EvalSet,
    attention_maps,
    attention_monitor,
    digit_vs_clutter_ap,
    head_summary,
    load_eval_set,
    mass_share,
    score_attention,
    uniform_reference,
)
from spanlib.attention_study.study import StudyResults, VariantResult
from spanlib.attention_study.training import CACHE_VERSION, TrainedVariant, cache_key, ensure_variant, train_variant
from spanlib.attention_study.views import (
    INK_THRESHOLD,
    Canvas,
    CanvasRenderer,
    augmentation,
    digits_config_from_meta,
    ensure_digits,
    make_views,
    training_renderer,
)

__all__ = [
    "CACHE_VERSION",
    "INK_THRESHOLD",
    "LOSSES",
    "METRICS",
    "PRESETS",
    "VIEW_MODES",
    "Canvas",
    "CanvasRenderer",
    "EvalSet",
    "ProjectionHead",
    "StudyConfig",
    "StudyDinoConfig",
    "StudyModelConfig",
    "StudyOptimConfig",
    "StudyPreset",
    "StudyResults",
    "TrainedVariant",
    "Variant",
    "VariantResult",
    "attention_maps",
    "attention_monitor",
    "augmentation",
    "branch_dino_loss",
    "branch_nce_loss",
    "cache_key",
    "digit_vs_clutter_ap",
    "digits_config_from_meta",
    "ensure_digits",
    "ensure_variant",
    "head_summary",
    "load_eval_set",
    "make_views",
    "mass_share",
    "nt_xent",
    "positive_top1",
    "score_attention",
    "study_preset",
    "train_variant",
    "training_renderer",
    "uniform_reference",
]

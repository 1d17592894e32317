"""Deformable registration of one annotated exemplar onto many images, in torch.

:func:`register_batch` (the default, fast) registers many images at once.
Each image gets an affine transform and a cubic b-spline free-form
deformation ``T(x) = A x + b + sum_k B(x - c_k) d_k`` over a coarse control
grid (:mod:`spanlib.maps.bspline`), fitted by Adam on local normalised
cross-correlation (LNCC) with a bending-energy penalty and a penalty on small
Jacobian determinants, coarse to fine (pyramid levels and control grids).
Registration runs at the resolution the attention needs (32 then 64 px by
default), and the exemplar's masks are then warped with NEAREST-NEIGHBOUR
interpolation at the output size, from the continuous transform. Torch runs
single-threaded inside (see :func:`single_thread`); parallelism comes from
one worker process per core. :mod:`spanlib.maps.registration_sitk` holds the
SimpleITK reference implementation, with the same output
(:class:`RegistrationResult`) and the same fallback chain (:func:`decide`).

Fallback chain, per image: deformable -> affine only -> the fallback template
(the global average, or the spatial heuristic). A fallback is taken when the
image is unusable (non-finite or constant pixels), when an exception is
raised, when the result is non-finite, when the deformation folds (Jacobian
determinant <= 0 on more than ``max_folding`` of the pixels), or when the
match is poor (global NCC below ``min_ncc``, or worse than the affine stage).
The reason is recorded in the result; a batch never crashes on one image.

Coordinates: normalised ``[-1, 1]`` as ``torch.nn.functional.grid_sample``
with ``align_corners=False``; the transform maps a point of the target image
to the exemplar.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from spanlib.core.configs import FrozenConfig
from spanlib.core.device import torch_threads
from spanlib.maps.bspline import (
    BSplineField,
    LocalNCC,
    centroid,
    folding_fraction,
    global_ncc,
    identity_theta,
    resize_batch,
    sampling_grid,
    standardise,
    warp,
    warp_masks,
)


METHODS: tuple[str, ...] = ("deformable", "affine", "fallback")


@dataclass(frozen=True)
class RegistrationConfig(FrozenConfig):
    """Settings of the batched torch registration.

    Attributes:
        affine_levels: ``(resolution, iterations)`` per affine level, coarse
            to fine.
        bspline_levels: ``(resolution, control cells per side, iterations)``
            per b-spline level; each level starts from the previous level's
            field, re-expressed exactly on its finer control grid.
        affine_lr: Adam step of the affine parameters.
        bspline_lr: Adam step of the control-point displacements (normalised
            units).
        bending_weight: weight of the bending energy of the displacement.
        folding_weight: weight of the penalty on Jacobian determinants below
            0.1 (a fold-free transform has them all positive).
        ncc_window: side of the LNCC window at the finest level, in pixels.
        max_folding: largest tolerated fraction of pixels with a Jacobian
            determinant <= 0.
        min_ncc: smallest tolerated global NCC between the warped exemplar
            and the image.
        max_ncc_drop: the deformable result is rejected when its NCC is this
            much below the affine result's.
        batch_size: images registered together.
    """

    affine_levels: tuple[tuple[int, int], ...] = ((32, 80),)
    bspline_levels: tuple[tuple[int, int, int], ...] = ((32, 4, 80), (64, 8, 40))
    affine_lr: float = 0.02
    bspline_lr: float = 0.01
    bending_weight: float = 0.2
    folding_weight: float = 10.0
    ncc_window: int = 9
    max_folding: float = 0.01
    min_ncc: float = 0.3
    max_ncc_drop: float = 0.02
    batch_size: int = 32



@dataclass
class RegistrationResult:
    """Knowledge maps of one image and how they were obtained.

    Attributes:
        maps: bool ``[n_organs, S, S]``, the exemplar's masks warped onto the
            image (or the fallback template).
        method: ``deformable``, ``affine`` or ``fallback``.
        quality: ``ncc_identity``, ``ncc_affine``, ``ncc_deformable``
            (global NCC of the warped exemplar with the image at the working
            resolution) and ``folding`` (fraction of pixels whose Jacobian
            determinant is <= 0); NaN where a stage did not run.
        reason: why the deformable result was not kept (empty when it was).
    """

    maps: np.ndarray
    method: str
    quality: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def image_problem(image: np.ndarray) -> str:
    """Why an image cannot be registered, or an empty string."""
    if image.ndim != 2:
        return f"image must be 2-D, got shape {tuple(image.shape)}"
    if not np.isfinite(image).all():
        return "image has non-finite pixels"
    if float(np.ptp(image)) < 1e-6:
        return "image is constant"
    return ""


# --------------------------------------------------------------------------- torch batch


class Adam:
    """Adam on one tensor, written out (a few tensor ops per step).

    ``torch.optim.Adam`` does the same but costs a second or more of imports
    on its first use in every worker process and a fixed overhead per step
    that matters at these tensor sizes.

    Args:
        parameter: the tensor optimised in place (``requires_grad=True``).
        lr: step size.
        betas: decay of the first and second moment estimates.
        eps: added to the denominator.
    """

    def __init__(self, parameter: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.parameter, self.lr, self.betas, self.eps = parameter, lr, betas, eps
        self.first = torch.zeros_like(parameter)
        self.second = torch.zeros_like(parameter)
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """One update from ``parameter.grad``; clears the gradient."""
        grad = self.parameter.grad
        self.steps += 1
        beta1, beta2 = self.betas
        self.first.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        self.second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denominator = (self.second / (1.0 - beta2**self.steps)).sqrt_().add_(self.eps)
        self.parameter.addcdiv_(self.first, denominator, value=-self.lr / (1.0 - beta1**self.steps))
        self.parameter.grad = None


def _prepare(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    tensors = [resize_batch(torch.as_tensor(np.asarray(im, dtype=np.float32))[None, None], size) for im in images]
    return torch.cat(tensors)


def _fit_affine(fixed: torch.Tensor, moving: torch.Tensor, config: RegistrationConfig) -> torch.Tensor:
    batch = fixed.shape[0]
    theta0 = identity_theta(batch)
    coarse = config.affine_levels[0][0] if config.affine_levels else fixed.shape[-1]
    theta0[:, :, 2] = centroid(resize_batch(moving, coarse)) - centroid(resize_batch(fixed, coarse))  # [1] - [B]
    delta = torch.zeros(batch, 2, 3, requires_grad=True)
    optimizer = Adam(delta, lr=config.affine_lr)
    for size, iterations in config.affine_levels:
        target = standardise(resize_batch(fixed, size))
        source = standardise(resize_batch(moving, size)).expand(batch, -1, -1, -1)
        for _ in range(iterations):
            warped = warp(source, F.affine_grid(theta0 + delta, [batch, 1, size, size], align_corners=False))
            loss = -global_ncc(warped, target).sum()
            loss.backward()
            optimizer.step()
    return (theta0 + delta).detach()


def _fit_bspline(
    fixed: torch.Tensor, moving: torch.Tensor, theta: torch.Tensor, config: RegistrationConfig
) -> BSplineField:
    if not config.bspline_levels:
        return BSplineField(fixed.shape[0], 1)
    field_ = BSplineField(fixed.shape[0], config.bspline_levels[0][1])
    finest = config.bspline_levels[-1][0]
    for size, n_cells, iterations in config.bspline_levels:
        field_.refine(n_cells)
        field_.control.requires_grad_(True)
        optimizer = Adam(field_.control, lr=config.bspline_lr)
        target = standardise(resize_batch(fixed, size))
        source = standardise(resize_batch(moving, size)).expand(fixed.shape[0], -1, -1, -1)
        base = F.affine_grid(theta, [theta.shape[0], 1, size, size], align_corners=False)
        window = max(3, int(round(config.ncc_window * size / finest)) | 1)
        similarity_to = LocalNCC(target, window)
        fold_size = min(size, 4 * n_cells)  # folding is smooth at the control-grid scale
        for _ in range(iterations):
            warped = warp(source, base + field_.displacement(size, size))
            folding = F.relu(0.1 - field_.jacobian_determinant(theta, fold_size)).mean(dim=(1, 2))
            loss = (-similarity_to(warped) + config.bending_weight * field_.bending_energy(size)
                    + config.folding_weight * folding).sum()
            loss.backward()
            optimizer.step()
        field_.control = field_.control.detach()
    return field_


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the thread count.

    The registration's tensors are small (a batch of 64 px images), so
    intra-op threads only add synchronisation: on two shared cores two
    threads made it several times slower in CPU time, not faster. Parallelism
    comes from one single-threaded worker process per core instead.
    """
    with torch_threads(1):
        yield


def register_batch(
    images: Sequence[np.ndarray],
    exemplar_image: np.ndarray,
    exemplar_masks: np.ndarray,
    fallback_maps: np.ndarray,
    config: RegistrationConfig = RegistrationConfig(),
) -> list[RegistrationResult]:
    """Register the exemplar onto each image; warp its masks; apply the fallback chain.

    Args:
        images: 2-D float images (any sizes; each is resized to the working
            resolutions).
        exemplar_image: the annotated exemplar, 2-D float.
        exemplar_masks: bool ``[n_organs, h, w]``, the exemplar's masks.
        fallback_maps: bool ``[n_organs, S, S]``, the last resort (global
            average or heuristic); ``S`` is the output size of every map.
        config: optimisation and quality settings.

    Returns:
        One :class:`RegistrationResult` per image, in order; maps are
        ``[n_organs, S, S]`` bool.

    Raises:
        ValueError: when the exemplar itself is unusable.

    Torch runs single-threaded inside (:func:`single_thread`); run one
    process per core for parallelism.
    """
    problem = image_problem(np.asarray(exemplar_image, dtype=np.float32))
    if problem:
        raise ValueError(f"exemplar: {problem}")
    fallback_maps = np.asarray(fallback_maps).astype(bool)
    masks = np.asarray(exemplar_masks).astype(bool)
    if fallback_maps.ndim != 3 or masks.ndim != 3 or fallback_maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"exemplar masks {masks.shape} and fallback maps {fallback_maps.shape} must be [n_organs, H, W] alike"
        )
    results: list[RegistrationResult | None] = [None] * len(images)
    usable: list[int] = []
    for i, image in enumerate(images):
        why = image_problem(np.asarray(image, dtype=np.float32))
        if why:
            results[i] = RegistrationResult(fallback_maps.copy(), "fallback", nan_quality(), why)
        else:
            usable.append(i)
    for start in range(0, len(usable), config.batch_size):
        chunk = usable[start : start + config.batch_size]
        try:
            with single_thread():
                done = _register_chunk([images[i] for i in chunk], exemplar_image, masks, fallback_maps, config)
        except Exception as error:  # noqa: BLE001 - one failed chunk must not stop the batch
            if len(chunk) == 1:
                done = [RegistrationResult(fallback_maps.copy(), "fallback", nan_quality(), f"exception: {error!r}")]
            else:  # retry image by image so that only the culprit falls back
                done = [
                    register_batch([images[i]], exemplar_image, masks, fallback_maps, config)[0] for i in chunk
                ]
        for i, result in zip(chunk, done):
            results[i] = result
    return [r for r in results if r is not None]


def select_exemplar(
    candidates: Sequence[tuple[np.ndarray, np.ndarray]],
    probes: Sequence[np.ndarray],
    config: RegistrationConfig = RegistrationConfig(),
) -> tuple[int, list[float]]:
    """Pick the most typical annotated image as the exemplar.

    Each candidate is registered onto the same probe images; the one whose
    warped image matches them best (mean global NCC after the deformable
    stage, a failed registration counting -1) wins. A film with a raised
    hemidiaphragm or a small heart registers worse onto typical films, and
    its masks transfer worse. Runs single-threaded (as :func:`register_batch`
    does), so the choice does not depend on the machine's thread count.

    Args:
        candidates: ``(image, masks [n_organs, H, W])`` pairs.
        probes: images to register onto (not among the candidates, ideally).
        config: the registration settings.

    Returns:
        The index of the chosen candidate and every candidate's score.

    Raises:
        ValueError: no candidates or no probes.
    """
    if not candidates or not probes:
        raise ValueError(f"need candidates and probes, got {len(candidates)} candidates and {len(probes)} probes")
    scores = []
    for image, masks in candidates:
        if image_problem(np.asarray(image, dtype=np.float32)):
            scores.append(-1.0)
            continue
        fallback = np.zeros((len(masks), 8, 8), dtype=bool)
        results = register_batch(probes, image, masks, fallback, config)
        values = [r.quality.get("ncc_deformable", math.nan) for r in results]
        scores.append(float(np.mean([v if math.isfinite(v) else -1.0 for v in values])))
    return int(np.argmax(scores)), scores


def nan_quality() -> dict[str, float]:
    """The quality measures of a registration that did not run: all NaN."""
    return {"ncc_identity": math.nan, "ncc_affine": math.nan, "ncc_deformable": math.nan, "folding": math.nan}


def _register_chunk(
    images: Sequence[np.ndarray],
    exemplar_image: np.ndarray,
    masks: np.ndarray,
    fallback_maps: np.ndarray,
    config: RegistrationConfig,
) -> list[RegistrationResult]:
    work = max([s for s, _ in config.affine_levels] + [s for s, _, _ in config.bspline_levels])
    out_size = fallback_maps.shape[-1]
    fixed = _prepare(images, work)
    moving = _prepare([exemplar_image], work)
    batch = fixed.shape[0]
    theta = _fit_affine(fixed, moving, config)
    field_ = _fit_bspline(fixed, moving, theta, config)
    with torch.no_grad():
        ncc_identity = global_ncc(warp(moving, sampling_grid(identity_theta(batch), None, work, work)), fixed)
        ncc_affine = global_ncc(warp(moving, sampling_grid(theta, None, work, work)), fixed)
        deformable_grid = sampling_grid(theta, field_, work, work)
        ncc_deformable = global_ncc(warp(moving, deformable_grid), fixed)
        folding = folding_fraction(deformable_grid)
        qualities = [
            {"ncc_identity": float(ncc_identity[i]), "ncc_affine": float(ncc_affine[i]),
             "ncc_deformable": float(ncc_deformable[i]), "folding": float(folding[i])}
            for i in range(batch)
        ]
        decisions = [decide(q, config.min_ncc, config.max_folding, config.max_ncc_drop) for q in qualities]
        keep = [i for i, (method, _) in enumerate(decisions) if method == "deformable"]
        rigid = [i for i, (method, _) in enumerate(decisions) if method == "affine"]
        maps: dict[int, np.ndarray] = {}
        if keep:  # warp at the output size only what is kept
            field_.control = field_.control[keep]
            maps.update(zip(keep, warp_masks(masks, sampling_grid(theta[keep], field_, out_size, out_size))))
        if rigid:
            maps.update(zip(rigid, warp_masks(masks, sampling_grid(theta[rigid], None, out_size, out_size))))
    return [
        RegistrationResult(maps[i] if i in maps else fallback_maps.copy(), method, quality, reason)
        for i, (quality, (method, reason)) in enumerate(zip(qualities, decisions))
    ]


def decide(
    quality: dict[str, float],
    min_ncc: float,
    max_folding: float,
    max_ncc_drop: float,
    deformable_ran: bool = True,
    affine_ran: bool = True,
) -> tuple[str, str]:
    """The fallback chain on quality measures: deformable, else affine, else the template.

    Args:
        quality: the measures of :class:`RegistrationResult`.
        min_ncc: smallest acceptable global NCC.
        max_folding: largest acceptable folding fraction.
        max_ncc_drop: largest acceptable NCC loss of the deformable stage
            relative to the affine stage.
        deformable_ran: False when the deformable stage produced no maps.
        affine_ran: False when the affine stage produced no maps.

    Returns:
        ``(method, reason)``: ``deformable``, ``affine`` or ``fallback``, and
        why the deformable result was rejected (empty when kept).
    """
    ncc_d = quality.get("ncc_deformable", math.nan)
    ncc_a = quality.get("ncc_affine", math.nan)
    fold = quality.get("folding", math.nan)
    if not deformable_ran or not math.isfinite(ncc_d) or not math.isfinite(fold):
        reason = "deformable stage failed (non-finite result)"
    elif fold > max_folding:
        reason = f"deformation folds on {fold:.3f} of pixels (> {max_folding})"
    elif ncc_d < min_ncc:
        reason = f"deformable NCC {ncc_d:.3f} < {min_ncc}"
    elif math.isfinite(ncc_a) and ncc_d < ncc_a - max_ncc_drop:
        reason = f"deformable NCC {ncc_d:.3f} worse than affine {ncc_a:.3f}"
    else:
        return "deformable", ""
    if not affine_ran or not math.isfinite(ncc_a):
        return "fallback", f"{reason}; affine stage failed (non-finite result)"
    if ncc_a < min_ncc:
        return "fallback", f"{reason}; affine NCC {ncc_a:.3f} < {min_ncc}"
    return "affine", reason


def choose(
    quality: dict[str, float],
    deformable_maps: np.ndarray | None,
    affine_maps: np.ndarray | None,
    fallback_maps: np.ndarray,
    min_ncc: float,
    max_folding: float,
    max_ncc_drop: float,
) -> RegistrationResult:
    """Apply :func:`decide` and keep the chosen maps.

    Args:
        quality: the measures of :class:`RegistrationResult`.
        deformable_maps: masks warped by the full transform (None: failed).
        affine_maps: masks warped by the affine stage only (None: failed).
        fallback_maps: the last resort.
        min_ncc: see :func:`decide`.
        max_folding: see :func:`decide`.
        max_ncc_drop: see :func:`decide`.

    Returns:
        The kept maps, the method, and the reason for any fallback.
    """
    method, reason = decide(quality, min_ncc, max_folding, max_ncc_drop, deformable_maps is not None,
                            affine_maps is not None)
    maps = {"deformable": deformable_maps, "affine": affine_maps, "fallback": fallback_maps}[method]
    return RegistrationResult(np.array(maps, dtype=bool), method, quality, reason)

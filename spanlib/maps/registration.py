"""Deformable registration of one annotated exemplar onto many images.

Two implementations of the same b-spline registration, with the same output
(:class:`RegistrationResult`) and the same fallback chain:

* :func:`register_batch` (the default, fast): many images at once in torch.
  Each image gets an affine transform and a cubic b-spline free-form
  deformation ``T(x) = A x + b + sum_k B(x - c_k) d_k`` over a coarse control
  grid, fitted by Adam on local normalised cross-correlation (LNCC) with a
  bending-energy penalty and a penalty on small Jacobian determinants, coarse
  to fine (pyramid levels and control grids). The b-spline displacement is a
  separable product of two small basis matrices, so the field, its
  derivatives and its bending energy at any resolution are a few small
  matrix products. Registration runs at the resolution the attention needs
  (32 then 64 px by default), and the exemplar's masks are then warped with
  NEAREST-NEIGHBOUR interpolation at the output size, from the continuous
  transform. Torch runs single-threaded inside (see :func:`single_thread`);
  parallelism comes from one worker process per core.
* :func:`register_pair_sitk` (the reference): SimpleITK's multi-resolution
  b-spline registration of one pair (moments-initialised affine stage, then a
  b-spline stage whose control mesh is refined per pyramid level), masks
  resampled with ``sitkNearestNeighbor``.

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
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from spanlib.core.device import torch_threads

METHODS: tuple[str, ...] = ("deformable", "affine", "fallback")


@dataclass(frozen=True)
class RegistrationConfig:
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

    def to_dict(self) -> dict:
        """A JSON-ready copy (tuples become lists)."""
        return json_ready(asdict(self))


def json_ready(value: object) -> object:
    """Tuples to lists, recursively, so that ``json.dumps`` round-trips."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


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


# --------------------------------------------------------------------------- helpers


def image_problem(image: np.ndarray) -> str:
    """Why an image cannot be registered, or an empty string."""
    if image.ndim != 2:
        return f"image must be 2-D, got shape {tuple(image.shape)}"
    if not np.isfinite(image).all():
        return "image has non-finite pixels"
    if float(np.ptp(image)) < 1e-6:
        return "image is constant"
    return ""


def _cubic_bspline(t: torch.Tensor, derivative: int = 0) -> torch.Tensor:
    """The centred cubic b-spline kernel (support [-2, 2]) or its first or second derivative."""
    a = t.abs()
    inner, outer = a < 1.0, (a >= 1.0) & (a < 2.0)
    if derivative == 0:
        values = torch.where(inner, (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0, (2.0 - a) ** 3 / 6.0)
    elif derivative == 1:
        values = torch.where(inner, -2.0 * t + 1.5 * t * a, -torch.sign(t) * (2.0 - a) ** 2 / 2.0)
    else:
        values = torch.where(inner, -2.0 + 3.0 * a, 2.0 - a)
    return torch.where(inner | outer, values, torch.zeros_like(values))


@functools.lru_cache(maxsize=64)
def bspline_basis(n_pixels: int, n_cells: int, derivative: int = 0) -> torch.Tensor:
    """Cubic b-spline weights of ``n_cells + 3`` control points at pixel centres.

    Args:
        n_pixels: pixels along the axis.
        n_cells: control-grid cells spanning the axis.
        derivative: 0 for the weights; 1 or 2 for their derivatives with
            respect to the normalised coordinate (``[-1, 1]`` across the axis).

    Returns:
        float32 ``[n_pixels, n_cells + 3]``; for ``derivative=0`` rows sum to
        one. Cached: do not modify in place.
    """
    position = (torch.arange(n_pixels, dtype=torch.float64) + 0.5) / n_pixels * n_cells
    knots = torch.arange(n_cells + 3, dtype=torch.float64) - 1.0
    scale = (n_cells / 2.0) ** derivative  # d(cell units) / d(normalised units) = n_cells / 2
    return (_cubic_bspline(position[:, None] - knots[None, :], derivative) * scale).float()


@functools.lru_cache(maxsize=64)
def _bending_grams(n_pixels: int, n_cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram matrices ``B_d^T B_d / n`` of the basis and its derivatives (d = 0, 1, 2)."""
    grams = []
    for derivative in (0, 1, 2):
        basis = bspline_basis(n_pixels, n_cells, derivative).double()
        grams.append((basis.T @ basis / n_pixels).float())
    return tuple(grams)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``size x size`` (area when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[-1] >= size and images.shape[-2] >= size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _standardise(images: torch.Tensor) -> torch.Tensor:
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True)
    return (images - mean) / (std + 1e-6)


def global_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation per image of ``[B, 1, H, W]`` pairs."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    num = (a * b).sum(dim=(-3, -2, -1))
    den = torch.sqrt((a * a).sum(dim=(-3, -2, -1)) * (b * b).sum(dim=(-3, -2, -1))) + 1e-8
    return num / den


@functools.lru_cache(maxsize=64)
def box_matrix(n: int, window: int) -> torch.Tensor:
    """``[n, n]`` matrix averaging a ``window`` neighbourhood, clipped at the edges (cached)."""
    index = torch.arange(n)
    band = ((index[:, None] - index[None, :]).abs() <= window // 2).float()
    return band / band.sum(dim=1, keepdim=True)


def box_mean(images: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window x window`` box around each pixel, the box clipped at the edges.

    Two small matrix products with banded averaging matrices: equal to
    ``avg_pool2d`` with ``count_include_pad=False``, and on CPU faster than
    it, than running sums, and than separable convolutions at these sizes
    (measured fastest forward + backward at 64 px).
    """
    return box_matrix(images.shape[-2], window) @ images @ box_matrix(images.shape[-1], window).T


class LocalNCC:
    """LNCC against fixed targets, their window statistics computed once.

    Args:
        target: ``[B, 1, H, W]`` fixed images.
        window: side of the square window in pixels (odd).
    """

    def __init__(self, target: torch.Tensor, window: int) -> None:
        self.window = window
        self.target = target
        self.mean_t = box_mean(target, window)
        self.var_t = (box_mean(target * target, window) - self.mean_t**2).clamp(min=0.0)

    def __call__(self, warped: torch.Tensor) -> torch.Tensor:
        """Mean squared local correlation per image, ``[B]``."""
        stats = box_mean(torch.cat([warped, warped * warped, warped * self.target], dim=1), self.window)
        mean_w, mean_ww, mean_wt = stats.unbind(dim=1)
        mean_t, var_t = self.mean_t[:, 0], self.var_t[:, 0]
        cov = mean_wt - mean_w * mean_t
        var_w = (mean_ww - mean_w * mean_w).clamp(min=0.0)
        return (cov * cov / (var_w * var_t + 1e-5)).mean(dim=(-2, -1))


def _identity_theta(batch: int) -> torch.Tensor:
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


def _centroid(images: torch.Tensor) -> torch.Tensor:
    """Intensity centroid ``[B, 2]`` (x, y) in normalised coordinates."""
    _, _, h, w = images.shape
    weights = images.clamp(min=0.0)[:, 0]
    weights = weights / (weights.sum(dim=(-2, -1), keepdim=True) + 1e-8)
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    return torch.stack([(weights.sum(1) * xs).sum(-1), (weights.sum(2) * ys).sum(-1)], dim=-1)


@functools.lru_cache(maxsize=64)
def refinement_matrix(n_from: int, n_to: int) -> torch.Tensor:
    """``[n_to + 3, n_from + 3]`` map of control points from ``n_from`` to ``n_to`` cells per axis.

    Least squares on a dense sampling of the axis; exact when ``n_to`` is a
    multiple of ``n_from`` (the finer spline space contains the coarser one).
    """
    samples = 16 * max(n_from, n_to)
    fine = bspline_basis(samples, n_to).double()
    coarse = bspline_basis(samples, n_from).double()
    return torch.linalg.lstsq(fine, coarse).solution.float()


class BSplineField:
    """A cubic b-spline displacement field over a uniform control grid, for a batch.

    The control grid ``[B, 2, n+3, n+3]`` holds control-point displacements
    (x, y components, normalised units); the field at pixel centres is
    ``B_y C B_x^T`` per component and its derivatives use the derivative
    bases, so displacement, Jacobian and bending energy are exact and cost
    only small matrix products. :meth:`refine` moves to a finer grid without
    changing the field.

    Args:
        batch: images in the batch.
        n_cells: control-grid cells per side.
    """

    def __init__(self, batch: int, n_cells: int) -> None:
        self.control = torch.zeros(batch, 2, n_cells + 3, n_cells + 3)

    @property
    def n_cells(self) -> int:
        """Cells per side of the control grid."""
        return self.control.shape[-1] - 3

    def refine(self, n_cells: int) -> None:
        """Re-express the field on a grid of ``n_cells`` cells (exact for multiples)."""
        if n_cells != self.n_cells:
            matrix = refinement_matrix(self.n_cells, n_cells)
            self.control = (matrix @ self.control.detach() @ matrix.T).contiguous()

    def _evaluate(self, height: int, width: int, dy: int, dx: int) -> torch.Tensor:
        n = self.n_cells
        return bspline_basis(height, n, dy) @ (self.control @ bspline_basis(width, n, dx).T)

    def displacement(self, height: int, width: int) -> torch.Tensor:
        """Displacement ``[B, H, W, 2]`` (x, y) in normalised units."""
        return self._evaluate(height, width, 0, 0).permute(0, 2, 3, 1)

    def jacobian_determinant(self, theta: torch.Tensor, size: int) -> torch.Tensor:
        """Determinant ``[B, size, size]`` of the Jacobian of ``A x + b + u(x)`` on a ``size x size`` grid.

        For a square image this equals the determinant in pixel units (1 for
        the identity).
        """
        d_dx = self._evaluate(size, size, 0, 1)  # d(u_x, u_y)/dx, [B, 2, H, W]
        d_dy = self._evaluate(size, size, 1, 0)
        a = theta[:, :, :2, None, None]
        xx, xy = a[:, 0, 0] + d_dx[:, 0], a[:, 0, 1] + d_dy[:, 0]
        yx, yy = a[:, 1, 0] + d_dx[:, 1], a[:, 1, 1] + d_dy[:, 1]
        return xx * yy - xy * yx

    def bending_energy(self, size: int) -> torch.Tensor:
        """Mean squared second derivatives ``[B]`` of the displacement, in pixels, over a ``size`` grid.

        Exact quadratic forms of the control points with Gram matrices of the
        basis derivatives: no dense field is formed.
        """
        g0, g1, g2 = _bending_grams(size, self.n_cells)
        c = self.control
        energy = ((g0 @ c @ g2) * c) + ((g2 @ c @ g0) * c) + 2.0 * ((g1 @ c @ g1) * c)
        # normalised -> pixel displacement (x size/2); d/dnormalised -> d/dpixel (x 2/size, twice)
        return energy.sum(dim=(1, 2, 3)) * (2.0 / size) ** 2


def sampling_grid(theta: torch.Tensor, bspline: BSplineField | None, height: int, width: int) -> torch.Tensor:
    """The transform sampled at the pixel centres of an ``height x width`` target."""
    grid = F.affine_grid(theta, [theta.shape[0], 1, height, width], align_corners=False)
    if bspline is not None:
        grid = grid + bspline.displacement(height, width)
    return grid


def jacobian_determinant(grid: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant ``[B, H-1, W-1]`` of a sampling grid, in pixel units (identity: 1)."""
    _, h, w, _ = grid.shape
    dx = grid[:, :-1, 1:] - grid[:, :-1, :-1]
    dy = grid[:, 1:, :-1] - grid[:, :-1, :-1]
    return (dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0]) * (h * w / 4.0)


def folding_fraction(grid: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels per image where the Jacobian determinant is <= 0."""
    return (jacobian_determinant(grid) <= 0).float().mean(dim=(1, 2))


def warp(images: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``images [B or 1, C, h, w]`` at ``grid [B, H, W, 2]``."""
    if images.shape[0] == 1 and grid.shape[0] > 1:
        images = images.expand(grid.shape[0], -1, -1, -1)
    padding = "border" if mode == "bilinear" else "zeros"
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding, align_corners=False)


def warp_masks(masks: np.ndarray | torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """Warp binary masks with NEAREST-NEIGHBOUR interpolation.

    Args:
        masks: ``[n_organs, h, w]`` bool (the exemplar's, any resolution).
        grid: ``[B, H, W, 2]`` sampling grid at the output size.

    Returns:
        bool ``[B, n_organs, H, W]``: every value is a value of the input mask,
        so the maps stay binary (bilinear warping would blur the edges into
        fractions).
    """
    source = torch.as_tensor(np.asarray(masks), dtype=torch.float32)[None]
    return (warp(source, grid, mode="nearest") > 0.5).numpy()


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
    theta0 = _identity_theta(batch)
    coarse = config.affine_levels[0][0] if config.affine_levels else fixed.shape[-1]
    theta0[:, :, 2] = _centroid(resize_batch(moving, coarse)) - _centroid(resize_batch(fixed, coarse))  # [1] - [B]
    delta = torch.zeros(batch, 2, 3, requires_grad=True)
    optimizer = Adam(delta, lr=config.affine_lr)
    for size, iterations in config.affine_levels:
        target = _standardise(resize_batch(fixed, size))
        source = _standardise(resize_batch(moving, size)).expand(batch, -1, -1, -1)
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
        target = _standardise(resize_batch(fixed, size))
        source = _standardise(resize_batch(moving, size)).expand(fixed.shape[0], -1, -1, -1)
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
            results[i] = RegistrationResult(fallback_maps.copy(), "fallback", _nan_quality(), why)
        else:
            usable.append(i)
    for start in range(0, len(usable), config.batch_size):
        chunk = usable[start : start + config.batch_size]
        try:
            with single_thread():
                done = _register_chunk([images[i] for i in chunk], exemplar_image, masks, fallback_maps, config)
        except Exception as error:  # noqa: BLE001 - one failed chunk must not stop the batch
            if len(chunk) == 1:
                done = [RegistrationResult(fallback_maps.copy(), "fallback", _nan_quality(), f"exception: {error!r}")]
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


def _nan_quality() -> dict[str, float]:
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
        ncc_identity = global_ncc(warp(moving, sampling_grid(_identity_theta(batch), None, work, work)), fixed)
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


# --------------------------------------------------------------------------- SimpleITK reference


@dataclass(frozen=True)
class SitkConfig:
    """Settings of the SimpleITK reference registration (one pair at a time).

    Attributes:
        size: resolution both images are resampled to before registering
            (``None``: the fixed image's own size).
        optimizer: ``line_search`` (gradient descent with line search, the
            control mesh doubled at each level) or ``lbfgsb`` (L-BFGS-B on
            one mesh of ``mesh_size`` cells).
        mesh_size: b-spline control mesh cells per side at the coarsest level.
        shrink_factors: pyramid shrink factors, coarse to fine.
        smoothing_sigmas: pyramid smoothing, in pixels, coarse to fine.
        affine_iterations: iterations of the affine stage per level.
        bspline_iterations: optimiser iterations of the b-spline stage per level.
        sampling_fraction: fraction of pixels sampled by the metric.
        max_folding: see :class:`RegistrationConfig`.
        min_ncc: see :class:`RegistrationConfig`.
        max_ncc_drop: see :class:`RegistrationConfig`.
        seed: metric sampling seed.
    """

    size: int | None = None
    optimizer: str = "line_search"
    mesh_size: int = 4
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    affine_iterations: int = 100
    bspline_iterations: int = 50
    sampling_fraction: float = 0.2
    max_folding: float = 0.01
    min_ncc: float = 0.3
    max_ncc_drop: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgsb", "line_search"):
            raise ValueError(f"SitkConfig.optimizer must be 'lbfgsb' or 'line_search', got {self.optimizer!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas):
            raise ValueError("SitkConfig: one smoothing sigma per shrink factor")

    def to_dict(self) -> dict:
        """A JSON-ready copy (tuples become lists)."""
        return json_ready(asdict(self))


_EXTENT = 256.0  # physical side of every image in SimpleITK: pixels of a 256 px film, whatever the array size


def _to_sitk(array: np.ndarray, size: int | None):  # noqa: ANN202 - SimpleITK is imported lazily
    """A SimpleITK image whose physical domain is ``[0, _EXTENT]^2``, pixel centres inside."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    h, w = array.shape
    image.SetSpacing((_EXTENT / w, _EXTENT / h))
    image.SetOrigin((0.5 * _EXTENT / w, 0.5 * _EXTENT / h))
    if size is not None and (h, w) != (size, size):
        image = sitk.Resample(image, _unit_grid(size), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return image


def _unit_grid(size: int):  # noqa: ANN202
    import SimpleITK as sitk

    grid = sitk.Image(size, size, sitk.sitkFloat32)
    grid.SetSpacing((_EXTENT / size, _EXTENT / size))
    grid.SetOrigin((0.5 * _EXTENT / size, 0.5 * _EXTENT / size))
    return grid


def _sitk_method(config: SitkConfig):  # noqa: ANN202
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.sampling_fraction, config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _sitk_ncc(fixed, moving, transform) -> float:  # noqa: ANN001
    import SimpleITK as sitk

    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    target = sitk.GetArrayFromImage(fixed)
    return float(global_ncc(torch.from_numpy(warped)[None, None], torch.from_numpy(target)[None, None])[0])


def _sitk_folding(transform, reference) -> float:  # noqa: ANN001
    import SimpleITK as sitk

    field_ = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection(),
    )
    jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_))
    return float((jacobian <= 0).mean())


def register_pair_sitk(
    image: np.ndarray,
    exemplar_image: np.ndarray,
    exemplar_masks: np.ndarray,
    fallback_maps: np.ndarray,
    config: SitkConfig = SitkConfig(),
) -> RegistrationResult:
    """SimpleITK multi-resolution b-spline registration of the exemplar onto one image.

    A moments-initialised affine stage (regular-step gradient descent), then a
    b-spline stage (gradient descent with line search, the control mesh
    doubled per pyramid level as in SimpleITK's multi-resolution b-spline
    example; or L-BFGS-B on one mesh), both on the correlation metric with a
    shrink/smooth pyramid. The masks are resampled
    with nearest-neighbour interpolation onto the output grid. The same
    fallback chain as :func:`register_batch`; never raises for a bad image.

    Args:
        image: the fixed image, 2-D float.
        exemplar_image: the moving image, 2-D float.
        exemplar_masks: bool ``[n_organs, h, w]``.
        fallback_maps: bool ``[n_organs, S, S]``; ``S`` is the output size.
        config: the registration settings.

    Returns:
        The :class:`RegistrationResult`.
    """
    import SimpleITK as sitk

    fallback_maps = np.asarray(fallback_maps).astype(bool)
    why = image_problem(np.asarray(image, dtype=np.float32))
    if why:
        return RegistrationResult(fallback_maps.copy(), "fallback", _nan_quality(), why)
    out_grid = _unit_grid(fallback_maps.shape[-1])
    masks = [_to_sitk(m.astype(np.float32), None) for m in np.asarray(exemplar_masks)]

    def warp_all(transform) -> np.ndarray:  # noqa: ANN001
        return np.stack(
            [sitk.GetArrayFromImage(sitk.Resample(m, out_grid, transform, sitk.sitkNearestNeighbor, 0.0)) > 0.5
             for m in masks]
        )

    quality = _nan_quality()
    affine_maps = deformable_maps = None
    try:
        fixed = _to_sitk(image, config.size)
        moving = _to_sitk(exemplar_image, config.size)
        quality["ncc_identity"] = _sitk_ncc(fixed, moving, sitk.Transform(2, sitk.sitkIdentity))
        affine = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        method = _sitk_method(config)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=config.affine_iterations, gradientMagnitudeTolerance=1e-6
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(affine, inPlace=True)
        method.Execute(fixed, moving)
        quality["ncc_affine"] = _sitk_ncc(fixed, moving, affine)
        affine_maps = warp_all(affine)
        bspline = sitk.BSplineTransformInitializer(fixed, [config.mesh_size] * 2, order=3)
        method = _sitk_method(config)
        method.SetMovingInitialTransform(affine)
        if config.optimizer == "lbfgsb":  # one control mesh at every level (L-BFGS-B cannot refine it)
            method.SetOptimizerAsLBFGSB(
                gradientConvergenceTolerance=1e-5, numberOfIterations=config.bspline_iterations,
                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * config.bspline_iterations,
                costFunctionConvergenceFactor=1e7,
            )
            method.SetInitialTransform(bspline, inPlace=True)
        else:
            method.SetOptimizerAsGradientDescentLineSearch(
                learningRate=5.0, numberOfIterations=config.bspline_iterations, convergenceMinimumValue=1e-4,
                convergenceWindowSize=5,
            )
            method.SetOptimizerScalesFromPhysicalShift()
            scales = [2**i for i in range(len(config.shrink_factors))]
            method.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=scales)
        final = method.Execute(fixed, moving)
        composite = sitk.CompositeTransform(2)  # applied last-added first: x -> affine(bspline(x))
        composite.AddTransform(affine)
        composite.AddTransform(final)
        quality["ncc_deformable"] = _sitk_ncc(fixed, moving, composite)
        quality["folding"] = _sitk_folding(composite, fixed)
        deformable_maps = warp_all(composite)
    except Exception as error:  # noqa: BLE001 - a failed pair falls back, never stops the batch
        result = choose(quality, deformable_maps, affine_maps, fallback_maps, config.min_ncc, config.max_folding,
                        config.max_ncc_drop)
        result.reason = f"exception: {error!r}" + (f"; {result.reason}" if result.reason else "")
        return result
    return choose(quality, deformable_maps, affine_maps, fallback_maps, config.min_ncc, config.max_folding,
                  config.max_ncc_drop)

"""Primitives of the torch registration: b-spline fields, warps, similarity.

A cubic b-spline free-form deformation ``T(x) = A x + b + sum_k B(x - c_k) d_k``
over a coarse control grid (:class:`BSplineField`). The b-spline displacement
is a separable product of two small basis matrices (:func:`bspline_basis`),
so the field, its derivatives and its bending energy at any resolution are a
few small matrix products. Similarity: global NCC (:func:`global_ncc`) and
local NCC over box windows (:class:`LocalNCC`, :func:`box_mean`). Masks are
warped with NEAREST-NEIGHBOUR interpolation (:func:`warp_masks`).

Coordinates: normalised ``[-1, 1]`` as ``torch.nn.functional.grid_sample``
with ``align_corners=False``; the transform maps a point of the target image
to the exemplar.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

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


def standardise(images: torch.Tensor) -> torch.Tensor:
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


def identity_theta(batch: int) -> torch.Tensor:
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


def centroid(images: torch.Tensor) -> torch.Tensor:
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

"""The SimpleITK reference registration of one annotated exemplar onto one image.

:func:`register_pair_sitk`: SimpleITK's multi-resolution b-spline
registration of one pair (moments-initialised affine stage, then a b-spline
stage whose control mesh is refined per pyramid level), masks resampled with
``sitkNearestNeighbor``. Same output (:class:`~spanlib.maps.registration.RegistrationResult`)
and fallback chain (:func:`~spanlib.maps.registration.decide`) as the batched
torch registration, :func:`spanlib.maps.registration.register_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spanlib.core.configs import FrozenConfig
from spanlib.maps.bspline import global_ncc
from spanlib.maps.registration import RegistrationResult, choose, image_problem, nan_quality

@dataclass(frozen=True)
class SitkConfig(FrozenConfig):
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


def _affine_stage(fixed, moving, config: SitkConfig):  # noqa: ANN001, ANN202 - SimpleITK objects
    """A moments-initialised affine transform of ``moving`` onto ``fixed``, by regular-step gradient descent."""
    import SimpleITK as sitk

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
    return affine


def _bspline_stage(fixed, moving, affine, config: SitkConfig):  # noqa: ANN001, ANN202 - SimpleITK objects
    """The b-spline transform after ``affine``: line search with the mesh doubled per level, or L-BFGS-B on one mesh."""
    import SimpleITK as sitk

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
    return method.Execute(fixed, moving)


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
        return RegistrationResult(fallback_maps.copy(), "fallback", nan_quality(), why)
    out_grid = _unit_grid(fallback_maps.shape[-1])
    masks = [_to_sitk(m.astype(np.float32), None) for m in np.asarray(exemplar_masks)]

    def warp_all(transform) -> np.ndarray:  # noqa: ANN001
        return np.stack(
            [sitk.GetArrayFromImage(sitk.Resample(m, out_grid, transform, sitk.sitkNearestNeighbor, 0.0)) > 0.5
             for m in masks]
        )

    quality = nan_quality()
    affine_maps = deformable_maps = None
    try:
        fixed = _to_sitk(image, config.size)
        moving = _to_sitk(exemplar_image, config.size)
        quality["ncc_identity"] = _sitk_ncc(fixed, moving, sitk.Transform(2, sitk.sitkIdentity))
        affine = _affine_stage(fixed, moving, config)
        quality["ncc_affine"] = _sitk_ncc(fixed, moving, affine)
        affine_maps = warp_all(affine)
        final = _bspline_stage(fixed, moving, affine, config)
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

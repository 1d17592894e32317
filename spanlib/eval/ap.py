"""Pixel average precision, equal to scikit-learn's ``average_precision_score``.

Every function takes a batch of maps (torch tensors, first dimension = batch)
and returns one value per map, so that a whole evaluation set is scored in one
call.

AP is scikit-learn's definition, exactly: the step-wise sum over *distinct*
score thresholds, taken in decreasing order,

    AP = sum_k (R_k - R_{k-1}) P_k,

where ``P_k`` and ``R_k`` are precision and recall when every pixel scoring at
least the k-th distinct threshold is called positive. Pixels with equal scores
enter together, which is what makes tied scores (flat maps, upsampled
attention) come out as scikit-learn has them.

Two implementations share that definition:

* :func:`average_precision`, for any map. One sort per map is the floor:
  each pixel becomes one integer key, ``code(score) * 2 + target``, whose
  ascending order is the scores' descending order, so a single sort of the
  keys carries the targets along and ties stay together. Scores of one sign
  (probabilities, attention) fit a 32-bit key, mixed signs a 64-bit one. On
  CPU tensors the sort runs in NumPy (its SIMD sort was 5-10x faster than
  ``torch.sort`` on the project's CPU machines), row by row in a small
  thread pool, with the row buffers reused: a fresh large temporary costs a
  page fault per 4 KiB there. Other devices sort with ``torch.sort``.
* :func:`average_precision_patches`, for a map that is a nearest-neighbour
  upsampling of a ``gh x gw`` grid (an attention map of a ViT): the map has
  at most ``gh*gw`` distinct values, so AP is exact from the patch scores
  and the number of positive and negative pixels under each patch
  (:func:`patch_counts`), without touching a pixel again.
  :func:`attention_average_precision` chains the two.

Conventions for degenerate maps: a map with no positive pixel has no AP; we
return ``nan`` (scikit-learn 1.9 warns and returns 0.0, which would pull a
mean down for an organ that is absent). A map whose pixels are all positive
has AP 1. A constant score gives AP = fraction of positive pixels.
scikit-learn rejects infinite scores; here they are ordered like any other.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "attention_average_precision",
    "average_precision",
    "average_precision_patches",
    "nearest_source_index",
    "patch_counts",
    "upsample_nearest",
]

_INT32_MIN = np.int32(-(2**31))
# offset of the least significant byte inside an integer of each width
_LOW_BYTE = {n: (0 if sys.byteorder == "little" else n - 1) for n in (4, 8)}


# ----------------------------------------------------------------------------
# general maps


def average_precision(
    scores: torch.Tensor,
    targets: torch.Tensor,
    num_threads: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Average precision of each map in a batch, equal to scikit-learn's.

    Args:
        scores: Float scores ``[B, ...]``; each map is flattened. NaN is
            rejected; infinities are ordered as usual.
        targets: Ground truth of the same shape, bool or 0/1 numbers.
        num_threads: Worker threads for the CPU path (default:
            ``torch.get_num_threads()``).
        backend: ``"auto"`` (NumPy sort for CPU tensors, ``torch.sort``
            elsewhere), ``"numpy"`` or ``"torch"``.

    Returns:
        Float64 tensor ``[B]`` on the scores' device; ``nan`` where a map has
        no positive pixel.

    Raises:
        ValueError: On mismatched shapes, fewer than two dimensions, NaN
            scores, targets other than 0/1, or an unknown backend.
    """
    scores, targets = _flatten_pair(scores, targets)
    if backend == "auto":
        backend = "numpy" if scores.device.type == "cpu" else "torch"
    if backend == "torch":
        return _average_precision_torch(scores, targets)
    if backend != "numpy":
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    device = scores.device
    scores, targets = scores.cpu(), targets.cpu()
    if scores.dtype != torch.float32:
        scores = _as_float32_if_exact(scores)
    s = scores.contiguous().numpy()
    t = targets.contiguous().numpy()
    out = np.empty(s.shape[0], dtype=np.float64)
    threads = max(1, min(int(num_threads or torch.get_num_threads()), s.shape[0]))
    blocks = np.array_split(np.arange(s.shape[0]), threads)

    def task(rows: np.ndarray) -> None:
        kernel = _RowKernel(s.shape[1])
        for r in rows:
            out[r] = kernel.average_precision(s[r], t[r])

    if threads == 1:
        task(blocks[0])
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(task, blocks))  # list() re-raises a worker's error
    return torch.from_numpy(out).to(device)


def _flatten_pair(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (scores, targets) batch and flatten both to ``[B, N]``."""
    scores = torch.as_tensor(scores)
    targets = torch.as_tensor(targets, device=scores.device)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ in shape")
    if scores.dim() < 2:
        raise ValueError(f"expected a batch [B, ...] of maps, got shape {tuple(scores.shape)}; use [1, N] for one map")
    if scores.shape[1:].numel() == 0:
        raise ValueError(f"maps are empty: shape {tuple(scores.shape)}")
    scores = scores.detach().flatten(1)
    if not scores.is_floating_point():
        scores = scores.double()
    targets = targets.detach().flatten(1)
    if targets.dtype != torch.bool:
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError("targets must be bool or 0/1")
        targets = targets != 0
    return scores, targets


def _as_float32_if_exact(scores: torch.Tensor) -> torch.Tensor:
    """Float32 copy of ``scores`` if that loses nothing, else ``scores`` as float64."""
    as32 = scores.float()
    if scores.dtype in (torch.float16, torch.bfloat16) or torch.equal(as32.double(), scores.double()):
        return as32
    return scores.double()


def _descending_code(values: np.ndarray, out: np.ndarray) -> None:
    """Write int32 codes into ``out`` that sort ascending as ``values`` sort descending.

    ``values`` is float32 with -0.0 already mapped to 0.0. The code reinterprets
    the IEEE bits: positive floats map to ``~bits``, negative ones to the
    magnitude bits, which orders every float (and both infinities) exactly.
    """
    bits = values.view(np.int32)
    np.invert(bits, out=out)
    np.right_shift(out, 31, out=out)
    np.bitwise_or(out, _INT32_MIN, out=out)
    np.bitwise_xor(out, bits, out=out)


class _RowKernel:
    """Buffers for the AP of rows of length ``n``, reused row after row.

    Fresh temporaries of a few hundred KiB cost a page fault per 4 KiB on
    these machines (about 4 us each), more than the arithmetic, so every
    full-length array lives here and is written in place.
    """

    def __init__(self, n: int) -> None:
        self.f32 = np.empty(n, dtype=np.float32)
        self.key32 = np.empty(n, dtype=np.uint32)
        self.code = np.empty(n, dtype=np.int32)
        self.key64 = np.empty(n, dtype=np.int64)
        self.odd = np.empty(n, dtype=np.bool_)
        self.ratio = np.empty(n, dtype=np.float64)
        self.ranks = np.arange(1, n + 1, dtype=np.float64)

    def key(self, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Sorted keys ``code * 2 + target``, ``code`` ascending as the score descends.

        Scores of one sign (probabilities, attention, log-probabilities) need
        31 bits of code, so the key fits a uint32 and sorts twice as fast as
        the int64 key that mixed signs need. Float64 scores that float32
        would merge are replaced by their dense ranks.
        """
        if scores.dtype == np.float32:
            f32 = self.f32
            np.add(scores, np.float32(0.0), out=f32)  # -0.0 -> +0.0
            bits = f32.view(np.uint32)
            lowest = f32.min()
            if np.isnan(lowest):
                raise ValueError("scores contain NaN")
            if lowest >= 0:
                key = self.key32
                np.subtract(np.uint32(0x7FFFFFFF), bits, out=key)
            elif f32.max() <= 0:
                key = self.key32
                np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=key)
            else:
                key = self.key64
                _descending_code(f32, self.code)
                np.copyto(key, self.code)
        else:
            if np.isnan(scores).any():
                raise ValueError("scores contain NaN")
            key = self.key64
            _, inverse = np.unique(scores, return_inverse=True)
            np.negative(inverse.reshape(-1), out=key)
        np.left_shift(key, 1, out=key, casting="unsafe")
        np.bitwise_or(key, targets, out=key, casting="unsafe")
        key.sort()
        return key

    def average_precision(self, scores: np.ndarray, targets: np.ndarray) -> float:
        """AP of one row: one sort of the keys, then arithmetic on the positives.

        In ascending key order (scores descending) a tie group holds its
        negatives (even keys) before its positives (odd keys), so the last
        positive of a group sits at the group's end. For a positive whose
        group's last positive is the ``j``-th positive (0-based) at sorted
        position ``pos[j]``, precision at its threshold is
        ``(j + 1) / (pos[j] + 1)``; AP is the mean of that over positives
        (each positive adds ``1 / P`` of recall at its threshold). Without
        ties ``j`` is the positive itself; the few tied positives are found
        by comparing neighbouring positive keys and fixed up.

        Returns:
            The AP, or ``nan`` if the row has no positive.
        """
        key = self.key(scores, targets)
        low_byte = key.view(np.uint8)[_LOW_BYTE[key.itemsize] :: key.itemsize]
        np.bitwise_and(low_byte, 1, out=self.odd.view(np.uint8))
        pos = np.flatnonzero(self.odd)
        n_pos = pos.size
        if n_pos == 0:
            return math.nan
        # precision at the i-th positive's threshold, assuming no tie: (i + 1) / (pos[i] + 1)
        ratio = self.ratio[:n_pos]
        np.add(pos, 1.0, out=ratio)
        np.divide(self.ranks[:n_pos], ratio, out=ratio)
        # tied positives (equal keys) share the threshold of their group's last positive
        pos_keys = key[pos]
        tied_with_next = self.odd[: n_pos - 1]
        np.equal(pos_keys[1:], pos_keys[:-1], out=tied_with_next)
        tied = np.flatnonzero(tied_with_next)
        if tied.size == 0:
            return float(ratio.sum()) / n_pos
        if tied.size * 16 < n_pos:  # a few ties (continuous scores): look each one up
            last = np.searchsorted(pos_keys, pos_keys[tied], side="right") - 1
            ratio[tied] = (last + 1.0) / (pos[last] + 1.0)
            return float(ratio.sum()) / n_pos
        # many ties (quantised or upsampled maps): one pass over the groups
        group_last = np.flatnonzero(~tied_with_next)
        group_last = np.append(group_last, n_pos - 1)
        sizes = np.diff(group_last, prepend=-1)
        return float(np.sum(sizes * (group_last + 1.0) / (pos[group_last] + 1.0))) / n_pos


def _average_precision_torch(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same AP with ``torch.sort`` and ``torch.searchsorted`` (any device)."""
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if scores.dtype != torch.float32:
        scores = _as_float32_if_exact(scores)
    if scores.dtype == torch.float32:
        bits = (scores + 0.0).contiguous().view(torch.int32)
        code = bits ^ (((~bits) >> 31) | int(_INT32_MIN))
        key = code.long()
    else:
        _, inverse = torch.unique(scores, return_inverse=True)
        key = -inverse.long()
    key = torch.sort(key * 2 + targets.long(), dim=1).values
    odd = key & 1
    true_pos = torch.cumsum(odd, dim=1)
    # for a positive, keys <= its own are exactly the pixels scoring >= its score
    at_least = torch.searchsorted(key, key, right=True)
    tp = torch.gather(true_pos, 1, at_least - 1)
    precision = torch.where(odd.bool(), tp.double() / at_least.double(), 0.0)
    n_pos = true_pos[:, -1].double()
    ap = precision.sum(dim=1) / n_pos
    return torch.where(n_pos > 0, ap, math.nan)


# ----------------------------------------------------------------------------
# attention-shaped maps: nearest upsampling of a coarse grid


def _grid_pair(grid: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    grid_h, grid_w = grid
    return int(grid_h), int(grid_w)


def nearest_source_index(in_size: int, out_size: int) -> torch.Tensor:
    """Source cell of each output position under ``interpolate(mode="nearest")``.

    Read off PyTorch itself (an upsampled ``arange``), so it matches
    ``F.interpolate`` for every size, divisible or not, including its float32
    rounding of the scale.

    Args:
        in_size: Number of grid cells along the axis.
        out_size: Number of pixels along the axis.

    Returns:
        Int64 tensor ``[out_size]`` with values in ``[0, in_size)``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if in_size > 2**24:
        raise ValueError(f"in_size {in_size} is too large to index exactly through float32")
    cells = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size)
    return F.interpolate(cells, size=out_size, mode="nearest").view(out_size).long()


def upsample_nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``[B, h, w]`` maps to ``[B, H, W]``.

    Args:
        maps: Float maps ``[B, h, w]``.
        size: Target ``(H, W)``.

    Returns:
        ``F.interpolate(maps[:, None], size, mode="nearest")[:, 0]``.
    """
    if maps.dim() != 3:
        raise ValueError(f"expected maps [B, h, w], got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.float()
    return F.interpolate(maps[:, None], size=tuple(size), mode="nearest")[:, 0]


def patch_counts(
    masks: torch.Tensor, grid: int | tuple[int, int], backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pixels under each grid cell, as nearest upsampling assigns them.

    A pixel ``(y, x)`` of an ``H x W`` mask belongs to cell
    ``(nearest_source_index(gh, H)[y], nearest_source_index(gw, W)[x])``,
    which is the cell whose value ``F.interpolate(mode="nearest")`` copies to
    it. When ``H`` is not a multiple of ``gh`` the cells differ in size; when
    ``H < gh`` some cells get no pixel (both counts 0).

    Args:
        masks: Bool or 0/1 masks ``[B, H, W]``.
        grid: ``g`` or ``(gh, gw)``.
        backend: ``"auto"`` (NumPy ``add.reduceat`` on CPU, one-hot matmul
            elsewhere), ``"numpy"`` or ``"torch"``.

    Returns:
        ``(pos, neg)``, int64 tensors ``[B, gh, gw]`` on the masks' device.
    """
    masks = torch.as_tensor(masks)
    if masks.dim() != 3:
        raise ValueError(f"expected masks [B, H, W], got shape {tuple(masks.shape)}")
    grid_h, grid_w = _grid_pair(grid)
    batch, height, width = masks.shape
    if height * width >= 2**24:
        raise ValueError(f"masks of {height}x{width} pixels are too large for exact counts")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError("masks must be bool or 0/1")
        masks = masks != 0
    rows = nearest_source_index(grid_h, height)
    cols = nearest_source_index(grid_w, width)
    cell_pixels = torch.outer(torch.bincount(rows, minlength=grid_h), torch.bincount(cols, minlength=grid_w))
    if backend == "auto":
        backend = "numpy" if masks.device.type == "cpu" else "torch"
    if backend == "numpy":
        pos = torch.from_numpy(_counts_numpy(masks.cpu().numpy(), rows.numpy(), cols.numpy(), grid_h, grid_w))
        pos = pos.to(masks.device)
    elif backend == "torch":
        one_hot_rows = F.one_hot(rows, grid_h).T.float().to(masks.device)  # [gh, H]
        one_hot_cols = F.one_hot(cols, grid_w).float().to(masks.device)  # [W, gw]
        pos = torch.matmul(one_hot_rows, torch.matmul(masks.float(), one_hot_cols)).round().long()
    else:
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    neg = cell_pixels.to(pos.device) - pos
    return pos, neg


def _counts_numpy(masks: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """Segment sums of the masks over each cell's pixel range.

    Nearest upsampling maps pixels to cells monotonically, so each cell owns a
    contiguous run of rows and of columns; ``np.add.reduceat`` sums the runs
    of the cells that own at least one pixel, and the others stay 0. Rows are
    summed first, eight mask bytes at a time as one uint64: while a run holds
    fewer than 256 rows no byte's sum carries into its neighbour, and the
    column sums then run on 1/run of the data (2.8x faster at 224 px).
    """
    if np.any(np.diff(rows) < 0) or np.any(np.diff(cols) < 0):
        raise RuntimeError("nearest upsampling no longer maps pixels to cells monotonically")
    row_cells, row_starts = np.unique(rows, return_index=True)
    col_cells, col_starts = np.unique(cols, return_index=True)
    every_cell = row_cells.size == grid_h and col_cells.size == grid_w
    lanes = masks.shape[2] % 8 == 0 and np.diff(np.append(row_starts, masks.shape[1])).max() < 256
    masks = np.ascontiguousarray(masks).view(np.uint8)
    out = np.zeros((masks.shape[0], grid_h, grid_w), dtype=np.int64)
    step = 64
    for start in range(0, masks.shape[0], step):
        chunk = masks[start : start + step]
        if lanes:
            by_row = np.add.reduceat(chunk.view(np.uint64), row_starts, axis=1).view(np.uint8)
            sums = np.add.reduceat(by_row, col_starts, axis=2, dtype=np.int64)
        else:
            by_col = np.add.reduceat(chunk, col_starts, axis=2, dtype=np.int32)
            sums = np.add.reduceat(by_col, row_starts, axis=1, dtype=np.int64)
        if every_cell:
            out[start : start + step] = sums
        else:
            out[start : start + step, row_cells[:, None], col_cells[None, :]] = sums
    return out


def average_precision_patches(
    patch_scores: torch.Tensor, pos_counts: torch.Tensor, neg_counts: torch.Tensor
) -> torch.Tensor:
    """AP of maps given as patch scores with positive / negative pixel counts per patch.

    Equal to :func:`average_precision` on the pixel map in which each patch's
    score covers ``pos + neg`` pixels, ``pos`` of them positive. Patches with
    equal scores are one threshold, as scikit-learn merges equal scores.

    Args:
        patch_scores: Float scores ``[B, ...]`` (e.g. ``[B, g, g]``).
        pos_counts: Positive pixels per patch, same shape, non-negative.
        neg_counts: Negative pixels per patch, same shape, non-negative.

    Returns:
        Float64 tensor ``[B]``; ``nan`` where a map has no positive pixel.
    """
    patch_scores = torch.as_tensor(patch_scores)
    pos_counts = torch.as_tensor(pos_counts, device=patch_scores.device)
    neg_counts = torch.as_tensor(neg_counts, device=patch_scores.device)
    if not (patch_scores.shape == pos_counts.shape == neg_counts.shape):
        raise ValueError(
            f"patch_scores {tuple(patch_scores.shape)}, pos_counts {tuple(pos_counts.shape)} and "
            f"neg_counts {tuple(neg_counts.shape)} must have one shape"
        )
    if patch_scores.dim() < 2:
        raise ValueError(f"expected a batch [B, ...], got shape {tuple(patch_scores.shape)}")
    scores = patch_scores.detach().flatten(1).double()
    if torch.isnan(scores).any():
        raise ValueError("patch_scores contain NaN")
    pos = pos_counts.flatten(1).long()
    neg = neg_counts.flatten(1).long()
    if (pos < 0).any() or (neg < 0).any():
        raise ValueError("pixel counts must be non-negative")
    scores, order = torch.sort(scores, dim=1, descending=True)
    pos = torch.gather(pos, 1, order)
    true_pos = torch.cumsum(pos, dim=1)
    called = torch.cumsum(pos + torch.gather(neg, 1, order), dim=1)
    group_end = torch.ones_like(scores, dtype=torch.bool)
    group_end[:, :-1] = scores[:, 1:] != scores[:, :-1]
    # true positives at the previous group end: running max over ends, shifted
    at_ends = torch.where(group_end, true_pos, 0)
    previous = torch.zeros_like(true_pos)
    previous[:, 1:] = torch.cummax(at_ends, dim=1).values[:, :-1]
    gained = torch.where(group_end, true_pos - previous, 0)
    precision = true_pos.double() / called.clamp(min=1).double()
    n_pos = true_pos[:, -1].double()
    ap = (gained.double() * precision).sum(dim=1) / n_pos
    return torch.where(n_pos > 0, ap, math.nan)


def attention_average_precision(attention: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pixel AP of coarse attention maps against full-resolution masks.

    Equals ``average_precision(upsample_nearest(attention, masks.shape[-2:]), masks)``
    but works on the ``gh * gw`` patches, with the masks reduced to per-patch
    counts by :func:`patch_counts`.

    Args:
        attention: Scores ``[B, gh, gw]`` (e.g. one head's CLS attention).
        masks: Bool or 0/1 masks ``[B, H, W]``.

    Returns:
        Float64 tensor ``[B]``; ``nan`` where a mask is empty.
    """
    attention = torch.as_tensor(attention)
    masks = torch.as_tensor(masks)
    if attention.dim() != 3:
        raise ValueError(f"expected attention [B, gh, gw], got shape {tuple(attention.shape)}")
    if masks.dim() != 3 or masks.shape[0] != attention.shape[0]:
        raise ValueError(f"expected masks [B, H, W] with B={attention.shape[0]}, got shape {tuple(masks.shape)}")
    pos, neg = patch_counts(masks, (attention.shape[1], attention.shape[2]))
    return average_precision_patches(attention, pos.to(attention.device), neg.to(attention.device))

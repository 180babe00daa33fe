"""Multi-resolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) in PyTorch.

The level layout, hashing and parameter order follow tiny-cuda-nn's ``HashGrid`` exactly, so a
tinycudann encoding's parameter vector can be copied into :class:`HashGrid` and back:

- level ``l`` has scale ``s_l = base_resolution * per_level_scale**l - 1`` and resolution
  ``ceil(s_l) + 1``; a point ``x`` in [0, 1] sits at grid position ``x * s_l + 0.5``;
- a level stores ``min(res**3 rounded up to a multiple of 8, 2**log2_hashmap_size)`` entries: dense
  indexing ``x + y res + z res^2`` when they fit, else the hash ``x ^ y*2654435761 ^ z*805459861``
  (Instant-NGP eq. 4), both taken modulo the level size;
- features are trilinearly interpolated from the 8 cell corners and levels are concatenated.

The release's progressive band (``ProgressiveBandHashGrid``) zeroes the features of levels beyond
:func:`active_levels` of the current step.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)
_PRIMES_I32 = tuple(p - 2**32 if p >= 2**31 else p for p in _PRIMES)  # same bits as uint32


def level_layout(n_levels: int, log2_hashmap_size: int, base_resolution: int,
                 per_level_scale: float) -> tuple[list[float], list[int], list[int]]:
    """Per-level scales, resolutions and table sizes (tiny-cuda-nn's layout).

    Example:
        >>> scales, res, sizes = level_layout(2, 19, 16, 2.0)
        >>> scales, res, sizes
        ([15.0, 31.0], [16, 32], [4096, 32768])
    """
    scales, resolutions, sizes = [], [], []
    for level in range(n_levels):
        scale = math.exp2(level * math.log2(per_level_scale)) * base_resolution - 1.0
        res = int(math.ceil(scale)) + 1
        size = min(int(math.ceil(res**3 / 8) * 8), 2**log2_hashmap_size)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
    return scales, resolutions, sizes


def active_levels(step: int, n_levels: int, start_level: int, start_step: int, update_steps: int) -> int:
    """Levels in use at ``step`` under the release's progressive band.

    ``start_level`` levels until ``start_step``, then one more every ``update_steps`` steps.

    Example:
        >>> [active_levels(s, 16, 8, 2000, 500) for s in (0, 2000, 2499, 2500, 9000)]
        [8, 8, 8, 9, 16]
    """
    extra = max(step - start_step, 0) // max(update_steps, 1)
    return min(start_level + extra, n_levels)


@functools.lru_cache(maxsize=1)
def _tinycudann():
    """The ``tinycudann`` module, or None where it is not installed."""
    try:
        import tinycudann
    except ImportError:
        return None
    return tinycudann


@functools.lru_cache(maxsize=16)
def _layout(n_levels, log2_hashmap_size, base_resolution, per_level_scale):
    """Per-level scales, resolutions, sizes, row offsets and whether the level is hashed."""
    scales, res, sizes = level_layout(n_levels, log2_hashmap_size, base_resolution, per_level_scale)
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    hashed = [r**3 > s for r, s in zip(res, sizes)]
    return scales, res, sizes, offsets, hashed


def corner_indices(x: Tensor, scales: list[float], res: list[int], sizes: list[int], offsets: list[int],
                   hashed: list[bool]) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of the 8 cell corners around each point at every level.

    Everything is computed on contiguous per-axis vectors (broadcasting over strided views is several
    times slower on CPU), in int32: the hash's uint32 products wrap the same way in two's complement.

    Args:
        x: [N, 3] points in [0, 1].
        scales, res, sizes, offsets, hashed: per-level layout from :func:`level_layout`.

    Returns:
        indices [L, 8, N] int32 rows of the concatenated table, weights [L, 8, N] (differentiable in x).
    """
    n = x.shape[0]
    xt = x.t().contiguous()
    idx = torch.empty(len(scales), 8, n, dtype=torch.int32, device=x.device)
    weights = []
    for level, scale in enumerate(scales):
        pos = xt * scale + 0.5
        cell = pos.detach().floor()
        frac = pos - cell
        c = cell.to(torch.int32)
        mult = _PRIMES_I32 if hashed[level] else (1, res[level], res[level] ** 2)
        axes = [(c[a] * mult[a], c[a] * mult[a] + mult[a]) for a in range(3)]
        combine = torch.bitwise_xor if hashed[level] else torch.add
        for k in range(8):
            out = idx[level, k]
            combine(axes[0][k & 1], axes[1][k >> 1 & 1], out=out)
            combine(out, axes[2][k >> 2 & 1], out=out)
        if hashed[level]:  # sizes of hashed levels are powers of two
            idx[level].bitwise_and_(sizes[level] - 1)
        else:
            idx[level].remainder_(sizes[level])
        idx[level].add_(offsets[level])
        wa = [(1 - frac[a], frac[a]) for a in range(3)]
        wxy = [wa[0][k & 1] * wa[1][k >> 1] for k in range(4)]
        weights.append(torch.stack([wxy[k & 3] * wa[2][k >> 2] for k in range(8)]))
    return idx, torch.stack(weights)


class _HashGather(torch.autograd.Function):
    """Weighted gather ``out[l, n] = sum_k w[l, k, n] * table[idx[l, k, n]]`` with a hand-written
    backward (index_add per feature), first derivatives only."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, w)
        return _weighted_sum(_gather_rows(table, idx), w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        table, idx, w = ctx.saved_tensors
        grad_table = grad_w = None
        flat = idx.reshape(-1)
        if ctx.needs_input_grad[0]:
            cols = []
            for f in range(table.shape[1]):
                g = (w * grad[:, None, :, f]).reshape(-1)
                cols.append(torch.zeros(table.shape[0], dtype=g.dtype, device=g.device).index_add_(0, flat, g))
            grad_table = torch.stack(cols, dim=1)
        if ctx.needs_input_grad[2]:
            grad_w = (_gather_rows(table, idx) * grad[:, None]).sum(-1)
        return grad_table, None, grad_w


def _weighted_sum(rows: Tensor, w: Tensor) -> Tensor:
    """[L, 8, N, F] corner rows and [L, 8, N] weights -> [L, N, F]."""
    out = rows[:, 0] * w[:, 0, :, None]
    for k in range(1, 8):
        out = out + rows[:, k] * w[:, k, :, None]
    return out


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` for a [T, 2] float32 table read as one 8-byte word per row (fewer cache misses)."""
    if table.shape[1] == 2 and table.dtype == torch.float32 and table.is_contiguous():
        words = table.view(torch.float64).reshape(-1).index_select(0, idx.reshape(-1))
        return words.view(torch.float32).reshape(*idx.shape, 2)
    return table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, table.shape[1])


def _to_features(levels: Tensor) -> Tensor:
    """[L, N, F] per-level features -> [N, L * F]."""
    return levels.permute(1, 0, 2).reshape(levels.shape[1], levels.shape[0] * levels.shape[2])


class HashGrid(nn.Module):
    """Hash-grid encoding of points in [0, 1]^3 into ``n_levels * features_per_level`` features.

    Args:
        n_levels: resolution levels.
        features_per_level: features per table entry.
        log2_hashmap_size: log2 of the largest level's table size.
        base_resolution: resolution of the coarsest level.
        per_level_scale: growth factor between levels.
        start_level, start_step, update_steps: progressive band (see :func:`active_levels`);
            ``start_level = n_levels`` disables it.
        chunk: points encoded per batch of work (bounds memory at about 700 bytes per point).
        backend: ``auto`` (tiny-cuda-nn on CUDA where installed, else PyTorch), ``torch`` or ``tcnn``.
            Both read the same ``table`` parameter.

    Example:
        >>> enc = HashGrid(n_levels=4, log2_hashmap_size=12)
        >>> enc(torch.rand(5, 3)).shape
        torch.Size([5, 8])
    """

    def __init__(self, n_levels: int = 16, features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447269237440378,
                 start_level: int | None = None, start_step: int = 0, update_steps: int = 500,
                 chunk: int = 2**18, backend: str = "auto"):
        super().__init__()
        assert backend in ("auto", "torch", "tcnn"), backend
        self.backend = backend
        self._tcnn = None
        self.n_levels, self.features_per_level = n_levels, features_per_level
        self.log2_hashmap_size, self.base_resolution = log2_hashmap_size, base_resolution
        self.per_level_scale = per_level_scale
        self.start_level = n_levels if start_level is None else start_level
        self.start_step, self.update_steps, self.chunk = start_step, update_steps, chunk
        sizes = level_layout(n_levels, log2_hashmap_size, base_resolution, per_level_scale)[2]
        self.table = nn.Parameter(torch.empty(sum(sizes), features_per_level).uniform_(-1e-4, 1e-4))

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def levels_at(self, step: int) -> int:
        """Active levels at training ``step`` (progressive band)."""
        return active_levels(step, self.n_levels, self.start_level, self.start_step, self.update_steps)

    def forward(self, x: Tensor, n_active: int | None = None) -> Tensor:
        """Encode points.

        Where ``x`` requires grad (analytic normals, which may be differentiated again) the plain
        autograd gather is used; otherwise a gather with a hand-written first-order backward, about 3x
        faster on CPU. Both give the same values (tested).

        Args:
            x: [N, 3] points in [0, 1] (outside, the grid wraps like tiny-cuda-nn's).
            n_active: levels kept; the others' features are zero (default: all).

        Returns:
            [N, n_levels * features_per_level] features, coarse levels first.
        """
        assert x.dim() == 2 and x.shape[1] == 3, x.shape
        if self._use_tcnn(x):
            out = self._tcnn_forward(x)
        elif x.requires_grad and torch.is_grad_enabled():
            out = self.forward_reference(x)
        else:
            layout = self.layout()
            parts = [_to_features(_HashGather.apply(self.table, *corner_indices(p.float(), *layout)))
                     for p in x.split(self.chunk)]
            out = torch.cat(parts) if parts else x.new_zeros(0, self.out_dim)
        if n_active is not None and n_active < self.n_levels:
            mask = torch.zeros(self.n_levels, self.features_per_level, device=x.device)
            mask[:n_active] = 1
            out = out * mask.reshape(1, -1)
        return out

    def _use_tcnn(self, x: Tensor) -> bool:
        if self.backend == "torch":
            return False
        available = x.is_cuda and _tinycudann() is not None
        if self.backend == "tcnn" and not available:
            raise RuntimeError("backend 'tcnn' needs the tinycudann package and CUDA tensors")
        return available

    def _tcnn_forward(self, x: Tensor) -> Tensor:
        """tiny-cuda-nn's kernel run on this module's own ``table`` (same layout, see the module doc),
        called the way ``tinycudann.Module.forward`` calls it (batch padded to the kernel granularity)."""
        tcnn = _tinycudann()
        if self._tcnn is None:
            config = {"otype": "HashGrid", "n_levels": self.n_levels, "n_features_per_level": self.features_per_level,
                      "log2_hashmap_size": self.log2_hashmap_size, "base_resolution": self.base_resolution,
                      "per_level_scale": self.per_level_scale, "interpolation": "Linear"}
            # kept out of the module tree: its own ``params`` must not reach optimisers or checkpoints
            object.__setattr__(self, "_tcnn", tcnn.Encoding(3, config, dtype=torch.float32).to(x.device))
            assert self._tcnn.params.numel() == self.table.numel(), (self._tcnn.params.shape, self.table.shape)
        enc = self._tcnn
        n = x.shape[0]
        granularity = int(tcnn.modules._C.batch_size_granularity())
        padded = torch.nn.functional.pad(x.float(), [0, 0, 0, -n % granularity]).contiguous()
        params = self.table.reshape(-1).to(enc.params.dtype).contiguous()
        out = tcnn.modules._module_function.apply(enc.native_tcnn_module, padded, params, enc.loss_scale)
        return out[:n, :self.out_dim].float()

    def layout(self):
        """Per-level scales, resolutions, table sizes, row offsets and hashed flags."""
        return _layout(self.n_levels, self.log2_hashmap_size, self.base_resolution, self.per_level_scale)

    def forward_reference(self, x: Tensor) -> Tensor:
        """Plain autograd gather-and-sum encoding (all levels): the reference the fast paths are tested
        against, and the path that supports second derivatives."""
        parts = []
        for p in x.split(self.chunk):
            idx, w = corner_indices(p.float(), *self.layout())
            # index_select, not table[idx]: its backward is index_add_, which sums in a fixed order on CPU
            # (table[idx]'s is index_put_(accumulate), in thread order unless deterministic kernels are on)
            rows = self.table.index_select(0, idx.reshape(-1).long()).reshape(*idx.shape, self.table.shape[1])
            parts.append(_to_features((rows * w[..., None]).sum(1)))
        return torch.cat(parts) if parts else x.new_zeros(0, self.out_dim)

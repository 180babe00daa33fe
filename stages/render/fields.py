"""Neural fields: MLP heads on a hash grid for density and albedo, and normals from the density."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stages.render.hashgrid import HashGrid


class MLP(nn.Module):
    """Bias-free ReLU MLP (the layout of tiny-cuda-nn's ``FullyFusedMLP``).

    Args:
        in_dim: input features.
        out_dim: output features.
        n_neurons: hidden width.
        n_hidden_layers: hidden layers.

    Example:
        >>> MLP(32, 4)(torch.zeros(2, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_dim: int, out_dim: int, n_neurons: int = 64, n_hidden_layers: int = 1):
        super().__init__()
        dims = [in_dim] + [n_neurons] * n_hidden_layers + [out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient is clamped (Instant-NGP's density activation)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def density_activation(raw: Tensor, kind: str) -> Tensor:
    """``softplus`` (threestudio's default for the release) or ``exp`` (truncated gradient)."""
    if kind == "softplus":
        return nn.functional.softplus(raw)
    if kind == "exp":
        return _TruncExp.apply(raw)
    raise ValueError(f"unknown density activation {kind!r} (softplus or exp)")


def blob_density_bias(x: Tensor, scale: float, std: float, axis: Tensor | None = None,
                      axis_ratio: float = 1.0) -> Tensor:
    """Magic3D's initial density blob ``scale * (1 - |x| / std)`` added to the raw density [N].

    With a unit ``axis`` [3] and ``axis_ratio`` r, the blob is an ellipsoid: its half-length along ``axis``
    is ``r * std`` (the other two stay ``std``), i.e. ``|x|`` is measured with the component along
    ``axis`` divided by r. r = 1 is the sphere.

    Example:
        >>> x = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.25, 0.0]])
        >>> blob_density_bias(x, 10.0, 0.5).tolist()
        [5.0, 5.0]
        >>> blob_density_bias(x, 10.0, 0.5, torch.tensor([1.0, 0.0, 0.0]), 0.5).tolist()  # thin along x
        [0.0, 5.0]
    """
    if axis is not None and axis_ratio != 1.0:
        axis = axis.to(x)
        x = x + ((1.0 / axis_ratio) - 1.0) * (x @ axis)[:, None] * axis
    return scale * (1 - x.norm(dim=-1) / std)


class DensityField(nn.Module):
    """Density and albedo of points inside a sphere of ``radius``: hash grid -> MLP (1 + 3 outputs).

    Args:
        radius: half side of the box [-radius, radius]^3 the grid covers.
        n_levels, features_per_level, log2_hashmap_size, base_resolution, per_level_scale,
        start_level, start_step, update_steps: :class:`.hashgrid.HashGrid` arguments.
        n_neurons, n_hidden_layers: MLP size.
        density_activation: ``softplus`` or ``exp``.
        blob_scale, blob_std: initial density blob (0 scale: none).
        blob_axis, blob_axis_ratio: the blob's half-length along the unit ``blob_axis`` [3] is
            ``blob_axis_ratio * blob_std`` (:func:`blob_density_bias`; None or 1: a sphere).
    """

    def __init__(self, radius: float = 1.0, n_levels: int = 16, features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16,
                 per_level_scale: float = 1.447269237440378, start_level: int | None = None,
                 start_step: int = 0, update_steps: int = 500, n_neurons: int = 64, n_hidden_layers: int = 1,
                 density_activation: str = "softplus", blob_scale: float = 10.0, blob_std: float = 0.5,
                 blob_axis: Tensor | None = None, blob_axis_ratio: float = 1.0):
        super().__init__()
        self.radius = radius
        self.encoding = HashGrid(n_levels, features_per_level, log2_hashmap_size, base_resolution,
                                 per_level_scale, start_level, start_step, update_steps)
        self.mlp = MLP(self.encoding.out_dim, 4, n_neurons, n_hidden_layers)
        self.activation, self.blob_scale, self.blob_std = density_activation, blob_scale, blob_std
        self.blob_axis = None if blob_axis is None else torch.as_tensor(blob_axis, dtype=torch.float32)
        self.blob_axis_ratio = float(blob_axis_ratio)
        self.n_active: int | None = None

    def set_step(self, step: int) -> None:
        """Apply the progressive band for training ``step`` (a pure function of the step)."""
        self.n_active = self.encoding.levels_at(step)

    def _raw(self, x: Tensor) -> Tensor:
        unit = (x / self.radius + 1) / 2
        raw = self.mlp(self.encoding(unit, self.n_active))
        if self.blob_scale:
            raw = torch.cat([raw[:, :1] + blob_density_bias(x, self.blob_scale, self.blob_std, self.blob_axis,
                                                                 self.blob_axis_ratio)[:, None],
                             raw[:, 1:]], dim=1)
        return raw

    def density(self, x: Tensor) -> Tensor:
        """[N] non-negative density at points ``x`` [N, 3]."""
        return density_activation(self._raw(x)[:, 0], self.activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density [N] and albedo [N, 3] in [0, 1] at points ``x`` [N, 3]."""
        raw = self._raw(x)
        return density_activation(raw[:, 0], self.activation), torch.sigmoid(raw[:, 1:])


def density_normals(density_fn, x: Tensor, mode: str = "finite_difference", eps: float = 1e-2) -> Tensor:
    """Unit normals [N, 3] as the negative, normalised density gradient at ``x`` [N, 3].

    Args:
        density_fn: callable [N, 3] -> [N].
        x: points.
        mode: ``analytic`` (autograd, differentiable again) or ``finite_difference`` (central
            differences with step ``eps``, the release's default).
        eps: finite-difference step.
    """
    if mode == "analytic":
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(density_fn(xg).sum(), xg, create_graph=torch.is_grad_enabled())
    elif mode == "finite_difference":
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        pts = torch.cat([x[:, None] + offsets, x[:, None] - offsets], dim=1)  # [N, 6, 3]
        d = density_fn(pts.reshape(-1, 3)).reshape(-1, 2, 3)
        grad = (d[:, 0] - d[:, 1]) / (2 * eps)
    else:
        raise ValueError(f"unknown normal mode {mode!r} (analytic or finite_difference)")
    return -nn.functional.normalize(grad, dim=-1)


class AlbedoField(nn.Module):
    """Albedo of surface points: hash grid -> MLP -> sigmoid (the texture field of stage 3).

    Args:
        radius: half side of the box [-radius, radius]^3 the grid covers.
        n_levels, features_per_level, log2_hashmap_size, base_resolution, per_level_scale: :class:`.hashgrid.HashGrid`.
        n_neurons, n_hidden_layers: MLP size.

    Example:
        >>> f = AlbedoField(1.0, n_levels=2, log2_hashmap_size=8, n_neurons=8)
        >>> f(torch.zeros(5, 3)).shape
        torch.Size([5, 3])
    """

    def __init__(self, radius: float = 1.0, n_levels: int = 16, features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16, per_level_scale: float = 1.447269237440378,
                 n_neurons: int = 64, n_hidden_layers: int = 1):
        super().__init__()
        self.radius = radius
        self.encoding = HashGrid(n_levels, features_per_level, log2_hashmap_size, base_resolution, per_level_scale)
        self.mlp = MLP(self.encoding.out_dim, 3, n_neurons, n_hidden_layers)

    def forward(self, x: Tensor) -> Tensor:
        """Albedo [N, 3] in [0, 1] at points ``x`` [N, 3] (points outside the box clamp to its faces)."""
        unit = ((x / self.radius + 1) / 2).clamp(0, 1)
        return torch.sigmoid(self.mlp(self.encoding(unit)).float())

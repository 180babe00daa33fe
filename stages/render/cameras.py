"""Cameras: perspective projection from fovy, look-at extrinsics, orbit / turntable / part-aware sampling.

Conventions (those of threestudio, which the GeneMAN release builds on):
- World is z-up. A camera at elevation ``e``, azimuth ``a`` and distance ``d`` around a target sits at
  ``target + d * (cos e cos a, cos e sin a, sin e)``; azimuth 0 is the +x axis, which is the reference
  (input photo) camera.
- Camera space is OpenGL: x right, y up, the camera looks along -z.
- Images are stored top row first. The projection matrix flips y so that the rasteriser (row ``i`` at
  NDC ``y = (i + 0.5) / H * 2 - 1``) and the ray generator agree pixel for pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.render import rng

PARTS = ("full", "head", "upper", "lower")
"""Part names of :func:`sample_part_cameras`, in the order of its ``ratios`` and ``centres``."""


@dataclass
class Cameras:
    """A batch of pinhole cameras.

    Attributes:
        c2w: [B, 4, 4] camera-to-world matrices (OpenGL camera axes).
        fovy: [B] vertical field of view, degrees.
        elevation: [B] degrees, relative to ``target``.
        azimuth: [B] degrees, relative to ``target``.
        distance: [B] distance from ``target``.
        target: [B, 3] point the camera looks at.
    """

    c2w: Tensor
    fovy: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    target: Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "Cameras":
        """Sub-batch; ``index`` is anything a tensor accepts (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def to(self, device) -> "Cameras":
        return Cameras(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @property
    def position(self) -> Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]

    def w2c(self) -> Tensor:
        """[B, 4, 4] world-to-camera matrices."""
        return torch.linalg.inv(self.c2w)

    def mvp(self, aspect: float = 1.0, near: float = 0.01, far: float = 100.0) -> Tensor:
        """[B, 4, 4] model-view-projection matrices for :func:`stages.render.rasterize.rasterize`."""
        return projection(self.fovy, aspect, near, far) @ self.w2c()

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Per-pixel rays: origins and unit directions, each [B, H, W, 3], in world space."""
        return get_rays(self.c2w, self.fovy, height, width)


def focal_length(fovy_deg: Tensor | float, height: int) -> Tensor:
    """Focal length in pixels for an image ``height`` pixels tall.

    Example:
        >>> round(float(focal_length(90.0, 2)), 6)
        1.0
    """
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float32)
    return 0.5 * height / torch.tan(torch.deg2rad(fovy) / 2)


def intrinsics(fovy_deg: Tensor | float, height: int, width: int) -> Tensor:
    """Pinhole intrinsics ``K`` ([3, 3], or [B, 3, 3] for a batch of fovy) with square pixels."""
    f = focal_length(fovy_deg, height)
    k = torch.zeros(*f.shape, 3, 3)
    k[..., 0, 0] = f
    k[..., 1, 1] = f
    k[..., 0, 2] = width / 2
    k[..., 1, 2] = height / 2
    k[..., 2, 2] = 1
    return k


def projection(fovy_deg: Tensor, aspect: float = 1.0, near: float = 0.01, far: float = 100.0) -> Tensor:
    """OpenGL perspective matrices [B, 4, 4] with y flipped (images top row first).

    Args:
        fovy_deg: [B] vertical field of view, degrees.
        aspect: width / height.
        near, far: clip planes.
    """
    fovy = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)).reshape(-1)
    t = torch.tan(fovy / 2)
    proj = torch.zeros(fovy.shape[0], 4, 4, device=fovy.device)
    proj[:, 0, 0] = 1 / (t * aspect)
    proj[:, 1, 1] = -1 / t
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2 * far * near / (far - near)
    proj[:, 3, 2] = -1
    return proj


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices [B, 4, 4] for cameras at ``eye`` [B, 3] looking at ``target`` [B, 3].

    ``up`` defaults to +z. Columns of the rotation are right, up, back (the camera looks along -z).

    Example:
        >>> c2w = look_at(torch.tensor([[3.0, 0, 0]]), torch.zeros(1, 3))
        >>> (c2w[0, :3, 2] + 0.0).tolist()  # back axis points from the target to the eye
        [1.0, 0.0, 0.0]
    """
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    true_up = torch.nn.functional.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.eye(4, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, true_up, -forward], dim=-1)
    c2w[:, :3, 3] = eye
    return c2w


def orbit_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Offsets [B, 3] from the target of orbit cameras (z-up, azimuth 0 on +x)."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a),
                        distance * torch.sin(e)], dim=-1)


def orbit_cameras(elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy: Tensor,
                  target: Tensor | None = None) -> Cameras:
    """Cameras (batch B) on orbits around ``target`` [B, 3], default the origin; angles in degrees."""
    elevation, azimuth, distance, fovy = (torch.as_tensor(v, dtype=torch.float32).reshape(-1)
                                          for v in (elevation, azimuth, distance, fovy))
    if target is None:
        target = torch.zeros(elevation.shape[0], 3)
    eye = target + orbit_position(elevation, azimuth, distance)
    return Cameras(look_at(eye, target), fovy, elevation, azimuth, distance, target)


def reference_camera(elevation: float = 0.0, azimuth: float = 0.0, distance: float = 3.0,
                     fovy: float = 20.0) -> Cameras:
    """The camera of the input photo (release: elevation 0, azimuth 0, distance 3, fovy 20)."""
    return orbit_cameras(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]),
                         torch.tensor([fovy]))


def turntable(n_views: int = 120, elevation: float = 0.0, distance: float = 3.0, fovy: float = 20.0) -> Cameras:
    """The evaluation turntable: azimuth ``linspace(0, 360, n_views)`` (360 excluded); view 0 is the
    reference camera.

    Example:
        >>> cams = turntable()
        >>> len(cams), float(cams.azimuth[1])
        (120, 3.0)
    """
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    full = torch.ones(n_views)
    return orbit_cameras(full * elevation, azimuth, full * distance, full * fovy)


def _uniform(batch: int, bounds, generator: torch.Generator | None) -> Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * rng.rand((batch,), generator, "cpu")


def sample_orbit(batch: int, elevation_range=(-10.0, 45.0), azimuth_range=(-180.0, 180.0),
                 distance_range=(3.0, 3.0), fovy_range=(20.0, 20.0),
                 generator: torch.Generator | None = None) -> Cameras:
    """Random orbit cameras around the origin, each quantity uniform in its range (degrees for angles).

    The defaults are the release's stage-1 random cameras (``OrbitCameraConfig``).
    """
    return orbit_cameras(_uniform(batch, elevation_range, generator), _uniform(batch, azimuth_range, generator),
                         _uniform(batch, distance_range, generator), _uniform(batch, fovy_range, generator))


def sample_part_cameras(batch: int, centres: Tensor, ratios=(0.7, 0.1, 0.1, 0.1),
                        full_distance_range=(3.0, 3.5), head_distance_range=(0.8, 1.0),
                        half_distance_range=(1.5, 2.0), fovy_range=(20.0, 25.0),
                        elevation_range=(-20.0, 20.0), azimuth_range=(-180.0, 180.0),
                        generator: torch.Generator | None = None) -> tuple[Cameras, Tensor]:
    """Part-aware cameras (release stage 2): full body, head, upper and lower body close-ups.

    Args:
        batch: number of cameras.
        centres: [4, 3] look-at targets of full / head / upper / lower body (order of :data:`PARTS`).
        ratios: probabilities of the four parts.
        full_distance_range, head_distance_range, half_distance_range: camera distances per part
            (upper and lower body share ``half_distance_range``).
        fovy_range, elevation_range, azimuth_range: ranges shared by all parts, degrees.
        generator: random generator.

    Returns:
        The cameras and [B] part indices into :data:`PARTS`.
    """
    assert centres.shape == (4, 3), centres.shape
    probs = torch.as_tensor(ratios, dtype=torch.float32)
    probs = (probs / probs.sum()).to(rng.draw_device(generator, "cpu"))
    part = torch.multinomial(probs, batch, replacement=True, generator=generator).cpu()
    ranges = torch.tensor([full_distance_range, head_distance_range, half_distance_range, half_distance_range],
                          dtype=torch.float32)[part]
    distance = ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * rng.rand((batch,), generator, "cpu")
    cams = orbit_cameras(_uniform(batch, elevation_range, generator), _uniform(batch, azimuth_range, generator),
                         distance, _uniform(batch, fovy_range, generator), target=centres[part].float())
    return cams, part


def get_rays(c2w: Tensor, fovy_deg: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres, top row first.

    Args:
        c2w: [B, 4, 4] camera-to-world matrices.
        fovy_deg: [B] vertical field of view, degrees.
        height, width: image size.

    Returns:
        origins [B, H, W, 3] and unit directions [B, H, W, 3].
    """
    assert c2w.shape[1:] == (4, 4), c2w.shape
    f = focal_length(fovy_deg, height).to(c2w).reshape(-1, 1, 1)
    j, i = torch.meshgrid(torch.arange(height, device=c2w.device, dtype=c2w.dtype),
                          torch.arange(width, device=c2w.device, dtype=c2w.dtype), indexing="ij")
    x = (i + 0.5 - width / 2) / f
    y = -(j + 0.5 - height / 2) / f
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    d = torch.einsum("bhwk,bjk->bhwj", d_cam, c2w[:, :3, :3])
    d = torch.nn.functional.normalize(d, dim=-1)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return o, d


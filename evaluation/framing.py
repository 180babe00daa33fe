"""Frame a subject as preprocess frames a photo: its reference-view mask box long side at ``fill``
of the canvas, centred.

The subject is in glTF axes (+y up, facing +z); the scene of ``stages.render.cameras`` is z up
with the reference camera on +x looking at the origin, so the map into the scene is a fixed
rotation (subject +z -> scene +x, +x -> +y, +y -> +z), then a uniform scale and a translation:
``scene = scale * R @ subject + translation``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluation.meshes import as_subject_mesh
from stages.render.cameras import Cameras, focal_length, reference_camera

GLTF_TO_SCENE = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
"""Rotation ``[3, 3]`` from glTF axes (+y up, facing +z) to the scene's (z up, facing +x)."""


@dataclass
class Framing:
    """Similarity from a subject's own frame into the scene: ``scene = scale * R @ p + translation``.

    Attributes:
        scale: uniform scale (scene units per subject unit).
        translation: ``[3]`` scene-frame translation.
        rotation: ``[3, 3]`` rotation, default :data:`GLTF_TO_SCENE`.

    Example:
        >>> f = Framing(2.0, np.array([0.0, 0.0, -1.0]))
        >>> f.to_scene(np.array([[0.0, 1.0, 0.0]])).tolist()  # one unit up (glTF y) -> scene z
        [[0.0, 0.0, 1.0]]
        >>> f.to_subject(f.to_scene(np.array([[0.1, 0.2, 0.3]]))).round(12).tolist()
        [[0.1, 0.2, 0.3]]
    """

    scale: float
    translation: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: GLTF_TO_SCENE.copy())

    def to_scene(self, points: np.ndarray) -> np.ndarray:
        """Subject-frame points ``[N, 3]`` -> scene frame ``[N, 3]``."""
        return self.scale * (np.asarray(points, float) @ self.rotation.T) + self.translation

    def to_subject(self, points: np.ndarray) -> np.ndarray:
        """Scene-frame points ``[N, 3]`` -> the subject's own frame and units ``[N, 3]``."""
        return ((np.asarray(points, float) - self.translation) / self.scale) @ self.rotation

    def to_dict(self) -> dict:
        """JSON-ready form (for bench.json)."""
        return {"scale": float(self.scale), "translation": self.translation.tolist(),
                "rotation": self.rotation.tolist()}


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Box ``(y0, y1, x0, x1)`` (ends exclusive) of ``mask > 0.5``, as preprocess's ``recentre`` measures it.

    Example:
        >>> m = np.zeros((4, 5)); m[1:3, 2:5] = 1
        >>> mask_box(m)
        (1, 3, 2, 5)
    """
    ys, xs = np.nonzero(np.asarray(mask) > 0.5)
    if len(ys) == 0:
        raise ValueError("the subject is not visible from the reference camera")
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _initial(vertices: np.ndarray, camera: Cameras, fill: float) -> Framing:
    """Orthographic guess: bounding-box centre at the origin, long image-plane side at ``fill`` of the view."""
    rotated = vertices @ GLTF_TO_SCENE.T
    lo, hi = rotated.min(0), rotated.max(0)
    view = 2 * float(camera.distance[0]) * np.tan(np.deg2rad(float(camera.fovy[0])) / 2)
    scale = fill * view / max(hi[1] - lo[1], hi[2] - lo[2])
    return Framing(scale, -scale * (lo + hi) / 2)


def frame_subject(subject, canvas: int = 256, fill: float = 0.9, camera: Cameras | None = None,
                  iterations: int = 4, backend: str = "auto") -> Framing:
    """The :class:`Framing` whose reference render has its mask box long side at ``fill * canvas``
    pixels and its box centred on the canvas, as preprocess's ``recentre`` places a photo's person.

    Starts from an orthographic guess, then renders the mask, measures the box and corrects the
    scale (by the ratio of long sides) and the image-plane translation (pixels -> scene units at
    the camera distance), ``iterations`` times or until within a quarter pixel. The depth (scene
    x) of the bounding-box centre stays at the origin.

    Args:
        subject: a :class:`evaluation.meshes.SubjectMesh`, a Trimesh or a mesh file.
        canvas: square image side, pixels (preprocess ``canvas``).
        fill: fraction of the canvas the long side of the box covers (preprocess ``fill``).
        camera: the reference camera (default :func:`stages.render.cameras.reference_camera`).
        iterations: most render-measure-correct rounds.
    """
    from evaluation.truth import render_truth  # truth renders through a Framing

    mesh = as_subject_mesh(subject)
    camera = reference_camera() if camera is None else camera
    framing = _initial(mesh.vertices, camera, fill)
    c2w = camera.c2w[0].double().numpy()
    right, up = c2w[:3, 0], c2w[:3, 1]
    px_to_scene = float(camera.distance[0]) / float(focal_length(camera.fovy[0], canvas))
    for _ in range(iterations):
        mask = render_truth(mesh, camera, canvas, canvas, framing, backend)["mask"][0, ..., 0].numpy()
        y0, y1, x0, x1 = mask_box(mask)
        ratio = fill * canvas / max(y1 - y0, x1 - x0)
        dx, dy = (x0 + x1) / 2 - canvas / 2, (y0 + y1) / 2 - canvas / 2
        if abs(ratio - 1) * canvas < 0.25 and max(abs(dx), abs(dy)) < 0.25:
            break
        shift = (-dx * right + dy * up) * px_to_scene  # image y runs down, scene up runs up
        framing = Framing(framing.scale * ratio, framing.translation * ratio + shift)
    return framing

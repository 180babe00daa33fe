"""Stage 0: load and validate the photo, find the person, recentre, estimate depth and normal.

Every way a photo can be unusable ends here in an :class:`InputError` naming the file and what
to do, before the run folder is touched.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError
from stages.inputs import Inputs

log = logging.getLogger("geneman")

DepthNormalFn = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray | None, np.ndarray | None]"]


@dataclass
class Config:
    """Photo loading, person mask and recentring (defaults: the release)."""

    canvas: int = field(default=1024, metadata={"min": 64})
    """Side of the square canvas the person is recentred on."""
    fill: float = field(default=0.9, metadata={"min": 0.05, "max": 1.0})
    """The long side of the person's box covers this fraction of the canvas."""
    segmentation: str = field(default="auto", metadata={"choices": ("auto", "mediapipe", "none")})
    """Mask source without alpha or --mask: ``auto`` (mediapipe if installed), ``mediapipe`` or ``none``."""
    min_mask_fraction: float = field(default=0.005, metadata={"min": 0.0, "max": 0.5})
    """A mask covering less of the photo than this means no person was found."""
    max_pixels: int = field(default=100_000_000, metadata={"min": 1})
    """Photos with more pixels are refused (decompression-bomb guard)."""
    depth_normal: bool = True
    """Estimate depth and normal maps with Sapiens (missing weights: see ``priors.sapiens_optional``)."""
    landmarks: bool = True
    """Find the 33 MediaPipe Pose body landmarks on the recentred photo (for stage 2's part-aware cameras);
    left out with a warning when mediapipe is not installed or finds no body."""


def read_photo(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB or RGBA image.

    Handles EXIF rotation, 16-bit, CMYK, palette and greyscale images.

    Raises:
        InputError: missing, empty, not an image, truncated, zero-size or too many pixels.
    """
    img = _open_checked(path, max_pixels)
    img = ImageOps.exif_transpose(img)
    return _to_8bit(img, path)


def _open_checked(path: Path, max_pixels: int, what: str = "photo") -> Image.Image:
    """Open and decode ``path`` (``what``: photo or mask, as the errors name it), checked."""
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{path} is not a file; give the path of a {what} image (PNG, JPEG, ...)")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); give a real {what} image")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > max_pixels:
                raise Image.DecompressionBombError(f"{img.width}x{img.height}")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path} has more than preprocess.max_pixels={max_pixels} pixels (decompression-bomb guard); "
                         "downscale it or raise preprocess.max_pixels") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image that can be read (PNG, JPEG, WebP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path} is truncated or corrupt ({e}); re-export or re-download it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if img.width == 0 or img.height == 0:
        raise InputError(f"{path} has zero size ({img.width}x{img.height})")
    return img


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):  # 16-bit: full scale is 65535, however dark the photo
            top = 65535.0
        elif img.mode == "I":  # 32-bit integers: how older Pillow opens 16-bit PNGs; wider data by its maximum
            top = max(65535.0, arr.max())
        else:  # float: no fixed scale, stretched to its own range
            arr = arr - arr.min()
            top = max(arr.max(), 1e-8)
        return Image.fromarray((np.clip(arr / top, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return img.convert("RGBA")
    if img.mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "L", "1"):
        return img.convert("RGB")
    raise InputError(f"{path} has image mode {img.mode}, which is not supported; save it as RGB or RGBA")


def read_mask(path: Path, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Read a mask file (white = person) at the photo's ``size`` (W, H) as float32 in [0, 1]."""
    img = _open_checked(path, max_pixels, "mask")
    img = ImageOps.exif_transpose(img)
    if img.size != size:
        raise InputError(f"mask {path} is {img.size[0]}x{img.size[1]} but the photo is {size[0]}x{size[1]}; "
                         "give a mask of the same size")
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
    if alpha is not None and alpha.min() < 255:  # an opaque alpha says nothing: use the grey levels
        arr = alpha
    else:
        arr = np.asarray(_to_8bit(img, path).convert("L"))
    return arr.astype(np.float32) / 255.0


SEGMENT_MAX_SIDE = 2048
"""Segmentation runs on a copy whose long side is at most this (MediaPipe aborts at 32767 px and more)."""


@contextmanager
def native_stderr_captured():
    """Send file descriptor 2 to a temp file for the block: mediapipe's C++ libraries log there directly.

    On an exception, what native code printed is logged (its last lines) and the exception goes on.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            tail = captured.read()[-2000:].decode("utf-8", "replace").strip()
            if tail:
                log.error("native code printed: %s", " | ".join(tail.splitlines()[-5:]))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


native_stderr_silenced = native_stderr_captured  # the old name


def downscaled(rgb: np.ndarray, max_side: int = SEGMENT_MAX_SIDE) -> np.ndarray:
    """``rgb`` ``[H, W, 3]`` uint8 with its long side at most ``max_side`` (each side at least 1)."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def segment(rgb: np.ndarray, backend: str, photo: Path) -> np.ndarray:
    """Person mask of an ``[H, W, 3]`` uint8 image from a segmentation backend, float32 in [0, 1]."""
    if backend == "none":
        raise InputError(f"{photo} has no alpha channel, no --mask was given and preprocess.segmentation=none; "
                         "pass --mask MASK.png or give an RGBA photo")
    try:  # mediapipe is optional (the 'segment' extra) and slow to import: only when a mask is needed
        from mediapipe.python.solutions import selfie_segmentation
    except ImportError:
        raise InputError(f"{photo} has no alpha channel and no --mask was given, and no segmentation backend is "
                         "installed: pass --mask MASK.png, give an RGBA photo, or install the 'segment' extra "
                         "(pip install 'geneman[segment]' for mediapipe)") from None
    small = downscaled(rgb)
    with native_stderr_captured(), selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        result = seg.process(np.ascontiguousarray(small))
    if result.segmentation_mask is None:
        return np.zeros(rgb.shape[:2], np.float32)
    mask = np.clip(result.segmentation_mask.astype(np.float32), 0.0, 1.0)
    if small.shape[:2] != rgb.shape[:2]:  # back to the photo's size
        mask = np.asarray(Image.fromarray(mask, "F").resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
    return mask


def body_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """MediaPipe Pose landmarks of an ``[H, W, 3]`` uint8 image (its bundled full model, offline).

    Returns:
        ``[33, 3]`` float32 rows ``(x, y, visibility)`` in MediaPipe's landmark order: x and y as
        fractions of the width and height (x right, y down; may fall outside [0, 1] for parts out
        of the frame), visibility in [0, 1]; None when no body is found.

    Raises:
        ImportError: mediapipe is not installed.
    """
    from mediapipe.python.solutions import pose  # optional and slow to import: only when landmarks are wanted

    with native_stderr_captured(), pose.Pose(static_image_mode=True, model_complexity=1) as model:
        result = model.process(np.ascontiguousarray(downscaled(rgb)))  # landmarks are fractions: any scale
    if result.pose_landmarks is None:
        return None
    return np.array([(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark], np.float32)


def _landmarks_or_warn(rgb: np.ndarray, photo: Path) -> torch.Tensor | None:
    reason = "MediaPipe Pose found no body"
    try:
        found = body_landmarks(rgb)
    except ImportError:
        found, reason = None, "mediapipe is not installed (the 'segment' extra)"
    except Exception as e:  # noqa: BLE001 - a broken mediapipe install must not fail the run
        found = None
        reason = f"MediaPipe Pose failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if found is None:
        log.warning("no body landmarks for %s: %s; the stages run without them", photo, reason)
        return None
    return torch.from_numpy(found)


def person_mask(img: Image.Image, mask_path: Path | None, cfg: Config, photo: Path) -> np.ndarray:
    """The person mask: ``--mask`` file, else the photo's alpha, else a segmentation backend."""
    if mask_path is not None:
        mask = read_mask(mask_path, img.size, cfg.max_pixels)
    elif img.mode == "RGBA" and np.asarray(img)[..., 3].min() < 255:
        mask = np.asarray(img)[..., 3].astype(np.float32) / 255.0
    else:
        mask = segment(np.asarray(img.convert("RGB")), cfg.segmentation, photo)
    covered = float((mask > 0.5).mean())
    if covered < cfg.min_mask_fraction:
        source = f"mask {mask_path}" if mask_path else f"{photo}"
        raise InputError(f"no person found in {source}: the mask covers {covered:.2%} of the image, below "
                         f"preprocess.min_mask_fraction={cfg.min_mask_fraction:.2%}; check the mask or the photo")
    return mask


def recentre(rgb: np.ndarray, mask: np.ndarray, canvas: int, fill: float,
             extra: list[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Crop to the mask's box, scale its long side to ``fill * canvas`` and centre it on the canvas.

    Args:
        rgb: ``[H, W, 3]`` float32 in [0, 1].
        mask: ``[H, W]`` float32 in [0, 1].
        canvas: side of the output square.
        fill: fraction of the canvas the long side of the box covers.
        extra: more ``[H, W, ...]`` float32 maps moved by the same transform (depth, normal).

    Returns:
        ``rgb`` ``[canvas, canvas, 3]`` (background white), ``mask`` ``[canvas, canvas]`` and the
        moved ``extra`` maps (background 0).
    """
    ys, xs = np.nonzero(mask > 0.5)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = fill * canvas / max(y1 - y0, x1 - x0)
    h, w = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    oy, ox = (canvas - h) // 2, (canvas - w) // 2

    def place(a: np.ndarray, bg: float) -> np.ndarray:
        crop = torch.from_numpy(np.ascontiguousarray(a[y0:y1, x0:x1])).float()
        crop = crop[..., None] if crop.ndim == 2 else crop
        resized = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                                  antialias=True, align_corners=False)[0].permute(1, 2, 0)
        out = np.full((canvas, canvas, crop.shape[-1]), bg, np.float32)
        out[oy:oy + h, ox:ox + w] = resized.numpy()
        return out if a.ndim == 3 else out[..., 0]

    m = np.clip(place(mask, 0.0), 0, 1)
    rgb_c = place(rgb * mask[..., None], 0.0) + (1.0 - m[..., None])  # premultiplied, then white background
    return np.clip(rgb_c, 0, 1), m, [place(e, 0.0) for e in extra]


def _check_map_shape(a, shape: tuple, what: str, photo: Path) -> None:
    """Refuse a depth / normal map of the wrong shape with one line (the estimator is at fault)."""
    if a is not None and tuple(np.shape(a)) != tuple(shape):
        raise InputError(f"the depth/normal estimator returned a {what} map of shape {list(np.shape(a))} for {photo}, "
                         f"expected {list(shape)}; check the estimator (or set preprocess.depth_normal=false)")


def run(photo: Path, mask_path: Path | None, cfg: Config, prompt: str, negative_prompt: str = "",
        depth_normal: DepthNormalFn | None = None) -> Inputs:
    """Photo -> :class:`Inputs`: validate, mask, estimate depth/normal on the uncropped photo, recentre,
    find body landmarks on the recentred photo.

    Args:
        photo: the input photo.
        mask_path: optional mask file (white = person).
        cfg: preprocess config.
        prompt: text prompt to carry to the stages.
        negative_prompt: negative prompt to carry to the stages.
        depth_normal: ``(rgb uint8 [H, W, 3], mask [H, W]) -> (depth [H, W] in [0, 1], normal [H, W, 3])``,
            either of them None when its estimator is missing; None: no estimator at all.
    """
    img = read_photo(photo, cfg.max_pixels)
    mask = person_mask(img, mask_path, cfg, photo)
    rgb8 = np.asarray(img.convert("RGB"))
    depth = normal = None
    if cfg.depth_normal and depth_normal is not None:
        depth, normal = depth_normal(rgb8, mask)
        _check_map_shape(depth, mask.shape, "depth", photo)
        _check_map_shape(normal, mask.shape + (3,), "normal", photo)
    if cfg.depth_normal and (depth is None or normal is None):
        log.warning("depth/normal estimation incomplete for %s (depth: %s, normal: %s): the stages run without "
                    "the missing maps", photo, "yes" if depth is not None else "no",
                    "yes" if normal is not None else "no")
    extra = [a.astype(np.float32) for a in (depth, normal) if a is not None]
    rgb, m, moved = recentre(rgb8.astype(np.float32) / 255.0, mask, cfg.canvas, cfg.fill, extra)
    moved_iter, inside = iter(moved), torch.from_numpy(m) > 0.5
    depth_t = torch.from_numpy(next(moved_iter)) * inside if depth is not None else None
    normal_t = None
    if normal is not None:
        normal_t = torch.nn.functional.normalize(torch.from_numpy(next(moved_iter)), dim=-1) * inside[..., None]
    landmarks = _landmarks_or_warn((rgb * 255 + 0.5).astype(np.uint8), photo) if cfg.landmarks else None
    return Inputs(rgb=torch.from_numpy(rgb), mask=torch.from_numpy(m), depth=depth_t, normal=normal_t,
                  landmarks=landmarks, prompt=prompt, negative_prompt=negative_prompt)

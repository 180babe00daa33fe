"""The trainers' data: captioned images (2D prior, VAE), images with their normal images (ControlNet),
images with their depth or normal map and mask (estimators) and view pairs with their relative camera
(3D prior).

Both read the layouts ``geneman data render`` writes (:mod:`training.render`); the 2D reader also takes
any image folder (a general-image set mixed in at a ratio): ``metadata.jsonl`` with ``file_name`` and
``text`` (Hugging Face ``imagefolder``), or bare images, captioned with the empty prompt. Images are
decoded once and kept (the bundled priors' data is a few thousand 64-pixel images); each is resized
to the trainer's side and composited over white where it has alpha.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def read_jsonl(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON-lines file, each with ``keys``; ``ValueError`` naming the file and line otherwise."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise _fail(path, f"line {n} is not JSON ({e})") from None
        if not isinstance(row, dict) or any(k not in row for k in keys):
            lacking = [k for k in keys if not isinstance(row, dict) or k not in row]
            raise _fail(path, f"line {n} lacks {', '.join(lacking)}")
        rows.append(row)
    if not rows:
        raise _fail(path, "has no rows")
    return rows


def load_image(path: Path, size: int) -> torch.Tensor:
    """``[3, size, size]`` float in [0, 1], RGB over white, resized (bicubic, antialiased) to a square.

    Raises:
        ValueError: the file is missing or not an image (one line naming it).
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgba = im.convert("RGBA")
    except FileNotFoundError:
        raise _fail(path, "no such image (listed in the data, missing on disk)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _fail(path, f"cannot read the image ({e})") from None
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.BICUBIC)
    a = np.asarray(rgba, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


class CaptionedImages:
    """Images and their captions.

    Args:
        folder: a ``geneman data render`` output (its ``2d/`` is read), a folder holding
            ``metadata.jsonl``, or a folder of bare images (captions empty).
        size: side the images are resized to.
    """

    def __init__(self, folder: str | Path, size: int):
        folder = Path(folder)
        if not folder.is_dir():
            raise _fail(folder, "no such folder; give a `geneman data render` output or an image folder")
        root = folder / "2d" if (folder / "2d" / "metadata.jsonl").is_file() else folder
        if (root / "metadata.jsonl").is_file():
            rows = read_jsonl(root / "metadata.jsonl", ("file_name", "text"))
            self.files, self.captions = [root / r["file_name"] for r in rows], [str(r["text"]) for r in rows]
        else:
            self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise _fail(folder, "holds no 2d/metadata.jsonl, metadata.jsonl or images; make training data "
                                    "with `geneman data render MESHES -o DATA`")
            self.captions = [""] * len(self.files)
        self.images = torch.stack([load_image(p, size) for p in self.files])
        self.folder = folder

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Images ``[B, 3, S, S]`` and captions of the rows ``index``."""
        return self.images[index], [self.captions[i] for i in index.tolist()]


class ControlledImages(CaptionedImages):
    """Captioned images and their condition images (the ControlNet's data): ``DATA/2d`` and, by the
    same file names, ``DATA/<condition>`` (``normal``: the normal images ``geneman data render`` writes).

    Args:
        folder: a ``geneman data render`` output.
        size: side the images are resized to.
        condition: the folder of condition images beside ``2d/``.
    """

    def __init__(self, folder: str | Path, size: int, condition: str = "normal"):
        super().__init__(folder, size)
        self.conditions = self.beside(condition, size)

    def beside(self, condition: str, size: int) -> torch.Tensor:
        """``[N, 3, S, S]``: the images of ``DATA/<condition>`` with the 2D images' file names."""
        root = self.folder / condition
        if not root.is_dir():
            raise _fail(self.folder, f"holds no {condition}/ images beside 2d/; render the data again with "
                                     "this version's `geneman data render`")
        base = self.files[0].parents[1]
        return torch.stack([load_image(root / p.relative_to(base), size) for p in self.files])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Images ``[B, 3, S, S]``, captions and condition images ``[B, 3, S, S]`` of the rows ``index``."""
        images, captions = super().batch(index)
        return images, captions, self.conditions[index]


class MapImages(ControlledImages):
    """Images with their depth or normal map and the subject's mask (a depth or normal estimator's data):
    ``DATA/2d`` and, by the same file names, ``DATA/normal`` (which gives the mask: its background is black,
    a normal image is never darker than 0.63 summed over channels) and, for depth, ``DATA/depth``.

    Args:
        folder: a ``geneman data render`` output.
        size: side the images are resized to.
        kind: ``depth`` or ``normal``.
    """

    def __init__(self, folder: str | Path, size: int, kind: str):
        super().__init__(folder, size, "normal")
        self.mask = (self.conditions.sum(dim=1, keepdim=True) > 0.3).float()
        if kind == "normal":
            self.targets = (self.conditions * 2 - 1) * self.mask  # camera-space unit normals
        else:
            depth = self.beside("depth", size)[:, :1]
            self.targets = (1.0 - depth) * self.mask  # the images are near-bright: far = larger, as Sapiens'
        del self.conditions

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, S, S]``, maps ``[B, C, S, S]`` (zero outside the mask) and masks ``[B, 1, S, S]``."""
        return self.images[index], self.targets[index], self.mask[index]


class ViewPairs:
    """Source and target views of a subject and the target's camera relative to the source.

    Args:
        folder: a ``geneman data render`` output (``3d/pairs.jsonl`` and ``3d/views/``).
        size: side the images are resized to.
    """

    def __init__(self, folder: str | Path, size: int):
        folder = Path(folder)
        if not folder.is_dir():
            raise _fail(folder, "no such folder; give a `geneman data render` output")
        pairs = folder / "3d" / "pairs.jsonl"
        if not pairs.is_file():
            raise _fail(folder, "holds no 3d/pairs.jsonl; make view pairs with `geneman data render MESHES -o DATA` "
                                "(--views-3d 2 or more)")
        rows = read_jsonl(pairs, ("source", "target", "camera"))
        names = sorted({r["source"] for r in rows} | {r["target"] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        self.images = torch.stack([load_image(folder / "3d" / n, size) for n in names])
        self.source = torch.tensor([index[r["source"]] for r in rows])
        self.target = torch.tensor([index[r["target"]] for r in rows])
        try:
            self.camera = torch.tensor([r["camera"] for r in rows], dtype=torch.float32)
        except (TypeError, ValueError):
            raise _fail(pairs, "a camera is not four numbers") from None
        if self.camera.ndim != 2 or self.camera.shape[1] != 4:
            raise _fail(pairs, f"cameras must be four numbers each, found shape {list(self.camera.shape)}")
        self.folder = folder

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sources ``[B, 3, S, S]``, targets ``[B, 3, S, S]`` and cameras ``[B, 1, 4]`` of the rows ``index``."""
        return self.images[self.source[index]], self.images[self.target[index]], self.camera[index][:, None]

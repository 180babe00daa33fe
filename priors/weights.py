"""Weight resolution: which pretrained files each stage needs, where they are, and fetching them.

Every weight is named by a hub id and the files inside it. A weight is found either in
``<weights_dir>/<hub id>/<file>`` (when ``Config.weights_dir`` is set) or in the Hugging Face
cache. Loading code only ever reads a local folder returned by :func:`resolve`; a missing file
raises :class:`MissingWeightError` naming the id, the file and the folder expected.

A weight whose hub id changed (:data:`RENAMED_IDS`) is named and fetched by its current id, and a
copy a user already has under its old id (in the weights folder or the cache) is still found:
the :class:`CheckRow` then says which old id (``alias``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from priors.config import Config

STAGES = ("preprocess", "geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine")
"""Stage names as the run store names its folders (without the number)."""

RENAMED_IDS = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
"""Hub ids that moved, old id -> current id (runwayml's SD 1.5 left the Hub in 2024)."""

LPIPS_MADE_BY = ("make it from torchvision's vgg16-397923af.pth and the lpips package's weights/v0.1/vgg.pth "
                 "with priors.lpips.convert_lpips_weights(vgg_pth, lin_pth, out_dir), out_dir being "
                 "<weights_dir>/lpips or an absolute folder named by priors.lpips")
"""How a user makes the ``lpips`` weight (see :mod:`priors.lpips`; no Hub repository holds it as safetensors)."""
_UNET = (("unet/config.json",), ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"))
_SD_PARTS = (
    ("vae/config.json",), ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    ("text_encoder/config.json",), ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    ("tokenizer/vocab.json", "tokenizer/tokenizer.json"), ("scheduler/scheduler_config.json",),
)


class MissingWeightError(ValueError):
    """A pretrained weight file is neither in the weights folder nor in the Hugging Face cache."""


class UntrustedWeightError(ValueError):
    """A weight file that is code (TorchScript) and not a released file of known sha256."""


PINNED_SHA256 = {
    # facebook/sapiens-depth-*-torchscript (sha256 of the Git LFS objects as the Hub lists them)
    "sapiens_2b_render_people_epoch_25_torchscript.pt2":
        "0d1878b3f06b867f5d15b7bc7468b0114777cd0c28ceaef90c78ef777e0093b2",
    "sapiens_1b_render_people_epoch_88_torchscript.pt2":
        "4ff0c7a8fa48f1d30f97a49aee05abb905f64ee4fe6a35efa805821be5756a8c",
    "sapiens_0.3b_render_people_epoch_100_torchscript.pt2":
        "65054e6b6083171b1edf39a9786e34a47f3bfb28c1e0098f73de2ef823b7286e",
    # facebook/sapiens-normal-*-torchscript
    "sapiens_1b_normal_render_people_epoch_115_torchscript.pt2":
        "00e29d62c385de04f40bc188dd4571e19cab26a8dbc1424d61a77206b3758fb2",
}
"""sha256 of the released TorchScript files, by file name. A TorchScript file runs its own code when
loaded and called, so only these load without ``trust_weights``; files not listed here (the 2b normal
estimator's hash could not be confirmed) load only with ``--trust-weights``."""

_VERIFIED: dict[tuple, str] = {}
"""``(device, inode, size, mtime_ns)`` of files hashed in this process -> their sha256 (hashed once)."""


def sha256_of(f) -> str:
    """Hex sha256 of an open binary file, read from its start (remembered per file state)."""
    st = os.fstat(f.fileno())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        f.seek(0)
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
        _VERIFIED[key] = h.hexdigest()
    f.seek(0)
    return _VERIFIED[key]


def verify_code_weight(f, path: Path, trusted: bool = False) -> None:
    """Refuse a TorchScript weight ``f`` (open, binary) that is not a released file, unless ``trusted``.

    Raises:
        UntrustedWeightError: one line naming the file, the expected sha256 and what to do.
    """
    if trusted:
        return
    expected = PINNED_SHA256.get(Path(path).name)
    if expected is None:
        raise UntrustedWeightError(
            f"{path} is TorchScript (code that runs when loaded) with no published sha256 known to geneman; "
            "if you made or checked this file yourself, pass --trust-weights (for that command only)")
    actual = sha256_of(f)
    if actual != expected:
        raise UntrustedWeightError(
            f"{path} has sha256 {actual}, not the released file's {expected}; re-download it "
            "(`geneman weights pull`), or for your own export pass --trust-weights (for that command only)")


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained weight: a hub repository and the files a prior reads from it."""

    key: str
    """Short name of the network (``sd15``, ``prior_2d``, ...)."""
    repo_id: str
    """Hugging Face id, or an absolute local folder."""
    files: tuple[tuple[str, ...], ...]
    """Required files relative to the repository root; each entry lists accepted alternatives."""
    purpose: str = ""
    """What the network does, for reports."""
    repo_type: str = "model"
    """``model`` or ``dataset``."""
    made_by: str = ""
    """How a user makes the files when ``repo_id`` is no Hub repository (then ``pull`` skips it
    and the missing-weight error says this instead)."""


@dataclass
class CheckRow:
    """Result of looking for one weight: where it was looked for and which files are missing."""

    spec: WeightSpec
    """The weight looked for."""
    folder: str
    """Folder that holds (or should hold) the files."""
    missing: list[str] = field(default_factory=list)
    """Required files not found (alternatives joined by ``|``)."""
    optional: bool = False
    """The run goes on without this weight (Sapiens with ``sapiens_optional``)."""
    alias: str | None = None
    """Old hub id the copy was found under (see :data:`RENAMED_IDS`); None: found, or looked for,
    under ``spec.repo_id``."""

    @property
    def found(self) -> bool:
        """True when every required file exists."""
        return not self.missing


def current_id(repo_id: str) -> str:
    """The id a weight lives under on the Hub now.

    Example:
        >>> current_id("runwayml/stable-diffusion-v1-5"), current_id("wwt117/GeneMAN")
        ('stable-diffusion-v1-5/stable-diffusion-v1-5', 'wwt117/GeneMAN')
    """
    return RENAMED_IDS.get(repo_id, repo_id)


def old_ids(repo_id: str) -> list[str]:
    """Former ids of the weight now named ``repo_id``, where an older copy may still be.

    Example:
        >>> old_ids("stable-diffusion-v1-5/stable-diffusion-v1-5")
        ['runwayml/stable-diffusion-v1-5']
    """
    return [old for old, new in RENAMED_IDS.items() if new == current_id(repo_id)]


def _sd_spec(key: str, repo: str, purpose: str, unet: bool = True, controlnet: bool = False) -> WeightSpec:
    if controlnet:
        files = (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
    else:
        files = _SD_PARTS + (_UNET if unet else ())
    return WeightSpec(key, repo, files, purpose)


def all_weights(cfg: Config) -> dict[str, WeightSpec]:
    """Every weight the priors can load, by key."""
    g2d = cfg.prior_2d_subfolder
    unet_2d = ((f"{g2d}/config.json",), (f"{g2d}/diffusion_pytorch_model.safetensors",
                                         f"{g2d}/diffusion_pytorch_model.bin"))
    if cfg.prior_3d_diffusers:
        p3 = WeightSpec("prior_3d", cfg.prior_3d_diffusers, (("unet/config.json",), ("vae/config.json",),
                        ("image_encoder/config.json",), ("cc_projection/config.json",)),
                        "GeneMAN 3D prior (diffusers format)")
    else:
        p3 = WeightSpec("prior_3d", cfg.geneman_repo, ((cfg.prior_3d_ckpt,), (cfg.prior_3d_yaml,)),
                        "GeneMAN 3D prior (LDM format, Zero-1-to-3)", "dataset")
    specs = {
        "sd15": _sd_spec("sd15", cfg.sd15, "SD 1.5 VAE, text encoder, tokenizer, scheduler", unet=False),
        "prior_2d": WeightSpec("prior_2d", cfg.geneman_repo, unet_2d, "GeneMAN 2D prior UNet", "dataset"),
        "prior_3d": p3,
        "normal_adapted": _sd_spec("normal_adapted", cfg.normal_adapted, "HumanNorm normal-adapted SD 1.5"),
        "depth_adapted": _sd_spec("depth_adapted", cfg.depth_adapted, "HumanNorm depth-adapted SD 1.5"),
        "normal_aligned": _sd_spec("normal_aligned", cfg.normal_aligned, "HumanNorm normal-aligned SD 1.5",
                                   unet=False),
        "controlnet_normal": _sd_spec("controlnet_normal", cfg.controlnet_normal, "normal ControlNet",
                                      controlnet=True),
        "sapiens_normal": WeightSpec("sapiens_normal", cfg.sapiens_normal, ((cfg.sapiens_normal_file,),),
                                     "Sapiens normal estimator"),
        "sapiens_depth": WeightSpec("sapiens_depth", cfg.sapiens_depth, ((cfg.sapiens_depth_file,),),
                                    "Sapiens depth estimator"),
        "lpips": WeightSpec("lpips", cfg.lpips, (("vgg16.safetensors",), ("vgg_lin.safetensors",)),
                            "LPIPS VGG16 perceptual loss", made_by=LPIPS_MADE_BY),
        "clip": WeightSpec("clip", cfg.clip_eval, (("config.json",), ("model.safetensors",)),
                           "CLIP image encoder (geneman eval's CLIP similarity)"),
    }
    return {k: replace(s, repo_id=current_id(s.repo_id)) for k, s in specs.items()}


STAGE_WEIGHTS = {
    "preprocess": ("sapiens_normal", "sapiens_depth"),
    "geometry_init": ("sd15", "prior_2d", "prior_3d"),
    "geometry_sculpt": ("normal_adapted", "depth_adapted", "lpips"),
    "texture_coarse": ("sd15", "prior_2d", "prior_3d"),
    "texture_refine": ("normal_aligned", "prior_2d", "controlnet_normal"),
}
"""Weights each stage needs (keys of :func:`all_weights`)."""

OPTIONAL_STAGE_WEIGHTS = {"texture_refine": ("lpips",)}
"""Weights a stage uses when they are there and runs without (saying so once): not in the check."""

LOSS_GATES = {
    "geometry_init": {"sd15": ("lambda_sds",), "prior_2d": ("lambda_sds",), "prior_3d": ("lambda_sds_3d",)},
    "geometry_sculpt": {"normal_adapted": ("lambda_sds_normal",), "depth_adapted": ("lambda_sds_depth",),
                        "lpips": ("lambda_normal_lpips",)},
    "texture_coarse": {"sd15": ("lambda_sds",), "prior_2d": ("lambda_sds",), "prior_3d": ("lambda_sds_3d",)},
}
"""Weights a stage loads only for a loss: not needed when each loss weight named is 0 all along."""

GROUP_WEIGHTS = {"eval": ("clip", "lpips")}
"""Weights of commands beside the stages, by group name (keys of :func:`all_weights`): ``eval`` is
``geneman eval`` (CLIP similarity; LPIPS, which eval leaves out with a note when missing). A run
never asks for a group: ``geneman weights check|pull`` lists and fetches them (``--stage eval``)."""
GROUPS = STAGES + tuple(GROUP_WEIGHTS)
"""Every name ``geneman weights check|pull --stage`` takes: the stages, then the groups."""


def peak(value: Any) -> float:
    """Largest value a constant or a schedule (anything with ``start`` / ``end``) takes."""
    return float(max(value.start, value.end)) if hasattr(value, "start") else float(value)


def stage_weight_keys(stage: str, run_cfg: Any = None) -> list[str]:
    """Keys of the weights ``stage`` loads; with ``run_cfg`` (the run config, read by attribute:
    ``run_cfg.<stage>.lambda_...``), less those whose losses all have weight 0 throughout. A group
    of :data:`GROUP_WEIGHTS` (``eval``) gives its weights as listed.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> stage_weight_keys("geometry_init", NS(geometry_init=NS(lambda_sds=0.1, lambda_sds_3d=0.0)))
        ['sd15', 'prior_2d']
    """
    if stage in GROUP_WEIGHTS:
        return list(GROUP_WEIGHTS[stage])
    if stage not in STAGE_WEIGHTS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(GROUPS)}")
    gates = LOSS_GATES.get(stage, {}) if run_cfg is not None else {}
    stage_cfg = getattr(run_cfg, stage, None)
    return [k for k in STAGE_WEIGHTS[stage]
            if k not in gates or any(peak(getattr(stage_cfg, lam)) != 0 for lam in gates[k])]


def required_weights(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES,
                     run_cfg: Any = None) -> list[WeightSpec]:
    """Weights the given stages need, each once, in stage order.

    Args:
        cfg: the run's ``cfg.priors``.
        stages: stage names from :data:`STAGES` (default: all of them) or groups of :data:`GROUP_WEIGHTS`.
        run_cfg: the whole run config; when given, a weight used only by losses whose weights are 0
            throughout (``--set geometry_init.lambda_sds_3d=0``) is not needed (see :data:`LOSS_GATES`).
    """
    specs, keys = all_weights(cfg), []
    for stage in stages:
        keys += [k for k in stage_weight_keys(stage, run_cfg) if k not in keys]
    return [specs[k] for k in keys]


BUNDLED = "@bundled"
"""``priors.weights_dir`` naming the tiny priors that ship with geneman (:data:`BUNDLED_DIR`, made by
``make priors``; the ``demo`` preset uses them)."""
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""Folder of the bundled tiny priors (package data)."""


def weights_root(cfg: Config) -> Path:
    """The folder ``cfg.weights_dir`` names (:data:`BUNDLED` is :data:`BUNDLED_DIR`)."""
    return BUNDLED_DIR if cfg.weights_dir == BUNDLED else Path(cfg.weights_dir).expanduser()


def inside_bundle(location: str) -> bool:
    """True when ``location`` (a ``priors.*`` weight location) can only name a place inside the
    weights folder: relative and without ``..`` (a run folder's values under :data:`BUNDLED` are kept)."""
    return not os.path.isabs(location) and ".." not in Path(location).parts and not location.startswith("~")


def local_folder(cfg: Config, spec: WeightSpec) -> Path:
    """Folder where ``spec`` is expected under ``cfg.weights_dir`` (or an absolute repo path)."""
    if os.path.isabs(spec.repo_id):
        return Path(spec.repo_id)
    return weights_root(cfg) / spec.repo_id


def _cache_root(spec: WeightSpec, alternatives: tuple[str, ...]) -> Path | None:
    """Snapshot folder of the Hugging Face cache holding one of ``alternatives``, if any."""
    from huggingface_hub import try_to_load_from_cache

    for rel in alternatives:
        hit = try_to_load_from_cache(spec.repo_id, rel, repo_type=spec.repo_type)
        if isinstance(hit, str):
            return Path(hit[: -len(rel)].rstrip("/"))
    return None


def check_one(cfg: Config, spec: WeightSpec) -> CheckRow:
    """Look for every file of ``spec``; the row names the folder and the missing files.

    A complete copy under one of the id's :func:`old_ids` is used when the current id has none;
    the row then names that copy's folder and the old id (``alias``). Otherwise the row is the
    current id's, so a missing weight is reported (and pulled) under the current id.
    """
    row = _look_for(cfg, spec)
    if row.found:
        return row
    for old in old_ids(spec.repo_id):
        if old != spec.repo_id and (found := _look_for(cfg, replace(spec, repo_id=old))).found:
            return CheckRow(spec, found.folder, alias=old)
    return row


def _look_for(cfg: Config, spec: WeightSpec) -> CheckRow:
    if cfg.weights_dir or os.path.isabs(spec.repo_id):
        root = local_folder(cfg, spec)
        missing = ["|".join(alts) for alts in spec.files if not any((root / a).is_file() for a in alts)]
        return CheckRow(spec, str(root), missing)
    roots = [_cache_root(spec, alts) for alts in spec.files]
    found = next((r for r in roots if r is not None), None)
    folder = str(found) if found else f"Hugging Face cache ({spec.repo_type} {spec.repo_id})"
    missing = ["|".join(alts) for alts, r in zip(spec.files, roots) if r is None]
    return CheckRow(spec, folder, missing)


def check(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, run_cfg: Any = None) -> list[CheckRow]:
    """What ``geneman weights check`` reports: one row per weight the stages need.

    The CLI passes ``cfg.priors`` (with ``weights_dir`` set from ``--weights DIR``) and the stage
    names it will run (default: all five of :data:`STAGES`), and the run config so that weights
    of losses weighted 0 are left out; print ``format_report(rows)``.
    """
    rows = [check_one(cfg, spec) for spec in required_weights(cfg, stages, run_cfg)]
    for row in rows:
        row.optional = cfg.sapiens_optional and row.spec.key.startswith("sapiens")
    return rows


def format_report(rows: list[CheckRow]) -> str:
    """Table of found / missing weights with the exact folder layout expected for missing ones."""
    lines = [f"{'network':<18} {'status':<8} {'id':<44} folder"]
    for row in rows:
        status = "found" if row.found else ("optional" if row.optional else "MISSING")
        lines.append(f"{row.spec.key:<18} {status:<8} {row.spec.repo_id:<44} {row.folder}")
        if row.alias:
            lines.append(f"{'':<28}found under the old id {row.alias} (now {row.spec.repo_id})")
        for rel in row.missing:
            lines.append(f"{'':<28}missing file: {rel}")
    n_missing = sum(not r.found and not r.optional for r in rows)
    n_found = sum(r.found for r in rows)
    lines.append(f"{n_found}/{len(rows)} weights found" +
                 ("; run `geneman weights pull` or copy the files to the folders above" if n_missing else ""))
    return "\n".join(lines)


def missing_error(row: CheckRow) -> MissingWeightError:
    """The one-line error for a weight that is not complete."""
    how = row.spec.made_by or "run `geneman weights pull` or copy them there"
    if Path(row.folder).is_relative_to(BUNDLED_DIR / "tiny"):
        how = "the bundled tiny priors are incomplete: `git checkout priors/bundled`, or make them with `make priors`"
    return MissingWeightError(
        f"missing weight {row.spec.key}: id {row.spec.repo_id!r}, file(s) {', '.join(row.missing)}, "
        f"expected in {row.folder}; {how} (layout: <weights_dir>/<id>/<file>)")


def resolve(cfg: Config, spec: WeightSpec) -> Path:
    """Local root folder of ``spec`` with every file present, else :class:`MissingWeightError`."""
    row = check_one(cfg, spec)
    if not row.found:
        raise missing_error(row)
    return Path(row.folder)


def ensure_available(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, run_cfg: Any = None) -> None:
    """Stop before any stage starts when a weight is missing.

    ``pipeline.models.check_weights`` calls this (through ``PriorSet.check``) with the stage names
    a run will run; the error lists every missing id, file and the folder looked in, one per line.
    Sapiens weights do not stop the run when ``cfg.sapiens_optional`` is set: preprocess then
    leaves the depth / normal maps out of ``Inputs`` (the stages are to skip the matching losses).
    """
    errors = [str(missing_error(r)) for r in check(cfg, stages, run_cfg) if not r.found and not r.optional]
    if errors:
        raise MissingWeightError("\n".join(errors))


def files_to_fetch(spec: WeightSpec, repo_files: list[str]) -> list[str]:
    """Files to download for ``spec`` from a repository listing ``repo_files``.

    For each requirement the first alternative the repository has (safetensors before .bin, so
    a repository holding both is not fetched twice), plus the small config / tokenizer files
    (``.json``, ``.txt``) beside it.

    Example:
        >>> spec = WeightSpec("x", "a/b", (("unet/m.safetensors", "unet/m.bin"),))
        >>> files_to_fetch(spec, ["unet/m.bin", "unet/m.safetensors", "unet/config.json", "vae/config.json"])
        ['unet/config.json', 'unet/m.safetensors']
    """
    have, chosen = set(repo_files), set()
    for alts in spec.files:
        pick = next((a for a in alts if a in have), alts[0])
        chosen.add(pick)
        folder = os.path.dirname(pick)
        chosen.update(f for f in repo_files if os.path.dirname(f) == folder and f.endswith((".json", ".txt")))
    return sorted(chosen)


def pull(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, run_cfg: Any = None) -> list[str]:
    """Download every missing weight the stages need (``geneman weights pull``), with progress bars.

    The CLI passes ``cfg.priors`` and the stage names; files go to ``<weights_dir>/<id>/`` when
    ``weights_dir`` is set, else to the Hugging Face cache. Returns one line per weight
    (``downloaded``, ``already present``, the download error, or for a weight no Hub repository
    holds, :attr:`WeightSpec.made_by`) for the CLI to print.
    """
    from huggingface_hub import HfApi, snapshot_download

    report = []
    for row in check(cfg, stages, run_cfg):
        if row.found:
            old = f" (under the old id {row.alias})" if row.alias else ""
            report.append(f"{row.spec.key}: already present in {row.folder}{old}")
            continue
        local = str(local_folder(cfg, row.spec)) if cfg.weights_dir else None
        if row.spec.made_by:
            report.append(f"{row.spec.key}: not on the Hugging Face Hub; {row.spec.made_by}")
            continue
        try:
            listing = HfApi().list_repo_files(row.spec.repo_id, repo_type=row.spec.repo_type)
            path = snapshot_download(row.spec.repo_id, repo_type=row.spec.repo_type, local_dir=local,
                                     allow_patterns=files_to_fetch(row.spec, listing))
            report.append(f"{row.spec.key}: downloaded to {path}")
        except Exception as err:  # network or hub errors are reported per weight, not fatal
            report.append(f"{row.spec.key}: download failed ({type(err).__name__}: {err})")
    return report


CODE_WEIGHTS = {"sapiens_normal": "sapiens_normal_file", "sapiens_depth": "sapiens_depth_file"}
"""Weights that are code when loaded (TorchScript), key -> the config field naming their file."""


def verify_code_weights(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, run_cfg: Any = None) -> None:
    """Check every TorchScript weight the stages need and that is present, before anything runs.

    Raises:
        UntrustedWeightError: see :func:`verify_code_weight`.
    """
    for row in check(cfg, stages, run_cfg):
        if row.spec.key in CODE_WEIGHTS and row.found:
            path = Path(row.folder) / getattr(cfg, CODE_WEIGHTS[row.spec.key])
            if path.suffix == ".safetensors":  # a geneman estimator (priors.estimator): weights, no code
                continue
            with open(path, "rb") as f:
                verify_code_weight(f, path, cfg.trust_weights)

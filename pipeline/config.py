"""The run configuration: typed dataclasses as the schema, YAML presets and ``--set`` on top.

Load order: schema defaults (the release) < preset (``configs/NAME.yaml``) < ``--config FILE``
< ``--set a.b=c``. Unknown keys and wrong types fail here, before any model is loaded, with the
full key and the nearest valid one.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError
from pipeline.run import preprocess
from priors import config as priors_config
from priors.weights import BUNDLED, inside_bundle
from stages import geometry_init, geometry_sculpt, texture_coarse, texture_refine
from stages.final import FORMATS, ExportConfig, check_formats
from stages.schedule import Ramp

PRESETS = ("paper", "release", "cpu", "demo")
MAX_CONFIG_BYTES = 1 << 20
"""A config file (or run folder's config.yaml) larger than this is refused."""
INVOCATION_ONLY = {"priors.trust_prior_3d_pickle": "--trust-prior-3d-pickle", "priors.trust_weights": "--trust-weights"}
"""Keys that only a command-line flag of one invocation sets: never read from a config layer, never stored."""
WEIGHT_LOCATIONS = ("weights_dir", "sd15", "geneman_repo", "prior_2d_subfolder", "prior_3d_ckpt", "prior_3d_yaml",
                    "prior_3d_diffusers", "normal_adapted", "depth_adapted", "normal_aligned", "controlnet_normal",
                    "sapiens_normal", "sapiens_normal_file", "sapiens_depth", "sapiens_depth_file", "lpips",
                    "clip_eval")
"""``priors.*`` fields naming where weights are read from: a run folder's values are not trusted on resume."""


@dataclass
class CheckpointConfig:
    """When stage checkpoints are written and how many are kept."""

    every_n_steps: int = 250
    """Write a checkpoint every this many steps (and always on SIGTERM / SIGINT / SIGUSR1)."""
    keep_last: int = 3
    """Keep this many newest checkpoints per stage."""


@dataclass
class RunConfig:
    """Everything one photo -> textured mesh run needs."""

    seed: int = 0
    """Seed of every random generator (python, numpy, torch)."""
    device: str = field(default="auto",
                        metadata={"pattern": r"auto|cpu|cuda(:\d+)?", "hint": "auto, cpu, cuda or cuda:N"})
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    prompt: str = ""
    """Text prompt of the 2D prior, carried to the stages in ``Inputs``; empty: ``a photo of a person``."""
    negative_prompt: str = ""
    """Negative prompt of the 2D prior, carried to the stages in ``Inputs``."""
    progress_every_s: float = 10.0
    """Seconds between plain progress lines when the output is not a terminal."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Stage checkpointing."""
    preprocess: preprocess.Config = field(default_factory=preprocess.Config)
    """Photo loading, masking and recentring."""
    priors: priors_config.Config = field(default_factory=priors_config.Config)
    """Pretrained weights and how the frozen networks run."""
    geometry_init: geometry_init.Config = field(default_factory=geometry_init.Config)
    """Stage 1: NeRF initialisation."""
    geometry_sculpt: geometry_sculpt.Config = field(default_factory=geometry_sculpt.Config)
    """Stage 2: DMTet sculpting."""
    texture_coarse: texture_coarse.Config = field(default_factory=texture_coarse.Config)
    """Stage 3: latent-space texture."""
    texture_refine: texture_refine.Config = field(default_factory=texture_refine.Config)
    """Stage 4: pixel-space texture refinement."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Final export (:class:`stages.final.ExportConfig`)."""


def preset_path(name: str) -> Path:
    """Path of the YAML file of preset ``name``."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("configs").joinpath(f"{name}.yaml")))


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses anchors and aliases (a 238-byte alias bomb expands to gigabytes)."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ConfigError(f"{source}: YAML anchors and aliases (&name, *name) are not allowed in configs; "
                                  "write the values out")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(e).split())}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"{path} is not a file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few kilobytes")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    data = safe_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def _schema_default(key: str) -> Any:
    """The schema default at dotted ``key`` of RunConfig, or None when there is no such key."""
    node: Any = RunConfig()
    for part in key.split("."):
        if not is_dataclass(node) or isinstance(node, Ramp) or part not in {f.name for f in fields(node)}:
            return None
        node = getattr(node, part)
    return node


def parse_set_value(key: str, raw: str) -> Any:
    """An ``--set`` value as the field's type reads it: text as given for text fields, numbers as numbers
    (``1e3`` too), ``true``/``false`` for flags; lists and mappings as YAML flow (``[glb, obj]``)."""
    default = _schema_default(key)
    if isinstance(default, str):
        return raw
    text = raw.strip()
    if isinstance(default, bool):
        return {"true": True, "false": False}.get(text.lower(), text)
    if isinstance(default, int) and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if isinstance(default, (int, float, Ramp)):
        try:
            return float(text)
        except ValueError:
            pass
    if not text:
        return ""
    return safe_yaml(text, f"--set {key}")


def _parse_sets(sets: list[str]) -> dict:
    out: dict = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' must look like a.b=value")
        value = parse_set_value(key.strip(), raw)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set '{item}' conflicts with another --set of '{p}'")
        node[parts[-1]] = value
    return out


def _check_keys(data: dict, schema: Any, prefix: str, source: str) -> dict:
    """Reject unknown keys (naming the nearest valid one); turn scalars given for a Ramp into constants."""
    names = [f.name for f in fields(schema)]
    out = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys here: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown config key '{full}'{hint}")
        sub = getattr(schema, key)
        if full in INVOCATION_ONLY and value not in (False, None):
            raise ConfigError(f"{source}: {full} is not read from configs or run folders; pass "
                              f"{INVOCATION_ONLY[full]} on the command line (it holds for that command only)")
        if full in INVOCATION_ONLY:
            continue
        if isinstance(sub, Ramp) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {"start": value, "end": value, "begin": 0, "until": 0}
        if is_dataclass(sub) and isinstance(value, dict):
            value = _check_keys(value, sub, f"{full}.", source)
        elif is_dataclass(sub):
            raise ConfigError(f"{source}: '{full}' is a section ({type(sub).__name__}); give its keys, "
                              f"e.g. {full}.{fields(sub)[0].name}=...")
        out[key] = value
    return out


def _merge(base, data: dict, source: str):
    try:
        return OmegaConf.merge(base, data)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def missing_key(data: Any, schema: Any = None, prefix: str = "") -> str | None:
    """The first key of the schema (dotted, e.g. ``texture_refine.steps``) that a config mapping lacks, or
    None when every section and key is there; :data:`INVOCATION_ONLY` keys are never stored, so not asked
    for; a :class:`Ramp` given as a number is whole."""
    schema = RunConfig() if schema is None else schema
    for f in fields(schema):
        full, sub = f"{prefix}{f.name}", getattr(schema, f.name)
        if full in INVOCATION_ONLY:
            continue
        if not isinstance(data, dict) or f.name not in data:
            return full
        if is_dataclass(sub) and (not isinstance(sub, Ramp) or isinstance(data[f.name], dict)):
            found = missing_key(data[f.name] if data[f.name] is not None else {}, sub, f"{full}.")
            if found:
                return found
    return None


def check_complete(data: dict, source: str) -> None:
    """Refuse a run folder's config.yaml that lacks a section or key (a file cut short): never a default.

    Raises:
        ConfigError: naming the file and the first missing key.
    """
    key = missing_key(data)
    if key is not None:
        kind = "section" if is_dataclass(_schema_default(key)) and not isinstance(_schema_default(key), Ramp) else "key"
        raise ConfigError(f"{source}: {kind} {key} is missing; the file is damaged (restore it, or start a new run)")


def load_config(preset: str | None = "release", config_file: str | Path | None = None,
                sets: list[str] | None = None, run_folder_config: bool = False, complete: bool = False) -> RunConfig:
    """Build the run config: schema defaults < preset < ``config_file`` < ``sets``.

    ``run_folder_config``: ``config_file`` is a run folder's config.yaml, whose weight locations
    (:data:`WEIGHT_LOCATIONS`) are not trusted: they are dropped (the defaults, or ``sets``, apply),
    except under ``priors.weights_dir: "@bundled"`` (the ``demo`` preset's priors, shipped with geneman),
    where those that can only name a folder inside the bundle (relative, no ``..``) are kept.
    ``complete``: ``config_file`` must hold every section and key of the schema (:func:`check_complete`),
    as a run folder's config.yaml does: none is filled from the defaults.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key (with the nearest valid one),
            a value of the wrong type, or (``complete``) a missing key.
    """
    defaults = RunConfig()
    cfg = OmegaConf.structured(RunConfig)
    layers = []
    if preset:
        path = preset_path(preset)
        layers.append((_read_yaml(path), f"preset '{preset}' ({path})"))
    if config_file:
        data = _read_yaml(Path(config_file))
        if complete:
            check_complete(data, str(config_file))
        if run_folder_config and isinstance(data.get("priors"), dict):
            stored = data["priors"]
            bundled = stored.get("weights_dir") == BUNDLED  # the package's own priors: locations inside it kept
            data["priors"] = {k: v for k, v in stored.items() if k not in WEIGHT_LOCATIONS
                              or (bundled and isinstance(v, str) and inside_bundle(v))}
        layers.append((data, str(config_file)))
    if sets:
        layers.append((_parse_sets(sets), "--set"))
    for data, source in layers:
        cfg = _merge(cfg, _check_keys(data, defaults, "", source), source)
    obj = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def schema_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(full key, owning dataclass instance, dataclasses.Field)`` of every leaf of a config
    dataclass; a :class:`Ramp` is a leaf."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, Ramp):
            yield from schema_leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", obj, f


def check_field_values(cfg: RunConfig) -> None:
    """Check each value against its field's ``metadata``: ``choices``, ``pattern`` (+ ``hint``),
    ``min`` and ``max`` (inclusive).

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    for key, owner, f in schema_leaves(cfg):
        value, meta = getattr(owner, f.name), f.metadata
        if "choices" in meta and value not in meta["choices"]:
            near = difflib.get_close_matches(str(value), meta["choices"], n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(meta['choices'])}{hint}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], str(value)):
            raise ConfigError(f"{key}={value!r} is not valid; use {meta['hint']}")
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and not value >= low) or (high is not None and not value <= high):  # NaN fails too
            bounds = f"between {low} and {high}" if low is not None and high is not None else (
                f"at least {low}" if low is not None else f"at most {high}")
            raise ConfigError(f"{key}={value} is out of range; it must be {bounds}")


def _numbers(value: Any) -> Iterator[float]:
    """Every number inside a leaf value (a Ramp's start and end, a list's items)."""
    if isinstance(value, Ramp):
        yield from (value.start, value.end)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def check_sane_numbers(cfg: RunConfig) -> None:
    """Ranges every config obeys whatever its field: finite floats, positive learning rates and step
    counts, non-negative loss weights and counts, Adam betas as two numbers in [0, 1).

    Raises:
        ConfigError: naming the key and the value.
    """
    for key, owner, f in schema_leaves(cfg):
        value, name = getattr(owner, f.name), f.name
        nums = list(_numbers(value))
        if any(isinstance(v, float) and not math.isfinite(v) for v in nums):
            raise ConfigError(f"{key}={value} is not a finite number")
        if any(abs(v) > 1e15 for v in nums) and name != "seed":
            raise ConfigError(f"{key}={value} is out of range (at most 1e15 in size)")
        if (name in ("lr", "eps", "lr_other") or name.endswith("_lr") or name.startswith("lr_")) and \
                any(v <= 0 for v in nums):
            raise ConfigError(f"{key}={value} must be positive")
        if any(v < 0 for v in nums) and (name.startswith(("lambda_", "every", "keep", "steps", "max_", "min_"))
                                          or name.endswith(("_steps", "_s", "_every", "_weight", "_decay"))
                                          or isinstance(value, list) and name.endswith("milestones")):
            raise ConfigError(f"{key}={value} must not be negative")
        if name == "betas" and (len(value) != 2 or not all(0 <= b < 1 for b in value)):
            raise ConfigError(f"{key}={value} must be two numbers in [0, 1), e.g. [0.9, 0.99]")
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed={cfg.seed} is out of range; it must be between 0 and 2^63 - 1")
    if cfg.preprocess.canvas > 8192:
        raise ConfigError(f"preprocess.canvas={cfg.preprocess.canvas} is out of range; it must be between 64 and 8192")
    if cfg.progress_every_s <= 0:
        raise ConfigError(f"progress_every_s={cfg.progress_every_s} must be positive")
    if not cfg.export.formats:
        raise ConfigError(f"export.formats is empty; give one or more of {', '.join(FORMATS)}")


def validate(cfg: RunConfig) -> None:
    """Field values against their schema metadata, then cross-field checks that types alone cannot express."""
    check_field_values(cfg)
    check_sane_numbers(cfg)
    for name in ("geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine"):
        steps = getattr(cfg, name).steps
        if steps < 1:
            raise ConfigError(f"{name}.steps must be at least 1, got {steps}")
    gi = cfg.geometry_init
    if len(gi.resolutions) != len(gi.resolution_milestones) + 1:
        raise ConfigError(f"geometry_init.resolutions has {len(gi.resolutions)} entries; it needs one more than "
                          f"geometry_init.resolution_milestones ({len(gi.resolution_milestones)})")
    if cfg.checkpoint.every_n_steps < 1 or cfg.checkpoint.keep_last < 1:
        raise ConfigError("checkpoint.every_n_steps and checkpoint.keep_last must be at least 1")
    try:
        check_formats(cfg.export.formats)
    except ValueError as e:
        raise ConfigError(f"export.formats: {e}") from None
    if cfg.export.turntable_resolution % 2:
        raise ConfigError(f"export.turntable_resolution={cfg.export.turntable_resolution} must be even "
                          "(H.264 video in yuv420p needs even frame sizes)")


def to_dict(obj: Any) -> Any:
    """Plain ``dict`` / ``list`` view of a config (or any part of it)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``config.yaml`` of a run holds), less :data:`INVOCATION_ONLY` keys."""
    data = to_dict(cfg)
    for key in INVOCATION_ONLY:
        section, name = key.split(".")
        data[section].pop(name, None)
    return OmegaConf.to_yaml(OmegaConf.create(data))


def from_yaml_file(path: Path) -> RunConfig:
    """Read a run's resolved ``config.yaml`` back (no preset underneath)."""
    return load_config(preset=None, config_file=path)


def digest(*parts: Any) -> str:
    """Stable short sha256 of JSON-able parts (configs as dicts)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""Seconds per step of each stage with real-size random-weight priors, split into rendering, prior
networks and the rest (CPU, 2 threads).

Run:  .venv/bin/python benchmarks/bench_stages.py --only init --preset cpu [--steps 3] [--set KEY=VALUE ...]
      .venv/bin/python benchmarks/bench_stages.py --only sculpt --preset paper --set geometry_sculpt.init_steps=200
      .venv/bin/python benchmarks/bench_stages.py --only tets --preset paper     (band tet count only)
      .venv/bin/python benchmarks/bench_stages.py --only coarse --preset cpu --set texture_coarse.n_ref=2
      .venv/bin/python benchmarks/bench_stages.py --only refine --preset cpu --steps 4 --set texture_refine.n_views=1

Each section runs the stage's own ``run(cfg, inputs, previous, priors, ckpt)`` for ``--steps`` steps
on a generated subject (``front_back``) at the preset's canvas, with an object holding the priors the
stage reads (stages 1 and 3: ``hybrid``; stage 2: ``adapted`` and ``lpips``; stage 4: ``sdedit`` and
``lpips``; ``device``) built from the real classes at real size with random weights (no download):
SD 1.5-size ``StableDiffusionSDS`` (UNet ``SD15_UNET``, VAE ``SD15_VAE``, a CLIP ViT-L/14-size text
encoder, the tiny tokenizer), Zero-1-to-3-size ``Zero123SDS`` (8-channel UNet, CLIP ViT-L/14 vision
encoder projecting to 768, ``cc_projection`` 772 -> 768), ``AdaptedGuidance`` of two SD-size models,
``ControlNetSDEdit`` (SD-size UNet, VAE and text encoder, ControlNet ``SD15_CONTROLNET``) and LPIPS at
VGG16's widths; each prepared by ``priors.memory.prepare`` as ``from_pretrained`` does (fp32 on a CPU).
The previous stage's result is made from the subject mesh itself in the scene frame (stage 4: with an
untrained stage-3 texture field on it, baked as the stage bakes a trained one).

What is timed, per step (a step ends at the checkpoint's ``step_done``; the first step starts where
the stage calls the guidance's ``prepare``, whose text / image embedding is done there eagerly and
reported as setup):
- rendering: the stage module's render function (``geometry_init.render``, ``geometry_sculpt._render``,
  ``texture_coarse.render``, ``texture_refine.render``, patched here), forward, plus its backward: from
  the moment the gradient of all its outputs has arrived to the moment the gradient of its inputs is
  complete (stage 2: the mesh vertices) or the optimiser step begins (the other stages: the field's or
  the texture's parameters are leaves);
- prior networks: the guidance calls (``hybrid.__call__``, ``adapted.normal_sds`` / ``depth_sds``,
  ``sdedit.__call__`` (no gradient), ``lpips``), forward, plus their backward (the VAE encoder's /
  VGG's backward to the render), timed the same way between identity autograd nodes placed on their
  outputs and inputs (the CPU autograd engine runs later-created nodes first, so each window holds
  that network's backward alone);
- rest: step wall time minus both (losses, regularisers, occupancy-grid update, stage 2's marching
  tets and SDF network over the band with their backward, stage 4's normal render for the edit's
  control image, optimiser step).
Process memory (RSS of this process) is sampled every 10 ms during the steps; each section runs
in its own process (``--only`` chooses one), so stage-1 priors are never held beside stage 2's.
Prints a Markdown table; the load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.framing import frame_subject  # noqa: E402
from evaluation.subjects import make_subject  # noqa: E402
from evaluation.truth import reference_inputs  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from stages import geometry_init, geometry_sculpt, texture_coarse, texture_refine  # noqa: E402

SUBJECT = "front_back"
MODULES = {"init": geometry_init, "sculpt": geometry_sculpt, "coarse": texture_coarse, "refine": texture_refine}
STAGE = {key: module.__name__.rsplit(".", 1)[1] for key, module in MODULES.items()}
"""The config section (and stage name) of each ``--only`` key."""
RENDER = {"init": "render", "sculpt": "_render", "coarse": "render", "refine": "render"}
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- real-size priors, random weights ----------------------------------------------------------

def sd_modules(seed: int, tiny_size: bool = False) -> tuple:
    """``(vae, unet, text_encoder)`` of SD 1.5 size with random weights (tiny sizes with ``tiny_size``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from priors import tiny
    from priors.profile import SD15_UNET, SD15_VAE

    if tiny_size:
        p = tiny.sd_parts(seed)
        return p.vae, p.unet, p.text_encoder
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, **SD15_UNET)
    vae = AutoencoderKL(sample_size=512, scaling_factor=0.18215, **SD15_VAE)
    return vae, unet, clip_text_l14()


def sd_sds(seed: int, cfg_variant: str, tiny_size: bool = False):
    """An SD 1.5-size StableDiffusionSDS with random weights (tiny sizes with ``tiny_size``, for a smoke run)."""
    from priors import memory, tiny
    from priors.config import Config
    from priors.prior_2d import StableDiffusionSDS
    from priors.text import PromptEncoder

    vae, unet, text = sd_modules(seed, tiny_size)
    cfg, dev = Config(), torch.device("cpu")
    prompt = PromptEncoder(tiny.tokenizer(), memory.prepare(text, cfg, dev))
    return StableDiffusionSDS(memory.prepare(vae, cfg, dev), memory.prepare(unet, cfg, dev), prompt, tiny.scheduler(),
                              cfg_variant, cfg.weighting)


def clip_text_l14():
    """A CLIP ViT-L/14-size text encoder (SD 1.5's), random weights, the tiny tokenizer's special ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768, bos_token_id=512, eos_token_id=513, pad_token_id=513))


def controlnet_sdedit(seed: int, tiny_size: bool = False):
    """Stage 4's ControlNetSDEdit at SD 1.5 size (UNet, VAE, text encoder, normal ControlNet), random weights."""
    from diffusers import ControlNetModel

    from priors import memory, tiny
    from priors.config import Config
    from priors.profile import SD15_CONTROLNET
    from priors.sdedit import ControlNetSDEdit
    from priors.text import PromptEncoder

    vae, unet, text = sd_modules(seed, tiny_size)
    control = tiny.controlnet(seed) if tiny_size else ControlNetModel(**SD15_CONTROLNET)
    cfg, dev = Config(), torch.device("cpu")
    prep = lambda m: memory.prepare(m, cfg, dev)  # noqa: E731
    return ControlNetSDEdit(prep(vae), prep(unet), prep(control), PromptEncoder(tiny.tokenizer(), prep(text)),
                            tiny.scheduler())


def zero123_sds(seed: int, tiny_size: bool = False):
    """A Zero-1-to-3-size Zero123SDS with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from priors import memory, tiny
    from priors.config import Config
    from priors.prior_3d import Zero123SDS
    from priors.profile import SD15_UNET, SD15_VAE
    from priors.zero123_parts import Zero123Parts

    if tiny_size:
        parts = Zero123Parts(tiny.unet(8, seed), tiny.vae(seed), tiny.image_encoder(seed), tiny.cc_projection(seed),
                             tiny.scheduler())
    else:
        torch.manual_seed(seed)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768,
                                  hidden_act="quick_gelu")
        parts = Zero123Parts(UNet2DConditionModel(sample_size=32, **dict(SD15_UNET, in_channels=8)),
                             AutoencoderKL(sample_size=256, scaling_factor=0.18215, **SD15_VAE),
                             CLIPVisionModelWithProjection(vision), torch.nn.Linear(772, 768), tiny.scheduler())
    cfg = Config()
    for name in ("unet", "vae", "image_encoder", "cc_projection"):
        setattr(parts, name, memory.prepare(getattr(parts, name), cfg, "cpu"))
    return Zero123SDS(parts, cfg.weighting)


def lpips_net(seed: int, tiny_size: bool = False):
    """LPIPS at VGG16's widths, random convolutions, heads in [0, 1) (as priors.tiny.lpips)."""
    from priors import tiny
    from priors.lpips import LPIPS, VGG16_WIDTHS

    torch.manual_seed(seed)
    model = LPIPS(tiny.LPIPS_WIDTHS if tiny_size else VGG16_WIDTHS)
    with torch.no_grad():
        for head in model.heads:
            head.model[1].weight.uniform_(0.0, 1.0)
    return model


# --- timers ---------------------------------------------------------------------------------------

class _Stamp(torch.autograd.Function):
    """Identity whose backward records when the gradients of all its outputs have arrived."""

    @staticmethod
    def forward(ctx, clock, key, *xs):
        ctx.clock, ctx.key = clock, key
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.clock.marks[ctx.key] = time.perf_counter()
        return (None, None, *grads)


@dataclass
class StepRecord:
    step: int
    kind: str
    wall: float
    render: float
    prior: float
    render_fwd: float
    prior_fwd: float
    faces: int = 0
    edits: int = 0


@dataclass
class Clock:
    """Per-step forward times, backward stamps, and the steps' records."""

    n_ref: int
    fwd: dict = field(default_factory=lambda: {"render": 0.0, "prior": 0.0})
    marks: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    records: list = field(default_factory=list)
    setup: float = 0.0
    t_prev: float | None = None
    faces: int = 0
    edits: int = 0

    def stamp(self, key, tensors: list) -> list:
        """Tensors that need a gradient pass through one :class:`_Stamp`; others unchanged."""
        idx = [i for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not idx:
            return tensors
        out = list(tensors)
        for i, t in zip(idx, _Stamp.apply(self, key, *[tensors[i] for i in idx])):
            out[i] = t
        return out

    def timed(self, bucket: str, fn, args: tuple, kwargs: dict, outputs_of):
        """Call ``fn`` with its tensor arguments stamped (backward end) and its outputs stamped (backward start)."""
        token = (bucket, len(self.calls))
        self.calls.append(token)
        args = tuple(self.stamp(token + ("in",), list(args)))
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.fwd[bucket] += time.perf_counter() - t
        return outputs_of(out, lambda ts: self.stamp(token + ("out",), ts))

    def begin(self) -> None:
        self.t_prev = time.perf_counter()

    def step_done(self, step: int) -> None:
        now = time.perf_counter()
        bwd = {"render": 0.0, "prior": 0.0}
        for token in self.calls:
            start, end = self.marks.get(token + ("out",)), self.marks.get(token + ("in",), self.marks.get("opt"))
            if start is not None and end is not None:
                bwd[token[0]] += end - start
        kind = "reference" if (step - 1) % self.n_ref == 0 else "guidance"
        self.records.append(StepRecord(step - 1, kind, now - self.t_prev, self.fwd["render"] + bwd["render"],
                                       self.fwd["prior"] + bwd["prior"], self.fwd["render"], self.fwd["prior"],
                                       self.faces, self.edits))
        self.fwd, self.marks, self.calls, self.edits = {"render": 0.0, "prior": 0.0}, {}, [], 0
        self.t_prev = time.perf_counter()


def _sds_out(out, stamp):
    """Stamp the loss of an SDSOutput (adapted guidance)."""
    out.loss = stamp([out.loss])[0]
    return out


def _hybrid_out(out, stamp):
    """Stamp every term's loss of a HybridOutput in one node."""
    names = list(out.terms)
    for name, loss in zip(names, stamp([out.terms[n].loss for n in names])):
        out.terms[name].loss = loss
    return out


class _Timed:
    """A guidance wrapper whose ``prepare`` also does the lazy embedding eagerly (:meth:`_embed`), timed as
    setup, and then starts the clock's first step."""

    def __init__(self, inner, clock: Clock):
        self.inner, self.clock = inner, clock

    def _embed(self) -> None:
        raise NotImplementedError

    def prepare(self, *args, **kwargs):
        t = time.perf_counter()
        self.inner.prepare(*args, **kwargs)
        self._embed()
        self.clock.setup = time.perf_counter() - t
        self.clock.begin()


class TimedHybrid(_Timed):
    """``HybridSDS`` with its call timed; ``prepare`` embeds the prompt and the reference eagerly."""

    def _embed(self) -> None:
        self.inner._prepared_embeddings()
        self.inner._set_reference()

    def __call__(self, images, *args, **kwargs):
        return self.clock.timed("prior", self.inner, (images, *args), kwargs, _hybrid_out)


class TimedAdapted(_Timed):
    """``AdaptedGuidance`` with ``normal_sds`` / ``depth_sds`` timed; ``prepare`` embeds both prompts."""

    def _embed(self) -> None:
        self.inner._prepared("normal")
        self.inner._prepared("depth")

    def normal_sds(self, *args, **kwargs):
        return self.clock.timed("prior", self.inner.normal_sds, args, kwargs, _sds_out)

    def depth_sds(self, *args, **kwargs):
        return self.clock.timed("prior", self.inner.depth_sds, args, kwargs, _sds_out)


class TimedSDEdit(_Timed):
    """``ControlNetSDEdit`` with its edits timed (and counted); ``prepare`` embeds the prompt eagerly."""

    def _embed(self) -> None:
        self.inner._prepared_embeddings()

    def __call__(self, *args, **kwargs):
        self.clock.edits += 1
        return self.clock.timed("prior", self.inner, args, kwargs, lambda out, stamp: out)


class TimedLPIPS:
    def __init__(self, inner, clock: Clock):
        self.inner, self.clock = inner, clock

    def __call__(self, a, b):
        return self.clock.timed("prior", self.inner, (a, b), {}, lambda out, stamp: stamp([out])[0])


def timed_render(fn, clock: Clock):
    """The stage's render function, timed, its outputs' gradients stamped."""
    def outputs(out, stamp):
        keys = list(out)
        return dict(zip(keys, stamp([out[k] for k in keys])))

    def render(*args, **kwargs):
        if len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.long:
            clock.faces = int(args[1].shape[0])  # stage 2: (verts, faces, ...)
        elif len(args) > 1 and hasattr(args[1], "faces"):
            clock.faces = int(args[1].faces.shape[0])  # stages 3 and 4: (field or atlas, surface, ...)
        return clock.timed("render", fn, args, kwargs, outputs)
    return render


@dataclass
class BenchPriors:
    """What the stages read from a ``priors.registry.PriorSet``."""

    device: torch.device = torch.device("cpu")
    hybrid: object = None
    adapted: object = None
    sdedit: object = None
    lpips: object = None


class Recorder:
    """A ``Checkpoint`` writing nothing; each ``step_done`` closes a step on the clock."""

    def __init__(self, clock: Clock, folder: Path):
        self.clock, self.folder = clock, folder

    def resume(self, objects) -> int:
        return 0

    def step_done(self, step, losses, objects) -> None:
        self.clock.step_done(step)

    def check_stop(self) -> None:
        pass


class RSSSampler(threading.Thread):
    """Peak resident set size of this process, sampled every ``period`` seconds while running."""

    def __init__(self, period: float = 0.01):
        super().__init__(daemon=True)
        self.period, self.peak, self.running = period, 0, True

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)


# --- sections -----------------------------------------------------------------------------------

def subject_inputs(canvas: int):
    subject = make_subject(SUBJECT)
    framing = frame_subject(subject, canvas)
    return subject, framing, reference_inputs(subject, framing, canvas)


def stage1_previous(subject, framing):
    """A stage-1 Result made from the subject mesh itself, in the scene frame."""
    verts = torch.tensor(framing.to_scene(subject.vertices), dtype=torch.float32)
    return geometry_init.Result(verts, torch.tensor(subject.faces, dtype=torch.long))


def stage3_previous(mesh, cfg) -> texture_coarse.Result:
    """A stage-3 Result on ``mesh``: an untrained texture field (what stage 4 bakes costs the same)."""
    from stages.render.fields import AlbedoField
    from stages.texturing import Surface

    args = texture_coarse.field_args(cfg, Surface.of(mesh, torch.device("cpu")))
    torch.manual_seed(5)
    field_ = AlbedoField(**args)
    with torch.no_grad():
        colors = field_(mesh.verts)
    return texture_coarse.Result(mesh.verts, mesh.faces, colors, state=field_.state_dict(), args=args)


def run_stage(name: str, run_cfg, args) -> tuple[list[StepRecord], dict]:
    module = MODULES[name]
    cfg = getattr(run_cfg, STAGE[name])
    cfg.steps = args.steps
    clock = Clock(cfg.n_ref)
    info: dict = {}
    t = time.perf_counter()
    subject, framing, inputs = subject_inputs(run_cfg.preprocess.canvas)
    previous = None if name == "init" else stage1_previous(subject, framing)
    if name == "refine":
        previous = stage3_previous(previous, run_cfg.texture_coarse)
    priors = BenchPriors()
    attr = RENDER[name]
    if name in ("init", "coarse"):
        from priors.hybrid import HybridSDS

        priors.hybrid = TimedHybrid(HybridSDS(sd_sds(0, "release", args.tiny), zero123_sds(1, args.tiny)), clock)
    elif name == "refine":
        priors.sdedit = TimedSDEdit(controlnet_sdedit(6, args.tiny), clock)
        priors.lpips = TimedLPIPS(lpips_net(4, args.tiny), clock)
    else:
        from priors.adapted import AdaptedGuidance

        priors.adapted = TimedAdapted(AdaptedGuidance(sd_sds(2, "standard", args.tiny),
                                                      sd_sds(3, "standard", args.tiny)), clock)
        priors.lpips = TimedLPIPS(lpips_net(4, args.tiny), clock)
        band_grid = geometry_sculpt.band_grid

        def counted_band_grid(*a, **k):
            verts, cubes = band_grid(*a, **k)
            info["band"] = (int(cubes.shape[0]), int(verts.shape[0]))
            return verts, cubes
        geometry_sculpt.band_grid = counted_band_grid
    info["build_s"] = time.perf_counter() - t
    to_mesh = geometry_init.to_mesh  # the end-of-stage mesh conversion is not measured: skipped
    geometry_init.to_mesh = lambda *a, **k: (torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3),
                                             {})
    original = getattr(module, attr)
    setattr(module, attr, timed_render(original, clock))
    hook = register_optimizer_step_pre_hook(
        lambda opt, a, k: clock.marks.__setitem__("opt", time.perf_counter()))
    sampler = RSSSampler()
    try:
        torch.manual_seed(0)
        info["rss_before_run"] = RSSSampler.rss()
        t_run = time.perf_counter()
        ckpt = Recorder(clock, Path("/tmp/bench_stages_ckpt"))
        orig_begin = clock.begin

        def begin():  # the steps start: sample memory from here on
            info["rss_at_steps"] = RSSSampler.rss()
            info["maxrss_before_steps"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            info["before_steps_s"] = time.perf_counter() - t_run
            sampler.start()
            orig_begin()
        clock.begin = begin
        try:
            module.run(cfg, inputs, previous, priors, ckpt)
        except RuntimeError as err:  # after the steps: an empty surface of a barely trained field
            if len(clock.records) < cfg.steps:
                raise
            info["end_error"] = str(err)
    finally:
        sampler.running = False
        hook.remove()
        setattr(module, attr, original)
        geometry_init.to_mesh = to_mesh
        if name == "sculpt":
            geometry_sculpt.band_grid = band_grid
    info["rss_peak_steps"] = sampler.peak
    info["setup_s"] = clock.setup
    return clock.records, info


def count_band(run_cfg, samples: int = 4_000_000) -> dict:
    """Tets and vertices of stage 2's band at the preset's tet grid around the subject mesh (in the scene
    frame), as ``Grid.around`` selects them (``band_cubes`` + ``band_grid``), with one change: the distance
    to the surface is the distance to the nearest of ``samples`` points sampled on it (scipy cKDTree), not
    ``MeshSDF`` (about 2 ms per query on this machine, hours for the millions of cube centres at grid 512).
    ``band_cubes`` keeps a cube by |distance| only, so the sign is not needed; the sampled distance exceeds
    the true one by at most the samples' spacing (reported), far below a cell at 512."""
    import numpy as np
    import trimesh
    from scipy.spatial import cKDTree

    from stages.render.dmtet import band_cubes, band_grid

    cfg = run_cfg.geometry_sculpt
    subject, framing, _ = subject_inputs(256)
    prev = stage1_previous(subject, framing)
    mesh = trimesh.Trimesh(prev.verts.double().numpy(), prev.faces.numpy(), process=False)
    pts, _ = trimesh.sample.sample_surface(mesh, samples, seed=0)
    spacing = float(np.sqrt(mesh.area / samples))
    tree = cKDTree(pts)
    t = time.perf_counter()
    coarse = cfg.tet_grid
    while coarse > 16 and coarse % 2 == 0:
        coarse //= 2
    cubes = band_cubes(lambda p: torch.from_numpy(tree.query(p.numpy(), workers=2)[0]), cfg.tet_grid, cfg.bound,
                       cfg.band, coarse)
    verts, corners = band_grid(cubes, cfg.tet_grid, cfg.bound)  # [C, 8]: 6 tets a cube
    return {"tet_grid": cfg.tet_grid, "band": cfg.band, "tets": 6 * int(corners.shape[0]), "verts": int(verts.shape[0]),
            "seconds": time.perf_counter() - t, "full_grid_tets": 6 * cfg.tet_grid ** 3,
            "subject_faces": int(prev.faces.shape[0]), "spacing": spacing, "cell": 2 * cfg.bound / cfg.tet_grid,
            "bytes": verts.numel() * 4 + corners.numel() * 8}


def sizes(name: str, run_cfg) -> str:
    if name == "coarse":
        c = run_cfg.texture_coarse
        return (f"render {c.resolution}^2, hash 2^{c.grid.log2_hashmap_size}, encode {c.encode_resolution}, "
                f"{max(c.multiview_tiles, 1)} view(s) per guidance step")
    if name == "refine":
        c = run_cfg.texture_refine
        return (f"render {c.resolution}^2, texture {c.texture_size}^2, {c.n_views} cached views, "
                f"edit at {c.encode_resolution or c.resolution} with {1000 // c.ddim_stride} DDIM steps")
    if name == "init":
        c = run_cfg.geometry_init
        res = ", ".join(str(r) for r in sorted(set(c.resolutions)))
        return (f"render {c.resolutions[0]}^2 (preset: {res}), {c.samples_per_ray} samples/ray, "
                f"hash 2^{c.grid.log2_hashmap_size}, encode {c.encode_resolution}")
    c = run_cfg.geometry_sculpt
    return (f"render {c.resolution}^2, tet grid {c.tet_grid} (band {c.band:g}), hash 2^{c.grid.log2_hashmap_size}, "
            f"sdf_points {c.sdf_points}, encode {c.encode_resolution}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["init", "sculpt", "coarse", "refine", "tets"], required=True,
                        help="the section to run")
    parser.add_argument("--preset", default="cpu", help="config preset (cpu, release, paper)")
    parser.add_argument("--steps", type=int, default=3, help="stage steps to run (step 0 is the warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as geneman's --set (e.g. geometry_init.samples_per_ray=64)")
    parser.add_argument("--tiny", action="store_true", help="tiny priors (smoke run of this script only)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the cast-to-fp32 notice of each model
    run_cfg = load_config(args.preset, None, [f"{stage}.preview_every=0" for stage in STAGE.values()] + args.set)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"preset {args.preset}, overrides {args.set or 'none'}{', TINY priors' if args.tiny else ''}", flush=True)
    if args.only == "tets":
        b = count_band(run_cfg)
        print(f"stage-2 band at tet grid {b['tet_grid']} (band {b['band']:g} cells of {b['cell']:.4f}) "
              f"around {SUBJECT} "
              f"({b['subject_faces']} faces; distance to surface samples {b['spacing']:.4f} apart): {b['tets']} tets "
              f"({b['tets'] / b['full_grid_tets']:.2%} of the full {b['full_grid_tets']}), {b['verts']} vertices, "
              f"{b['bytes'] / 2**30:.2f} GiB as fp32 positions + int64 cube corner ids; built in {b['seconds']:.1f} s")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        return
    records, info = run_stage(args.only, run_cfg, args)
    stage = STAGE[args.only]
    print(f"{stage}, {sizes(args.only, run_cfg)}; priors built in {info['build_s']:.0f} s, stage setup before the "
          f"first step {info['before_steps_s']:.0f} s (of which prompt / reference embedding {info['setup_s']:.1f} s)")
    if "end_error" in info:
        print(f"after the steps (not measured): {info['end_error']}")
    if "band" in info:
        print(f"band: {info['band'][0]} cubes ({6 * info['band'][0]} tets), {info['band'][1]} vertices")
    gib = 2.0 ** 30
    print(f"memory: RSS {info['rss_before_run'] / gib:.2f} GiB with the priors built, {info['rss_at_steps'] / gib:.2f} "
          f"GiB when the steps start, peak {info['rss_peak_steps'] / gib:.2f} GiB during the steps (10 ms samples); "
          f"ru_maxrss before the steps {info['maxrss_before_steps'] / gib:.2f} GiB, at the end "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib:.2f} GiB")
    print("| step | kind | wall s | rendering s (fwd) | prior networks s (fwd) | rest s | outside priors | faces |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        rest = r.wall - r.render - r.prior
        warm = " (warm-up)" if r.step == 0 else ""
        edit = f" + {r.edits} edit" if r.edits else ""
        print(f"| {r.step} | {r.kind}{edit}{warm} | {r.wall:.2f} | {r.render:.2f} ({r.render_fwd:.2f}) | "
              f"{r.prior:.2f} ({r.prior_fwd:.2f}) | {rest:.2f} | {1 - r.prior / r.wall:.0%} | {r.faces or ''} |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()

"""The demo's figures: its example photo, its avatar against the truth, and the bundled 3D prior against
the same architecture untrained.

    .venv/bin/python benchmarks/bench_demo.py photo                 # examples/demo_person.png (+ its mesh)
    .venv/bin/python benchmarks/bench_demo.py score outputs/demo    # PSNR of a demo run vs the person
    .venv/bin/python benchmarks/bench_demo.py novel-views           # 3D prior: trained vs untrained vs white, source
    .venv/bin/python benchmarks/bench_demo.py estimators            # depth / normal estimators vs constants
    .venv/bin/python benchmarks/bench_demo.py condition             # 3D prior's loss: true vs broken conditions
    .venv/bin/python benchmarks/bench_demo.py vae                   # the bundled VAEs' held-out reconstructions

The demo person is person 5 of ``geneman data synth --seed 200`` (:data:`DEMO_SEED`); the held-out
people of ``novel-views`` are persons 0-4 of seed 300 (:data:`HELDOUT_SEED`); the bundled priors were
trained on seed 100 (``training/bundle.py``), so none of them was seen in training. ``score`` renders
the run's final textured mesh and the person (framed as preprocess frames the photo) on the
evaluation turntable (120 views, unlit albedo on white) with :func:`pipeline.bench.appearance_report`:
PSNR over all views, the front half and the back half. Results are printed as JSON and written
beside the run (``RUN/demo_score.json``) or to ``outputs/bench_demo/novel_views.json`` /
``estimators.json`` / ``condition.json`` / ``vae.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_SEED, DEMO_PERSON = 200, 5
HELDOUT_SEED, HELDOUT_PEOPLE = 300, 5
PHOTO = ROOT / "examples" / "demo_person.png"


def person(seed: int, index: int, folder: Path) -> Path:
    """Person ``index`` of ``geneman data synth --seed seed`` (the generator's own code), as a GLB in ``folder``."""
    from training import synth

    synth.synth(index + 1, folder, seed=seed)
    return folder / f"person_{index:04d}.glb"


def truth_renderer(mesh_path: Path, preset: str = "demo"):
    from evaluation.framing import frame_subject
    from evaluation.meshes import load_mesh
    from evaluation.truth import SubjectRenderer
    from pipeline.config import load_config

    cfg = load_config(preset)
    mesh = load_mesh(mesh_path)
    framing = frame_subject(mesh, cfg.preprocess.canvas, cfg.preprocess.fill)
    return SubjectRenderer(mesh, framing), cfg


def cmd_photo(args) -> dict:
    """Render the demo person from the reference camera at 512 px (RGB over white, as a photo)."""
    from evaluation.truth import to_uint8
    from stages.render.cameras import reference_camera

    with tempfile.TemporaryDirectory() as tmp:
        renderer, cfg = truth_renderer(person(DEMO_SEED, DEMO_PERSON, Path(tmp)))
        c = cfg.geometry_init.camera
        cam = reference_camera(c.ref_elevation, c.ref_azimuth, c.ref_distance, c.ref_fovy)
        rgb = renderer(cam, 512, 512)["rgb"][0]
    PHOTO.parent.mkdir(exist_ok=True)
    Image.fromarray(to_uint8(rgb)).save(PHOTO)
    return {"photo": str(PHOTO.relative_to(ROOT)), "seed": DEMO_SEED, "person": DEMO_PERSON}


def cmd_score(args) -> dict:
    """The run's final avatar against the demo person on the evaluation turntable."""
    from pipeline.bench import appearance_report
    from stages import texture_refine

    run = Path(args.run)
    result = texture_refine.Result.load(run / "04_texture_refine" / "result")
    with tempfile.TemporaryDirectory() as tmp:
        renderer, cfg = truth_renderer(person(DEMO_SEED, DEMO_PERSON, Path(tmp)))
        report = appearance_report(result, renderer, args.size)
    report.pop("per_view")
    report["run"] = str(run)
    (run / "demo_score.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def cmd_novel_views(args) -> dict:
    """The 3D prior's novel views (DDIM 50, CFG 3, from each held-out person's views to the others of
    ``geneman data render --views-3d 4``) scored by :func:`training.novel_views.novel_view_scores`: PSNR over
    the whole image and on the person (the target's silhouette), LPIPS where the ``lpips`` weight is found,
    the mean over sampling seeds 0, 1, 2; bundled weights vs the same architecture with a new UNet and
    projection (same VAE, image encoder and scheduler), beside the all-white answer and the source view
    copied (the floors a useful prior should pass)."""
    from pipeline.config import load_config
    from priors.lpips import LPIPS
    from priors.weights import all_weights, check_one
    from training.datasets import ViewPairs
    from training.novel_views import novel_view_scores
    from training.train import build_3d, write_grid

    torch.set_num_threads(2)
    trained = bundled_3d()
    untrained = build_3d("tiny", 64, seed=0)
    untrained.parts.vae, untrained.parts.image_encoder = trained.parts.vae, trained.parts.image_encoder
    untrained.parts.scheduler = trained.parts.scheduler
    untrained.parts.unet.eval()
    priors_cfg = load_config("demo").priors
    lpips = LPIPS.from_pretrained(priors_cfg) if check_one(priors_cfg, all_weights(priors_cfg)["lpips"]).found else None
    out = ROOT / "outputs" / "bench_demo"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = ViewPairs(heldout_render(Path(tmp), 0, 4), 64)
    source, target, camera = pairs.batch(torch.arange(len(pairs)))
    figures, pictures = {}, []
    for name, prior in (("trained", trained), ("untrained", untrained)):
        report = novel_view_scores(prior, source, target, camera, seeds=(0, 1, 2), lpips=lpips)
        pictures.append(report["views"][:8])
        figures[name] = report["prior"]
    figures["white"], figures["source_copy"] = report["white"], report["source_copy"]
    write_grid([source[:8], *pictures, target[:8]], out / "novel_views.png")
    report = {"pairs": len(pairs), "people": HELDOUT_PEOPLE, "seed": HELDOUT_SEED, "sampler": "DDIM 50, CFG 3",
              "seeds": [0, 1, 2], "lpips": "VGG16 v0.1 at 64 px" if lpips is not None else "not measured (no lpips "
              "weight under the demo preset's weights folder)", **figures, "picture": str(out / "novel_views.png")}
    (out / "novel_views.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def cmd_estimators(args) -> dict:
    """The bundled depth and normal estimators on held-out people (the seed-300 people rendered as the
    bundle's estimator data is, 128 px, 8 views each), through the wrapper preprocess calls, against the
    best constant answer: normals, the mean angle to the truth inside the mask against the held-out set's
    own mean normal everywhere; depth, the RMSE of the wrapper's near-bright [0, 1] map against the truth
    image's, against a flat map (all 0.5)."""
    from pipeline.config import load_config
    from priors.sapiens import load_estimators
    from training import bundle, render, synth
    from training.datasets import MapImages

    torch.set_num_threads(2)
    cfg = load_config("demo").priors
    est = load_estimators(cfg, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        people = Path(tmp) / "people"
        synth.synth(HELDOUT_PEOPLE, people, seed=HELDOUT_SEED)
        rc = render.RenderConfig(size=bundle.MAPS_SIZE, views_2d=8, views_3d=0, crop_ratios=bundle.MAPS_CROPS,
                                 seed=HELDOUT_SEED)
        render.render_dataset(people, Path(tmp) / "data", rc)
        sets = {k: MapImages(Path(tmp) / "data", bundle.MAPS_SIZE, k) for k in ("normal", "depth")}
    report = {"views": len(sets["normal"]), "people": HELDOUT_PEOPLE, "seed": HELDOUT_SEED}

    def angle(a, b):  # mean angle inside the masks, degrees
        return torch.rad2deg(torch.acos((a * b).sum(1).clamp(-1, 1)))[inside].mean()

    def rmse(a):
        return float(((a - truth)[:, 0][inside] ** 2).mean().sqrt())

    with torch.no_grad():
        images, normals, masks = sets["normal"].images, sets["normal"].targets, sets["normal"].mask
        inside = masks[:, 0] > 0.5
        pred = est["normal"](images, masks)
        mean = torch.nn.functional.normalize(normals.permute(1, 0, 2, 3)[:, inside].mean(1), dim=0).view(1, 3, 1, 1)
        report["normal_angle_deg"] = round(float(angle(pred, normals)), 2)
        report["normal_angle_deg_constant"] = round(float(angle(mean.expand_as(normals), normals)), 2)
        truth = 1.0 - sets["depth"].targets  # the depth images: near-bright, min-max in the mask
        depth = est["depth"](images, masks)
        report["depth_rmse"] = round(rmse(depth), 4)
        report["depth_rmse_flat"] = round(rmse(torch.full_like(depth, 0.5)), 4)
    out = ROOT / "outputs" / "bench_demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimators.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def heldout_render(folder: Path, views_2d: int, views_3d: int, size: int = 64) -> Path:
    """The held-out people (persons 0-4 of :data:`HELDOUT_SEED`) rendered as the bundle's data is."""
    from training import render, synth

    people = folder / "people"
    synth.synth(HELDOUT_PEOPLE, people, seed=HELDOUT_SEED)
    render.render_dataset(people, folder / "data", render.RenderConfig(size=size, views_2d=views_2d,
                                                                         views_3d=views_3d, seed=HELDOUT_SEED))
    return folder / "data"


def bundled_3d():
    """The bundled 3D prior in float32 (stored in float16), its networks in eval mode."""
    from priors.prior_3d import Zero123SDS
    from priors.weights import BUNDLED_DIR
    from priors.zero123_parts import Zero123Parts

    parts = Zero123Parts.from_pretrained(BUNDLED_DIR / "tiny" / "geneman" / "prior3d")
    for net in (parts.unet, parts.vae, parts.image_encoder, parts.cc_projection):
        torch.nn.Module.to(net, dtype=torch.float32).eval()
    return Zero123SDS(parts)


def cmd_condition(args) -> dict:
    """Does the bundled 3D prior use its condition? Its epsilon loss on the held-out view pairs (the same
    targets, noise and timesteps for every row, ``--draws`` of them, the target latents the VAE's posterior
    mode so that no encoding noise is in the loss) with the true condition, the cameras shuffled among the
    pairs, another pair's source view, an all-white source, and no condition at all (the unconditional
    branch guidance runs). A prior that reads its source and camera scores the true condition lowest."""
    from priors.latents import to_latents
    from training.datasets import ViewPairs

    torch.set_num_threads(2)
    prior = bundled_3d()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = ViewPairs(heldout_render(Path(tmp), 0, 4), 64)
    source, target, camera = pairs.batch(torch.arange(len(pairs)))
    n, vae, sched = len(source), prior.parts.vae, prior.parts.scheduler
    perm = torch.roll(torch.arange(n), n // 2)  # every pair gets another's camera / source
    variants = {"true": (source, camera, True), "shuffled_cameras": (source, camera[perm], True),
                "other_source": (source[perm], camera, True), "white_source": (torch.ones_like(source), camera, True),
                "no_condition": (source, camera, False)}
    losses = {k: [] for k in variants}
    with torch.no_grad():
        size = prior.native_size
        z = to_latents(vae, vae.encode(torch.nn.functional.interpolate(target, (size, size), mode="area") * 2 - 1)
                       .latent_dist.mode())
        conds = {k: prior.condition(src) for k, (src, _, _) in variants.items()}
        for draw in range(args.draws):
            g = torch.Generator().manual_seed(draw)
            noise = torch.randn(z.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=g)
            noisy = sched.add_noise(z, noise, t)
            for name, (_, cam, keep) in variants.items():
                x, ctx = prior.model_inputs(noisy, *conds[name], cam, torch.full((n,), keep))
                eps = prior.parts.unet(x, t, encoder_hidden_states=ctx).sample
                losses[name].append(float(torch.nn.functional.mse_loss(eps, noise)))
    report = {"pairs": n, "people": HELDOUT_PEOPLE, "seed": HELDOUT_SEED, "draws": args.draws,
              **{k: round(sum(v) / len(v), 5) for k, v in losses.items()},
              "per_draw": {k: [round(x, 5) for x in v] for k, v in losses.items()}}
    out = ROOT / "outputs" / "bench_demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "condition.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def cmd_vae(args) -> dict:
    """The bundled VAEs on the held-out people's captioned renders (64 px, 8 a person): PSNR of the
    reconstruction (the posterior mean decoded) over the whole image and on the person (the render's own
    silhouette), for the 3D prior's VAE (the encoder every prior's latents come from) and the SD base's
    (``tiny/sd``: the same encoder, the decoder stage 4 decodes with), beside the per-channel statistics
    of the latents the priors see (they should be near 0 mean and unit variance)."""
    from diffusers import AutoencoderKL

    from priors.latents import to_latents
    from priors.weights import BUNDLED_DIR
    from training.datasets import CaptionedImages
    from training.novel_views import image_scores

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        images = CaptionedImages(heldout_render(Path(tmp), 8, 0), 64).images
    report = {"images": len(images), "people": HELDOUT_PEOPLE, "seed": HELDOUT_SEED}
    for name, folder in (("prior3d_vae", BUNDLED_DIR / "tiny" / "geneman" / "prior3d" / "vae"),
                         ("sd_vae", BUNDLED_DIR / "tiny" / "sd" / "vae")):
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            posterior = vae.encode(images * 2 - 1).latent_dist
            recon = (vae.decode(posterior.mean).sample * 0.5 + 0.5).clamp(0, 1)
            z = to_latents(vae, posterior.sample(torch.Generator().manual_seed(0)))
        # a close-up crop showing no white has no background to find the person by: left out (PSNR inf)
        scores = {k: [x for x in v if math.isfinite(x)] for k, v in image_scores(recon, images).items() if v}
        report[name] = {"psnr": round(sum(scores["psnr"]) / len(scores["psnr"]), 2),
                        "psnr_person": round(sum(scores["psnr_person"]) / len(scores["psnr_person"]), 2),
                        "latent_mean": [round(float(v), 3) for v in z.mean(dim=(0, 2, 3))],
                        "latent_std": [round(float(v), 3) for v in z.std(dim=(0, 2, 3))],
                        "posterior_std": [round(float(v), 3) for v in posterior.std.mean(dim=(0, 2, 3))]}
    out = ROOT / "outputs" / "bench_demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vae.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("photo")
    score = sub.add_parser("score")
    score.add_argument("run", help="a finished demo run folder")
    score.add_argument("--size", type=int, default=256, help="turntable render side (default: %(default)s)")
    sub.add_parser("novel-views")
    sub.add_parser("estimators")
    condition = sub.add_parser("condition")
    condition.add_argument("--draws", type=int, default=8, help="noise / timestep draws (default: %(default)s)")
    sub.add_parser("vae")
    args = parser.parse_args()
    report = {"photo": cmd_photo, "score": cmd_score, "novel-views": cmd_novel_views,
              "estimators": cmd_estimators, "condition": cmd_condition, "vae": cmd_vae}[args.command](args)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

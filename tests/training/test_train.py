"""``geneman prior train-2d|train-3d``: the loss goes down, a stopped run resumes to the same bytes, two
processes (gloo) train together, the output loads through ``PriorSet`` and guides an SDS step, and bad
data or options get one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.cli.main import main
from pipeline.errors import Interrupted
from pipeline.run.checkpoint import Checkpointer
from pipeline.run.progress import Progress
from pipeline.run.signals import StopSignals
from priors.config import Config
from priors.registry import PriorSet
from training import render, synth
from training.train import TrainConfig, Trainer, step_generator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    people = tmp_path_factory.mktemp("people")
    synth.synth(2, people, seed=1, voxel=0.02)
    out = tmp_path_factory.mktemp("data") / "d"
    render.render_dataset(people, out, render.RenderConfig(size=32, views_2d=6, views_3d=4, seed=2))
    return out


def _train(kind: str, data: Path, out: Path, *extra: str) -> int:
    return main(["prior", f"train-{kind}", str(data), "-o", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, Path]:
    outs = {}
    for kind in ("2d", "3d"):
        outs[kind] = tmp_path_factory.mktemp(f"prior{kind}") / "out"
        assert _train(kind, data, outs[kind], "--steps", "4", "--batch-size", "2", "--save-every", "2") == 0
    return outs


@pytest.mark.parametrize("kind", ["2d", "3d", "vae", "controlnet", "depth", "normal"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(kind, data, trained, tmp_path):
    init = str(trained["2d"]) if kind == "controlnet" else "tiny"
    cfg = TrainConfig(kind, steps=30, batch_size=8, lr=1e-3, save_every=100, init=init, ema_decay=0.0)
    trainer = Trainer(cfg, data, tmp_path / "o")  # the raw weights: the average lags 30 steps behind
    probe = 10 ** 6  # a step number training never reaches: its batch, noise and timesteps are fixed

    def fixed_loss() -> float:
        with torch.no_grad():
            return sum(float(trainer.loss(trainer.model, probe + i)) for i in range(4)) / 4

    before = fixed_loss()
    ckpt = Checkpointer(tmp_path / "ckpt", 30, 100, 1, Progress("t", 30, quiet=True), StopSignals(()))
    summary = trainer.run(ckpt)
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
    assert summary["loss_last_20"] < summary["loss_first_20"]
    assert (tmp_path / "o" / "train.json").is_file() and (tmp_path / "o" / "samples" / "step_00000030.png").is_file()


def test_a_vae_output_is_the_base_of_the_other_trainers(data, trained, tmp_path):
    """train-vae writes a whole SD base whose latent scale makes the data's latents unit-variance;
    train-2d --base and train-3d --base take its frozen parts as they are; a ControlNet output loads
    as the run's ControlNet and steers the 2D prior."""
    from diffusers import AutoencoderKL, ControlNetModel

    vae_out = tmp_path / "vae"
    assert _train("vae", data, vae_out, "--steps", "20", "--batch-size", "8", "--lr", "1e-3") == 0
    assert sorted(p.name for p in vae_out.iterdir() if p.is_dir()) == ["ckpt", "samples", "scheduler",
                                                                       "text_encoder", "tokenizer", "vae"]
    log = json.loads((vae_out / "train.json").read_text())
    vae = AutoencoderKL.from_pretrained(vae_out / "vae")
    assert vae.config.scaling_factor == log["scaling_factor"] != 0.18215
    from training.datasets import CaptionedImages

    images = CaptionedImages(data, 32).images[:16]
    with torch.no_grad():
        z = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert 0.8 < float(z.std()) < 1.25
    ft = tmp_path / "vae_ft"
    assert _train("vae", data, ft, "--steps", "3", "--batch-size", "4", "--init", str(vae_out), "--decoder-only") == 0
    from safetensors.torch import load_file

    before, after = (load_file(str(o / "vae" / "diffusion_pytorch_model.safetensors")) for o in (vae_out, ft))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert AutoencoderKL.from_pretrained(ft / "vae").config.scaling_factor == log["scaling_factor"]
    for kind in ("2d", "3d"):
        out = tmp_path / f"on_base_{kind}"
        assert _train(kind, data, out, "--steps", "1", "--batch-size", "2", "--base", str(vae_out)) == 0
        assert _weights(out)["vae/diffusion_pytorch_model.safetensors"] == _weights(vae_out)[
            "vae/diffusion_pytorch_model.safetensors"]
    cn = tmp_path / "cn"
    assert _train("controlnet", data, cn, "--steps", "2", "--batch-size", "2", "--init", str(trained["2d"])) == 0
    use = json.loads((cn / "train.json").read_text())["use"]
    assert use == f"--set priors.controlnet_normal={cn.resolve()}/controlnet"
    model = ControlNetModel.from_pretrained(cn / "controlnet")
    assert list(model.config.conditioning_embedding_out_channels) == [16, 32]  # downsamples 2, as the tiny VAE
    from priors.sdedit import ControlNetSDEdit

    cfg = Config(normal_aligned=str(trained["2d"]), geneman_repo=str(trained["2d"]), prior_2d_subfolder="unet",
                 controlnet_normal=str(cn / "controlnet"))
    edit = ControlNetSDEdit.from_pretrained(cfg, "cpu")
    out = edit(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), edit.embed("a person"), 0.5, 10, 3.0, 1.0, None,
               torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_step_generator_depends_on_seed_step_and_process():
    draws = {(s, t, r): torch.rand(3, generator=step_generator(s, t, r)).tolist()
             for s in (0, 1) for t in (0, 1) for r in (0, 1)}
    assert len({tuple(v) for v in draws.values()}) == 8
    assert torch.rand(3, generator=step_generator(0, 1, 0)).tolist() == draws[(0, 1, 0)]


class _StopAt(Checkpointer):
    """The run store's checkpointer, with a stop signal arriving during step ``at`` (as SIGTERM would)."""

    def __init__(self, at: int, *args):
        super().__init__(*args)
        self.at = at

    def step_done(self, step, losses, objects):
        if step == self.at:
            self.stop.requested = signal.SIGTERM
        super().step_done(step, losses, objects)


def _weights(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def test_a_stopped_run_resumes_to_the_bytes_of_an_uninterrupted_one(data, tmp_path):
    opts = ["--steps", "6", "--batch-size", "2", "--save-every", "4", "--lr", "1e-3", "--seed", "3"]
    assert _train("3d", data, tmp_path / "straight", *opts) == 0
    cfg = TrainConfig("3d", steps=6, batch_size=2, save_every=4, lr=1e-3, seed=3)
    out = tmp_path / "stopped"
    ckpt = _StopAt(3, out / "ckpt", 6, 4, 2, Progress("t", 6, quiet=True), StopSignals(()))
    with pytest.raises(Interrupted):
        Trainer(cfg, data, out).run(ckpt)
    assert [p.name for p in (out / "ckpt").glob("*.pt")] == ["step_00000003.pt"]
    assert _train("3d", data, out, *opts) == 0  # the command resumes from step 3
    assert _weights(out) == _weights(tmp_path / "straight") and len(_weights(out)) == 4
    logs = [json.loads((o / "train.json").read_text()) for o in (out, tmp_path / "straight")]
    assert logs[0]["loss"] == logs[1]["loss"] and None not in logs[0]["loss"] and logs[0]["resumed_at"] == 3


def test_two_processes_train_together_over_gloo(data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # torchrun's --master_port 0 leaves the workers without a port to meet at
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "pipeline.cli.main", "prior", "train-3d", str(data), "-o", str(tmp_path / "o"),
           "--steps", "3", "--batch-size", "2", "--save-every", "2", "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "o" / "train.json").read_text())
    assert log["processes"] == 2 and all(v is not None for v in log["loss"])
    assert sorted(p.name for p in (tmp_path / "o" / "ckpt").glob("*.pt")) == ["step_00000002.pt", "step_00000003.pt"]
    assert proc.stdout.count("trained the 3d prior") == 1  # the main process reports (and writes) once
    one = tmp_path / "one"
    assert _train("3d", data, one, "--steps", "3", "--batch-size", "2", "--save-every", "2") == 0
    assert _weights(one) != _weights(tmp_path / "o")  # two processes saw twice the rows: other weights


def test_trained_outputs_load_through_priorset_and_guide_an_sds_step(trained):
    cfg = Config(sd15=str(trained["2d"]), geneman_repo=str(trained["2d"]), prior_2d_subfolder="unet",
                 prior_3d_diffusers=str(trained["3d"]))
    priors = PriorSet(cfg, "cpu")
    priors.check(["geometry_init", "texture_coarse"])
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    p3 = priors.prior_3d
    assert p3.native_size == 32
    p3.set_reference(torch.rand(1, 3, 32, 32), 0.0, 0.0, 3.0)
    out3 = p3(image, torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([3.0]), (0.02, 0.98), 3.0)
    p2 = priors.prior_2d
    out2 = p2(image, p2.embed("a person"), (0.02, 0.98), 7.5, encode_size=None)
    (out3.loss + out2.loss).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    log = json.loads((trained["3d"] / "train.json").read_text())
    assert log["use"] == f"--set priors.prior_3d_diffusers={trained['3d'].resolve()}"
    assert log["data_manifest"]["seed"] == 2 and log["command"][:3] == ["geneman", "prior", "train-3d"]


def test_a_trained_estimator_stands_in_for_sapiens(data, tmp_path, capsys):
    """train-depth / train-normal outputs load where Sapiens' TorchScript goes (no trust needed: weights
    only) and give preprocess masked maps of the photo's size; a depth one given as normal is refused."""
    from priors.estimator import WEIGHTS_NAME
    from priors.sapiens import load_estimators
    from priors.weights import verify_code_weights

    outs = {k: tmp_path / k for k in ("depth", "normal")}
    for kind, out in outs.items():
        assert _train(kind, data, out, "--steps", "3", "--batch-size", "2", "--save-every", "2") == 0
        assert json.loads((out / "train.json").read_text())["use"] == (
            f"--set priors.sapiens_{kind}={out.resolve()} --set priors.sapiens_{kind}_file={WEIGHTS_NAME}")
    cfg = Config(sapiens_depth=str(outs["depth"]), sapiens_depth_file=WEIGHTS_NAME,
                 sapiens_normal=str(outs["normal"]), sapiens_normal_file=WEIGHTS_NAME)
    verify_code_weights(cfg, ["preprocess"])
    est = load_estimators(cfg, "cpu")
    image, mask = torch.rand(1, 3, 90, 60), torch.zeros(1, 1, 90, 60)
    mask[..., 20:70, 15:45] = 1
    depth, normal = est["depth"](image, mask), est["normal"](image, mask)
    assert depth.shape == (1, 1, 90, 60) and normal.shape == (1, 3, 90, 60)
    assert depth[mask > 0].min() == 0 and depth[mask > 0].max() == 1 and depth[mask == 0].abs().max() == 0
    assert torch.allclose(normal.norm(dim=1)[mask[:, 0] > 0], torch.ones(())) and normal[:, :, 0].abs().max() == 0
    swapped = replace(cfg, sapiens_normal=str(outs["depth"]))
    with pytest.raises(ValueError, match="1-channel estimator given as priors.sapiens_normal"):
        load_estimators(swapped, "cpu")


def _err(capsys, kind, *argv) -> tuple[int, str]:
    code = main(["prior", f"train-{kind}", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err.strip()


def test_bad_data_and_options_get_one_line_errors(data, trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _err(capsys, "2d", tmp_path / "empty", "-o", tmp_path / "o")
    assert code == 2 and "holds no 2d/metadata.jsonl" in err and "\n" not in err
    code, err = _err(capsys, "3d", tmp_path / "empty", "-o", tmp_path / "o")
    assert code == 2 and "holds no 3d/pairs.jsonl" in err

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "3d" / "views" / "person_0001" / "02.png").write_bytes(b"not a png")
    code, err = _err(capsys, "3d", broken, "-o", tmp_path / "o")
    assert code == 2 and "person_0001/02.png" in err and "cannot read the image" in err
    (broken / "2d" / "metadata.jsonl").write_text('{"file_name": "images/000000.png"}\n')
    code, err = _err(capsys, "2d", broken, "-o", tmp_path / "o")
    assert code == 2 and "metadata.jsonl: line 1 lacks text" in err

    code, err = _err(capsys, "3d", data, "-o", tmp_path / "o", "--general-ratio", "0.3")
    assert code == 2 and "needs a general-data folder" in err
    code, err = _err(capsys, "2d", data, "-o", tmp_path / "o", "--init", tmp_path / "empty")
    assert code == 2 and "--init must be `tiny` or a diffusers folder" in err
    code, err = _err(capsys, "vae", data, "-o", tmp_path / "o", "--decoder-only")
    assert code == 2 and "--decoder-only goes with train-vae --init DIR" in err
    code, err = _err(capsys, "controlnet", data, "-o", tmp_path / "o", "--init", "tiny")
    assert code == 2 and "train-controlnet needs --init PRIOR_2D" in err
    shutil.copyfile(data / "2d" / "metadata.jsonl", broken / "2d" / "metadata.jsonl")
    shutil.rmtree(broken / "normal")
    code, err = _err(capsys, "controlnet", broken, "-o", tmp_path / "o", "--init", trained["2d"])
    assert code == 2 and "holds no normal/ images beside 2d/" in err
    shutil.rmtree(broken / "depth")
    code, err = _err(capsys, "depth", broken, "-o", tmp_path / "o")
    assert code == 2 and "holds no normal/ images beside 2d/" in err
    shutil.copytree(data / "normal", broken / "normal")
    code, err = _err(capsys, "depth", broken, "-o", tmp_path / "o")
    assert code == 2 and "holds no depth/ images beside 2d/" in err
    code, err = _err(capsys, "2d", data, "-o", tmp_path / "o", "--warmup", "1.5")
    assert code == 2 and "warm-up 1.5 and EMA decay 0.9999 must be in [0, 1)" in err
    code, err = _err(capsys, "2d", data, "-o", tmp_path / "o", "--ema-decay", "1")
    assert code == 2 and "EMA decay 1.0 must be in [0, 1)" in err
    code, err = _err(capsys, "2d", data, "-o", tmp_path / "o", "--base", tmp_path / "empty")
    assert code == 2 and "--base must be a diffusers folder with vae, text_encoder" in err
    before = _weights(trained["3d"])
    code, err = _err(capsys, "3d", data, "-o", trained["3d"], "--steps", "5", "--batch-size", "2", "--save-every", "2")
    assert code == 2 and "other options (steps 4 -> 5)" in err and _weights(trained["3d"]) == before
    assert not (tmp_path / "o").exists()


def test_fine_tuning_starts_from_the_given_weights(trained, data, tmp_path):
    """``--init DIR`` loads a trained folder: zero steps of learning rate 0 give its weights back."""
    out = tmp_path / "ft"
    cfg = replace(TrainConfig("3d", steps=1, batch_size=2, save_every=1, lr=1e-30, seed=7), init=str(trained["3d"]))
    Trainer(cfg, data, out).run(Checkpointer(out / "ckpt", 1, 1, 1, Progress("t", 1, quiet=True), StopSignals(())))
    for name in ("vae/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors"):
        assert (out / name).read_bytes() == (trained["3d"] / name).read_bytes()  # frozen parts unchanged


# --- the review's defects (issue 21, "Priors that learn") -------------------------------------------

def _ckpt(folder: Path, steps: int) -> Checkpointer:
    return Checkpointer(folder, steps, 100, 1, Progress("t", steps, quiet=True), StopSignals(()))


def test_the_vae_trainer_stores_a_shift_that_centres_the_latents_the_priors_train_on(data, tmp_path):
    """Latents were scaled, never centred (the bundle's: channel means -0.09 .. 0.80) while every sampler
    starts from N(0, I): train-vae stores the data's per-channel mean, and the priors' encoder applies it."""
    from diffusers import AutoencoderKL

    from priors.prior_2d import StableDiffusionSDS
    from training.datasets import CaptionedImages

    cfg = TrainConfig("vae", steps=1, batch_size=2, lr=1e-30, ema_decay=0.0)
    trainer = Trainer(cfg, data, tmp_path / "o")
    with torch.no_grad():  # move the posterior means far from 0, as training left the bundle's
        trainer.prior.vae.quant_conv.bias[:4] += torch.tensor([1.0, -1.0, 2.0, -2.0])
    trainer.run(_ckpt(tmp_path / "ckpt", 1))
    vae = AutoencoderKL.from_pretrained(tmp_path / "o" / "vae")
    log = json.loads((tmp_path / "o" / "train.json").read_text())
    assert list(vae.config.latents_mean) == log["latents_mean"] and len(log["latents_mean"]) == 4
    prior = StableDiffusionSDS(vae, None, None, trainer.prior.scheduler)
    with torch.no_grad():
        z = prior.encode_images(CaptionedImages(data, 32).images, None, torch.Generator().manual_seed(0))
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05, z.mean(dim=(0, 2, 3))
    assert 0.9 < float(z.std()) < 1.1


def test_the_vae_objective_is_sd_recipe_per_element():
    """The KL term weighs against the reconstruction as in SD's autoencoder (both summed per image, KL weight
    1e-6), not 3 H W times more (a per-image KL sum beside a per-pixel mean collapsed two latent channels)."""
    from training.train import KL_WEIGHT, vae_loss

    g = torch.Generator().manual_seed(0)
    recon, target, kl = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g), \
        torch.tensor([900.0, 1200.0, 1500.0])
    ldm = ((recon - target) ** 2).sum(dim=(1, 2, 3)) + KL_WEIGHT * kl  # LDM: sums per image, mean over images
    assert float(vae_loss(recon, target, kl)) == pytest.approx(float(ldm.mean()) / (3 * 16 * 16), rel=1e-6)


def test_the_tiny_vae_normalises_groups_of_channels_not_each_channel():
    """GroupNorm with as many groups as channels normalises each channel per image alone, and took the
    colour out of the bundle's reconstructions (15.9 dB on the person)."""
    from training.train import base_parts

    vae = base_parts("", 64, 0)["vae"]
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 4 for m in norms), \
        sorted({(m.num_channels, m.num_groups) for m in norms})


def test_a_new_3d_prior_trains_its_image_encoder(data, tmp_path):
    """A frozen untrained tiny CLIP gives every source nearly one embedding (the bundle's 3D prior scored the
    same loss with its condition, without it, with shuffled cameras or a zeroed source): a tiny 3D prior
    trains its image encoder with the UNet and saves it; a fine-tuned one keeps its pretrained encoder
    (test_fine_tuning_starts_from_the_given_weights)."""
    from safetensors.torch import load_file

    cfg = TrainConfig("3d", steps=3, batch_size=4, lr=1e-3, save_every=100, ema_decay=0.0, warmup=0.0)
    trainer = Trainer(cfg, data, tmp_path / "o")
    encoder = trainer.prior.parts.image_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert encoder.training and all(any(p is q for q in trainer.params) for p in encoder.parameters())
    trainer.run(_ckpt(tmp_path / "ckpt", cfg.steps))
    saved = load_file(str(tmp_path / "o" / "image_encoder" / "model.safetensors"))
    changed = [k for k in saved if k in before and not torch.equal(saved[k], before[k])]
    assert len(changed) > len(saved) // 2, changed


def test_warm_up_then_cosine_and_the_weights_saved_are_the_average(data, tmp_path):
    """The learning rate rises over the warm-up and falls to 0 (constant, no warm-up, before); an EMA of the
    weights (diffusers' EMAModel) is kept in the checkpoints and is what the output folder holds."""
    from safetensors.torch import load_file

    from training.train import lr_at

    cfg = TrainConfig("2d", steps=10, batch_size=2, lr=1e-3, save_every=10, warmup=0.3)
    assert [lr_at(s, cfg) for s in (0, 1, 2, 3, 9)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 0.0])
    trainer = Trainer(cfg, data, tmp_path / "o")
    seen = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.run(_ckpt(tmp_path / "ckpt", cfg.steps))
    assert seen == pytest.approx([lr_at(s, cfg) for s in range(10)])
    last = torch.load(tmp_path / "ckpt" / "step_00000010.pt", weights_only=True)["objects"]
    saved = load_file(str(tmp_path / "o" / "unet" / "diffusion_pytorch_model.safetensors"))
    shadow = dict(zip([n for n, p in trainer.prior.unet.named_parameters() if p.requires_grad],
                      last["ema"]["shadow_params"]))
    assert all(torch.equal(saved[k], v) for k, v in shadow.items())
    assert not all(torch.equal(saved[k], last["model"][k]) for k in shadow)


def test_the_trainers_worked_examples():
    import doctest

    import training.train

    result = doctest.testmod(training.train)
    assert result.failed == 0 and result.attempted >= 4

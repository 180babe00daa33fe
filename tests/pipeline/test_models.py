"""The run's networks: weights checked before anything runs, Sapiens feeding preprocess, devices."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli.main import main
from pipeline.errors import ConfigError
from pipeline.run.models import resolve_device


def test_missing_weights_stop_before_the_folder_is_touched(tmp_path, photo, capsys):
    out = tmp_path / "out"
    code = main(["run", str(photo), "-o", str(out), "--preset", "release",
                 "--set", f"priors.weights_dir={tmp_path / 'empty'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "facebook/sapiens-normal-2b-torchscript" in err and "sapiens_2b_normal_render_people_epoch_70" in err
    assert str(tmp_path / "empty") in err and "geneman weights check" in err and "Traceback" not in err
    assert not out.exists()


def test_optional_sapiens_missing_only_warns(tmp_path, photo, capsys):
    out = tmp_path / "out"
    code = main(["run", str(photo), "-o", str(out), "--preset", "cpu", "--set", f"priors.weights_dir={tmp_path}",
                 "--until", "preprocess"])
    err = capsys.readouterr().err
    assert code == 0 and "Sapiens normal estimator missing" in err and "depth: no, normal: no" in err
    assert not (out / "00_preprocess" / "result" / "depth.png").exists()


def test_sapiens_from_the_weights_folder_feeds_preprocess(tmp_path, photo, tiny_weights, capsys):
    folder, prior_3d = tiny_weights
    out = tmp_path / "out"
    code = main(["run", str(photo), "-o", str(out), "--preset", "release",
                 "--set", f"priors.weights_dir={folder}", "--set", f"priors.prior_3d_diffusers={prior_3d}",
                 "--set", "preprocess.canvas=128", "--until", "preprocess", "--trust-weights"])
    assert code == 0, capsys.readouterr().err
    res = out / "00_preprocess" / "result"
    depth = np.asarray(Image.open(res / "depth.png"), np.float32) / 255
    mask = np.asarray(Image.open(res / "mask.png")) > 127
    normal = np.asarray(Image.open(res / "normal.png"), np.float32) / 255 * 2 - 1
    assert depth[~mask].max() == 0 and depth[mask].max() == pytest.approx(1.0, abs=0.01)
    lengths = np.linalg.norm(normal[mask], axis=-1)
    assert np.median(lengths) == pytest.approx(1.0, abs=0.05)
    m = json.loads((out / "run.json").read_text())
    assert m["stages"]["preprocess"]["state"] == "done"


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is visible; use --device cpu"):
            resolve_device("cuda")


def test_weights_check_command(tmp_path, tiny_weights, capsys):
    folder, prior_3d = tiny_weights
    assert main(["weights", "check", "--weights", str(folder), "--set", f"priors.prior_3d_diffusers={prior_3d}"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("11/11 weights found")  # the stages' ten and eval's CLIP
    assert main(["weights", "check", "--weights", str(tmp_path), "--stage", "geometry_sculpt"]) == 2
    out = capsys.readouterr().out
    assert "normal_adapted" in out and "MISSING" in out and "prior_3d" not in out
    assert str(tmp_path / "xanderhuang" / "depth-adapted-sd1.5") in out
    off = ["--set", "geometry_init.lambda_sds_3d=0", "--set", "texture_coarse.lambda_sds_3d=0"]
    assert main(["weights", "check", "--weights", str(tmp_path), *off]) == 2
    out = capsys.readouterr().out
    assert "prior_2d" in out and "prior_3d" not in out and "\n0/10 weights found;" in out
    assert main(["weights", "check", "--weights", str(tmp_path), "--stage", "eval"]) == 2
    out = capsys.readouterr().out
    assert [line.split()[:2] for line in out.splitlines()[1:] if not line.startswith(" ")][:2] == [
        ["clip", "MISSING"], ["lpips", "MISSING"]]
    assert str(tmp_path / "openai" / "clip-vit-large-patch14") in out and "missing file: model.safetensors" in out


def test_profile_command(capsys):
    assert main(["profile", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "in PFLOP" in out
    total = next(line for line in out.splitlines() if line.startswith("| **total**"))
    diffusion = float(total.split("|")[6])
    assert 59 <= diffusion <= 100  # the published 59-100 PFLOP per avatar

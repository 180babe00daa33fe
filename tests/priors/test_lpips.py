"""LPIPS (VGG16): known answers, a written-out reference, the weight files, the converter, the gates."""
import doctest
from types import SimpleNamespace as NS

import pytest
import torch
import torch.nn.functional as F

import priors.lpips as lpips_module
from priors import tiny
from priors.config import Config
from priors.lpips import LPIPS, VGG16Features, convert_lpips_weights
from priors.registry import PriorSet
from priors.weights import MissingWeightError, check, format_report, pull, required_weights

WIDTHS = tiny.LPIPS_WIDTHS
BLOCKS = (2, 2, 3, 3, 3)
"""torchvision's vgg16 cfg "D": 3x3 convs per block; in ``features`` each conv is followed by a
ReLU and each block by a max-pool, so the convs sit at 0, 2, (pool 4), 5, 7, (pool 9), 10, ..."""


def reference_lpips(state, a, b):
    """The lpips package's forward, written out from a state dict with the real key names."""
    def taps(x):
        x = ((2 * x - 1) - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / \
            torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        out, i = [], 0
        for n in BLOCKS:
            for _ in range(n):
                x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
                i += 2
            out.append(x)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
            x, i = F.max_pool2d(x, 2), i + 1
        return out
    total = 0
    for i, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((na - nb) ** 2, state[f"lin{i}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def model():
    return tiny.lpips(0)


def _pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_the_feature_stack_is_torchvisions_vgg16_layout():
    net = VGG16Features()
    convs = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)]
    pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert len(net.features) == 31 and convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert pools == [4, 9, 16, 23, 30] and net.taps == (3, 8, 15, 22, 29)
    assert [net.features[i].out_channels for i in (0, 5, 10, 17, 24)] == [64, 128, 256, 512, 512]
    assert sum(p.numel() for p in net.parameters()) == 14_714_688  # torchvision's vgg16 features
    heads = {k: v.shape for k, v in LPIPS().state_dict().items() if k.startswith("lin")}
    assert heads == {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    with pytest.raises(ValueError, match="5 blocks"):
        VGG16Features((8, 16))


def test_equal_images_are_at_distance_zero_and_the_distance_is_symmetric(model):
    a, b = _pairs()
    assert model(a, a).tolist() == [0.0, 0.0]
    d = model(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(d, model(b, a))


def test_forward_equals_the_written_out_lpips(model):
    a, b = _pairs(1)
    state = {k.removeprefix("vgg."): v for k, v in model.state_dict().items()}
    torch.testing.assert_close(model(a, b), reference_lpips(state, a, b), rtol=0, atol=1e-6)


def test_frozen_but_differentiable_in_its_input(model):
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    a, b = _pairs(2)
    a.requires_grad_(True)
    model(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def _fake_pth(folder, widths=WIDTHS, drop=None):
    """torchvision's and the lpips package's files with their real key names, tiny sizes."""
    g = torch.Generator().manual_seed(3)
    vgg, c_in, i = {}, 3, 0
    for width, n in zip(widths, BLOCKS):
        for _ in range(n):
            vgg[f"features.{i}.weight"] = torch.randn(width, c_in, 3, 3, generator=g) * 0.3
            vgg[f"features.{i}.bias"] = torch.randn(width, generator=g) * 0.1
            c_in, i = width, i + 2
        i += 1  # the max-pool
    vgg["classifier.0.weight"] = torch.randn(7, 5, generator=g)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(widths)}
    for d in (vgg, lin):
        d.pop(drop, None)
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(lin, folder / "vgg.pth")
    return vgg, lin


def test_the_converter_round_trips_the_real_key_names(tmp_path):
    vgg, lin = _fake_pth(tmp_path)
    assert "features.28.weight" in vgg and "lin4.model.1.weight" in lin
    out = tmp_path / "weights" / "lpips"
    paths = convert_lpips_weights(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth", out)
    assert [p.name for p in paths] == ["vgg16.safetensors", "vgg_lin.safetensors"]
    loaded = LPIPS.from_pretrained(Config(weights_dir=str(tmp_path / "weights")))
    assert loaded.vgg.widths == WIDTHS
    state = loaded.state_dict()
    for k, v in vgg.items():
        if k.startswith("features."):
            torch.testing.assert_close(state[f"vgg.{k}"], v, rtol=0, atol=0)
    for k, v in lin.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    from safetensors.torch import load_file
    assert "classifier.0.weight" not in load_file(str(paths[0]))
    a, b = _pairs(4)
    torch.testing.assert_close(loaded(a, b), reference_lpips({**vgg, **lin}, a, b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("drop", ["features.12.bias", "lin3.model.1.weight"])
def test_the_converter_names_a_missing_key_and_its_file(tmp_path, drop):
    _fake_pth(tmp_path, drop=drop)
    with pytest.raises(ValueError, match=f"{'vgg16-397923af' if 'features' in drop else 'vgg'}.pth: no key {drop}"):
        convert_lpips_weights(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_weights_name_the_id_the_file_and_how_to_make_them(tmp_path):
    with pytest.raises(MissingWeightError) as err:
        LPIPS.from_pretrained(Config(weights_dir=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and "id 'lpips'" in msg and "vgg16.safetensors" in msg and "vgg_lin.safetensors" in msg
    assert f"expected in {tmp_path / 'lpips'}" in msg and "convert_lpips_weights" in msg
    (tmp_path / "lpips").mkdir()
    LPIPS(WIDTHS).save_pretrained(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "vgg_lin.safetensors").rename(tmp_path / "lpips" / "vgg_lin.safetensors")
    with pytest.raises(MissingWeightError, match=r"file\(s\) vgg16.safetensors, expected"):
        LPIPS.from_pretrained(Config(weights_dir=str(tmp_path)))
    # an absolute folder named by priors.lpips is used as it is
    (tmp_path / "lpips" / "vgg_lin.safetensors").rename(tmp_path / "elsewhere" / "vgg_lin.safetensors")
    assert LPIPS.from_pretrained(Config(lpips=str(tmp_path / "elsewhere"))).vgg.widths == WIDTHS


def test_pull_says_how_to_make_it_instead_of_downloading(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked for the lpips weight")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    run = NS(geometry_sculpt=NS(lambda_sds_normal=0.0, lambda_sds_depth=0.0, lambda_normal_lpips=100.0))
    (line,) = pull(Config(weights_dir=str(tmp_path)), ["geometry_sculpt"], run)
    assert line.startswith("lpips: not on the Hugging Face Hub; make it from") and "convert_lpips_weights" in line


def _run(normal_lpips, lpips):
    ramp = NS(start=lpips[0], end=lpips[1])
    return NS(geometry_sculpt=NS(lambda_sds_normal=1.0, lambda_sds_depth=1.0, lambda_normal_lpips=normal_lpips),
              texture_refine=NS(lambda_lpips=ramp))


def test_weights_check_leaves_lpips_out_when_its_losses_weigh_zero(tmp_path):
    cfg, stages = Config(weights_dir=str(tmp_path)), ["geometry_sculpt", "texture_refine"]
    assert [s.key for s in required_weights(cfg, ["geometry_sculpt"])] == ["normal_adapted", "depth_adapted", "lpips"]
    assert "lpips" not in [s.key for s in required_weights(cfg, ["texture_refine"])]  # optional there
    report = format_report(check(cfg, stages, _run(0.0, (0.0, 0.0))))
    assert "lpips" not in report and report.splitlines()[-1].startswith("0/5 weights found")
    rows = check(cfg, stages, _run(100.0, (0.0, 0.0)))
    lpips_rows = [r for r in rows if r.spec.key == "lpips"]
    assert len(lpips_rows) == 1 and not lpips_rows[0].found
    ramp_up = NS(geometry_sculpt=NS(lambda_sds_normal=1.0, lambda_sds_depth=1.0,
                                    lambda_normal_lpips=NS(start=0.0, end=100.0)))
    assert "lpips" in [s.key for s in required_weights(cfg, ["geometry_sculpt"], ramp_up)]  # a ramp up needs it
    # stage 4 weighting LPIPS does not make it required: the stage runs without it (said once)
    assert "lpips" not in [r.spec.key for r in check(cfg, stages, _run(0.0, (0.0, 100.0)))]
    assert "lpips" not in [s.key for s in required_weights(cfg, ["texture_refine"], _run(100.0, (0.0, 0.0)))]


def test_prior_set_lpips_from_a_tiny_weights_folder(tmp_path):
    cfg = tiny.write_weights(tmp_path)
    priors = PriorSet(cfg, "cpu")
    assert "lpips" not in priors.loaded()
    a, b = _pairs(5)
    d = priors.lpips(a, b)
    assert priors.lpips is priors.lpips and priors.loaded() == ["lpips"]
    torch.testing.assert_close(d, tiny.lpips(0)(a, b), rtol=0, atol=0)
    assert priors.lpips.vgg.widths == tiny.LPIPS_WIDTHS and (d > 0).all()


def test_docstring_examples():
    result = doctest.testmod(lpips_module)
    assert result.failed == 0 and result.attempted > 0

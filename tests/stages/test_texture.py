"""The texture stages with tiny priors on CPU: every weighted loss is computed, the reference loss falls,
results reload, xatlas trouble and missing LPIPS weights are said once and the stage goes on; the
oracle's edits make stage 4 fit the truth."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch
import trimesh

from evaluation.framing import frame_subject
from evaluation.metrics import psnr
from evaluation.oracle import OraclePriors
from evaluation.subjects import make_subject
from evaluation.truth import SubjectRenderer
from priors import tiny
from priors.registry import PriorSet
from priors.weights import MissingWeightError
from stages import texture_coarse, texture_refine
from stages.render import uv as uv_module
from stages.render.cameras import turntable
from stages.render.fields import AlbedoField
from stages.texturing import erode
from tests.stages.geometry_helpers import RecordingCheckpoint, subject_inputs, tiny_config, walk_preset_losses

STAGES = {"texture_coarse": texture_coarse, "texture_refine": texture_refine}
CANVAS = 64


@dataclass
class Mesh:
    """A stage-2 result as the texture stages read it."""

    verts: torch.Tensor
    faces: torch.Tensor


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    return PriorSet(tiny.write_weights(tmp_path_factory.mktemp("weights")), "cpu")


@pytest.fixture(scope="module")
def subject():
    """The truth's renderer, and a coarse stand-in for the stage-2 mesh: the framed subject voxelised
    (a few thousand faces, so that xatlas takes a second, not a minute)."""
    mesh = make_subject("front_back")
    framing = frame_subject(mesh, CANVAS)
    renderer = SubjectRenderer(mesh, framing)
    grid = trimesh.Trimesh(renderer.verts.numpy(), renderer.faces.numpy(), process=False).voxelized(0.015).fill()
    coarse = grid.marching_cubes
    coarse.apply_transform(grid.transform)
    if coarse.volume < 0:
        coarse.invert()
    return renderer, Mesh(torch.as_tensor(coarse.vertices, dtype=torch.float32), torch.as_tensor(coarse.faces))


@pytest.fixture(scope="module")
def inputs():
    return subject_inputs("front_back", CANVAS)


def coarse_result(mesh: Mesh) -> texture_coarse.Result:
    """A stage-3 result with an untrained texture field over ``mesh``."""
    args = {"radius": float(mesh.verts.abs().max()) * 1.05, "n_levels": 4, "log2_hashmap_size": 10, "n_neurons": 16}
    field = AlbedoField(**args)
    return texture_coarse.Result(mesh.verts, mesh.faces, state=field.state_dict(), args=args)


def previous_for(stage: str, mesh: Mesh):
    return mesh if stage == "texture_coarse" else coarse_result(mesh)


def test_erode_shrinks_the_mask_by_whole_pixels():
    m = torch.zeros(1, 9, 9, 1)
    m[0, 2:7, 2:7] = 1
    assert erode(m, 1)[0, ..., 0].sum() == 9 and erode(m, 2)[0, ..., 0].sum() == 1 and erode(m, 3).sum() == 0


@pytest.mark.parametrize("preset", ["paper", "release", "cpu"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_every_loss_weighted_in_a_preset_is_computed(preset, stage, priors, subject, inputs, tmp_path):
    walk_preset_losses(STAGES[stage], stage, preset, inputs, previous_for(stage, subject[1]), priors, tmp_path)


@pytest.mark.parametrize("stage", list(STAGES))
def test_reference_loss_falls_and_the_result_reloads(stage, priors, subject, inputs, tmp_path):
    cfg = getattr(tiny_config("cpu", [f"{stage}.steps=24", f"{stage}.n_ref=1"]), stage)
    ckpt = RecordingCheckpoint(tmp_path / "ckpt")
    result = STAGES[stage].run(cfg, inputs, previous_for(stage, subject[1]), priors, ckpt)
    rgb = [losses["rgb"] for losses in ckpt.losses]
    assert rgb[-1] < 0.9 * rgb[0], rgb
    folder = tmp_path / "result"
    folder.mkdir()
    result.save(folder)
    again = STAGES[stage].Result.load(folder)
    for name in ("verts", "faces", "texture", "uvs", "uv_faces", "vmapping", "colors"):
        if hasattr(result, name) and getattr(result, name) is not None:
            assert torch.equal(getattr(again, name), getattr(result, name)), name
    if stage == "texture_coarse":
        points = subject[1].verts[:50]
        assert torch.equal(again.albedo_field()(points), result.albedo_field()(points))


def test_xatlas_trouble_and_missing_lpips_are_said_once_and_the_stage_goes_on(priors, subject, inputs, tmp_path,
                                                                               monkeypatch, caplog):
    monkeypatch.setattr(uv_module, "_XATLAS_SCRIPT", "import os; os.abort()")

    class NoLPIPS:
        device = torch.device("cpu")
        sdedit = priors.sdedit

        @property
        def lpips(self):
            raise MissingWeightError("lpips: vgg16.safetensors not in /nowhere/lpips")

    cfg = tiny_config("cpu", ["texture_refine.steps=4"]).texture_refine
    ckpt = RecordingCheckpoint(tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="geneman"):
        result = texture_refine.run(cfg, inputs, coarse_result(subject[1]), NoLPIPS(), ckpt)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("fallback atlas" in m and "crashed" in m for m in lines) == 1, lines
    assert sum("LPIPS weights not found" in m for m in lines) == 1, lines
    assert all("lpips" not in losses for losses in ckpt.losses) and any("l1" in losses for losses in ckpt.losses)
    assert result.uv_faces.shape[0] == subject[1].faces.shape[0]


def test_stage_4_with_the_oracle_fits_the_truth(subject, inputs, tmp_path):
    """The oracle's edits are the truth's renders: stage 4 moves the avatar towards the truth on the
    turntable, well past the untrained stage-3 field it starts from."""
    renderer, mesh = subject
    oracle = OraclePriors(renderer)
    cfg = tiny_config("cpu", ["texture_refine.steps=60", "texture_refine.n_views=8", "texture_refine.resolution=64",
                              "texture_refine.texture_size=128", "texture_refine.lambda_lpips=0",
                              "texture_refine.optim.lr=0.05"]).texture_refine
    result = texture_refine.run(cfg, inputs, coarse_result(mesh), oracle, RecordingCheckpoint(tmp_path / "ckpt"))
    cams = turntable(8)
    truth = renderer(cams, 64, 64)["rgb"]
    fitted = psnr(result.render(cams, 64, 64)["rgb"], truth)
    start = texture_refine.Atlas(result.vmapping, result.uvs, result.uv_faces,
                                 texture_refine.bake(coarse_result(mesh), result.verts, result.vmapping, result.uvs,
                                                     result.uv_faces, cfg))
    baked = psnr(texture_refine.Result(result.verts, result.vmapping, result.uvs, result.uv_faces,
                                       start.texture.detach()).render(cams, 64, 64)["rgb"], truth)
    assert oracle.sdedit.calls == 8  # each ring view edited once in 60 steps (n_views * edit_every > 60)
    # the coarse voxel mesh is not the truth's surface (a pixel's worth of error at its silhouettes), which
    # bounds what any texture can reach here; the fit must still move well past the untrained start
    assert fitted > baked + 2 and fitted > 19, (fitted, baked)

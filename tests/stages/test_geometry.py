"""The geometry stages with tiny priors on CPU: every weighted loss is computed, the reference loss
falls, results reload; the loop helpers' contract."""
from __future__ import annotations

import pytest
import torch

from priors import tiny
from priors.registry import PriorSet
from stages import geometry_init, geometry_sculpt
from stages.loop import weighted_sum
from tests.stages.geometry_helpers import RecordingCheckpoint, subject_inputs, tiny_config, walk_preset_losses

STAGES = {"geometry_init": geometry_init, "geometry_sculpt": geometry_sculpt}


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    cfg = tiny.write_weights(tmp_path_factory.mktemp("weights"))
    return PriorSet(cfg, "cpu")


@pytest.fixture(scope="module")
def inputs():
    return subject_inputs()


@pytest.fixture(scope="module")
def stage1(priors, inputs, tmp_path_factory):
    cfg = tiny_config("cpu", ["geometry_init.steps=8"]).geometry_init
    return geometry_init.run(cfg, inputs, None, priors, RecordingCheckpoint(tmp_path_factory.mktemp("s1") / "ckpt"))


def test_weighted_sum_fails_on_a_loss_without_weight():
    with pytest.raises(KeyError, match="rgbx"):
        weighted_sum({"rgb": torch.ones(()), "rgbx": torch.ones(())}, {"rgb": 1.0})
    assert float(weighted_sum({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": 0.5, "b": 2.0, "c": 9.0})) == 7.0


@pytest.mark.parametrize("preset", ["paper", "release", "cpu"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_every_loss_weighted_in_a_preset_is_computed(preset, stage, priors, inputs, stage1, tmp_path):
    """Steps at the start and at the end of the schedule (where late ramps are on) together compute every
    loss whose weight is non-zero at some step (every geometry preset has such a ramp, so both windows run)."""
    walk_preset_losses(STAGES[stage], stage, preset, inputs, stage1, priors, tmp_path)


@pytest.mark.parametrize("stage", list(STAGES))
def test_reference_loss_falls(stage, priors, inputs, stage1, tmp_path):
    key = {"geometry_init": "rgb", "geometry_sculpt": "normal"}[stage]  # the largest reference loss of each
    steps = 24
    run_cfg = tiny_config("cpu", [f"{stage}.n_ref=1", f"{stage}.steps={steps}", f"{stage}.optim.lr=0.005",
                                  f"{stage}.optim.lr_other=0.005"])
    ckpt = RecordingCheckpoint(tmp_path / "ckpt")
    STAGES[stage].run(getattr(run_cfg, stage), inputs, stage1, priors, ckpt)
    first, last = ckpt.losses[0][key], ckpt.losses[-1][key]
    assert last < 0.7 * first, (first, last)


def test_results_reload_exactly(stage1, priors, inputs, tmp_path):
    stage1.save(tmp_path)
    back = geometry_init.Result.load(tmp_path)
    assert torch.equal(back.verts, stage1.verts) and torch.equal(back.faces, stage1.faces)
    assert torch.equal(back.colors, stage1.colors)
    assert back.state.keys() == stage1.state.keys()
    assert all(torch.equal(back.state[k], v) for k, v in stage1.state.items())
    cfg = tiny_config("cpu", ["geometry_sculpt.steps=2"]).geometry_sculpt
    r2 = geometry_sculpt.run(cfg, inputs, back, priors, RecordingCheckpoint(tmp_path / "s2" / "ckpt"))
    (tmp_path / "r2").mkdir()
    r2.save(tmp_path / "r2")
    again = geometry_sculpt.Result.load(tmp_path / "r2")
    assert torch.equal(again.verts, r2.verts) and torch.equal(again.faces, r2.faces)
    assert (tmp_path / "r2" / "mesh.ply").is_file()


def test_the_band_holds_every_cube_the_surface_crosses():
    """The band found coarse to fine from the approximate (KD-tree) distance keeps every cube of the full
    grid whose corners change sign, and is a small part of the grid (memory grows with the surface)."""
    from stages.render.dmtet import band_cubes, grid_vertices
    from stages.render.marching_cubes import field_to_mesh
    from stages.render.mesh_sdf import MeshSDF

    def ellipsoid(p):
        return 0.45 - (p * torch.tensor([1.0, 1.6, 0.8])).norm(dim=-1)

    verts, faces = field_to_mesh(ellipsoid, 128, 0.0)  # within about 1/128 of the analytic surface
    target, res = MeshSDF(verts, faces), 64
    cubes = band_cubes(target.unsigned, res, 1.0, 1.0 + target.spacing() / (2 / res), 8)
    inside = (ellipsoid(grid_vertices(res)) > 0).reshape(res + 1, res + 1, res + 1)
    corners = torch.stack([inside[i:i + res, j:j + res, k:k + res] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    crossed = {tuple(c) for c in (corners.any(0) & ~corners.all(0)).nonzero().tolist()}
    kept = {tuple(c) for c in cubes.tolist()}
    assert crossed and crossed <= kept and len(kept) < res**3 / 8, (len(crossed - kept), len(kept))


def test_the_mesh_level_is_the_candidate_whose_reference_silhouette_fits_the_photo_mask():
    """A density falling off from the centre: each level is a sphere of its own radius; the photo's mask is
    the disc of the level-4 sphere seen from the reference camera, so of 1, 4 and 8 the search takes 4
    (and without candidates the fixed level stays)."""
    from stages.render.cameras import reference_camera
    from stages.render.marching_cubes import evaluate_grid, marching_cubes

    values = evaluate_grid(lambda p: 10.0 * (1.0 - p.norm(dim=-1)), 64)  # level L: radius 1 - L / 10
    cam = reference_camera(distance=3.0, fovy=40.0)
    cfg = geometry_init.Config(radius=1.0, mesh_level=8.0, mesh_level_search=[1.0, 4.0, 8.0])
    mask = geometry_init.render_mesh(*marching_cubes(values, 4.0), cam, 64, 64)["mask"][0, ..., 0]
    level, verts, faces, ious = geometry_init.choose_level(values, cfg, mask, cam)
    assert level == 4.0 and ious["4"] > 0.99 > max(ious["1"], ious["8"]), ious
    assert all(torch.equal(a, b) for a, b in zip((verts, faces), marching_cubes(values, 4.0)))
    level, verts, faces, ious = geometry_init.choose_level(values, geometry_init.Config(mesh_level=8.0), mask, cam)
    assert (level, ious) == (8.0, {}) and all(torch.equal(a, b) for a, b in zip((verts, faces),
                                                                                 marching_cubes(values, 8.0)))


def test_stage1_records_its_mesh_level_search(priors, inputs, tmp_path):
    cfg = tiny_config("cpu", ["geometry_init.steps=2", "geometry_init.mesh_level_search=[0.5,1.0]"]).geometry_init
    result = geometry_init.run(cfg, inputs, None, priors, RecordingCheckpoint(tmp_path / "ckpt"))
    chosen = result.args["mesh_level"]
    assert chosen["level"] in (0.5, 1.0) and set(chosen["iou"]) == {"0.5", "1"}
    assert chosen["iou"][f"{chosen['level']:g}"] == max(chosen["iou"].values())


def test_a_stop_signal_during_stage2s_sdf_fit_stops_it_at_once(priors, inputs, stage1, tmp_path):
    """A stop that has arrived while the fit runs (SIGINT waited ~85 s for a 1000-step fit to end): the fit's
    next step raises ``Interrupted``, nothing is saved (a resume fits again from the start). Without the
    check the fit ran to its end and the stop came at step 1, after a checkpoint."""
    import signal

    from pipeline.errors import Interrupted
    from pipeline.run.checkpoint import Checkpointer
    from pipeline.run.progress import Progress
    from pipeline.run.signals import StopSignals

    cfg = tiny_config("cpu", ["geometry_sculpt.steps=4", "geometry_sculpt.init_steps=200"]).geometry_sculpt
    stop = StopSignals(())
    stop.requested = signal.SIGINT
    ckpt = Checkpointer(tmp_path / "ckpt", cfg.steps, 1, 2, Progress("geometry_sculpt", cfg.steps, quiet=True), stop)
    with pytest.raises(Interrupted, match="before step 1/4"):
        geometry_sculpt.run(cfg, inputs, stage1, priors, ckpt)
    assert not list((tmp_path / "ckpt").glob("step_*"))


def test_the_initial_blob_is_thinner_along_the_photos_axis_by_density_blob_depth():
    """``density_blob_depth`` 0.5: the blob's bias reaches zero at half the radius along the axis to the
    reference camera and is unchanged across it; 1 (every release preset) is Magic3D's sphere, the same
    numbers as before the option."""
    sphere = tiny_config("cpu").geometry_init
    thin = tiny_config("cpu", ["geometry_init.density_blob_depth=0.5", "geometry_init.camera.ref_azimuth=90"]
                       ).geometry_init
    axis = geometry_init.blob_axis(thin)
    across = torch.linalg.cross(axis, torch.tensor([0.0, 0.0, 1.0]))
    r = sphere.density_blob_std
    f_sphere, f_thin = geometry_init.build_field(sphere), geometry_init.build_field(thin)
    f_thin.load_state_dict(f_sphere.state_dict())  # the same network: only the blob differs
    points = torch.stack([axis * r / 2, across * r / 2, torch.zeros(3)])
    raw_sphere, raw_thin = f_sphere._raw(points)[:, 0], f_thin._raw(points)[:, 0]
    bias = sphere.density_blob_scale
    torch.testing.assert_close(raw_sphere - raw_thin, torch.tensor([bias / 2, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert f_sphere.blob_axis is None and "density_blob_axis" not in geometry_init.field_args(sphere)
    assert abs(float(axis[1]) - 1.0) < 1e-6  # azimuth 90: the camera on +y

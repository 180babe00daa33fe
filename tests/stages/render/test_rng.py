"""Random numbers on the device that uses them: the render helper keeps the CPU numbers bitwise, the
samplers that use it draw what they drew before, and no source in stages/ or priors/ draws on one
device and copies to another in one expression (``torch.rand(...).to(device)``)."""
import logging
import re
from pathlib import Path

import pytest
import torch

from stages.render import cameras, rng
from stages.render.occupancy import OccupancyGrid
from stages.render.volume import stratified_samples

ROOT = Path(__file__).resolve().parents[3]
_BALANCED = r"(?:[^()]|\((?:[^()]|\([^()]*\))*\))*"
DRAW_THEN_COPY = re.compile(
    rf"\b(?:torch\.)?(?:rand|randn|randint|randperm)\w*\({_BALANCED}\)(?:[^()\n]*\))?\s*\.to\(")
"""A random draw (``torch.rand*`` / ``randn*`` / ``randint`` / ``randperm``, ``randn_tensor``...)
whose result, or the parenthesised expression around it, goes straight to ``.to(``."""


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rand_on_cpu_is_bitwise_torch_rand():
    for shape, dtype in (((4, 5), None), ((3,), torch.float64), ((2, 3, 4), torch.float32)):
        old = torch.rand(shape, generator=seeded(7), dtype=dtype).to("cpu")
        new = rng.rand(shape, seeded(7), "cpu", dtype)
        assert torch.equal(new, old) and new.dtype == old.dtype and new.device.type == "cpu"
    assert not torch.equal(rng.rand((4,), seeded(1)), rng.rand((4,), seeded(2)))


def test_generator_on_another_device_draws_there_and_logs_once(caplog):
    """A CPU generator asked for a tensor elsewhere (the meta device stands in for CUDA here) draws
    on the CPU, so a run's numbers do not depend on the device, and says so once per device pair."""
    rng._logged.discard(("cpu", "meta"))
    with caplog.at_level(logging.DEBUG, logger="stages.render.rng"):
        assert rng.draw_device(seeded(), "meta").type == "cpu"
        out = rng.rand((2, 3), seeded(), "meta")
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert sum("drawing on cpu" in r.getMessage() for r in caplog.records) == 1
    assert rng.draw_device(None, "meta").type == "meta"
    assert rng.rand((2,), None, "meta").device.type == "meta"


def test_stratified_samples_draw_the_old_numbers():
    near, far = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.5, 3.0, 2.5])
    starts, ends = stratified_samples(near, far, 8, generator=seeded(3))
    # the code before the helper, written out
    edges = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 9)
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    lo, hi = torch.cat([edges[:, :1], mids], 1), torch.cat([mids, edges[:, -1:]], 1)
    old = lo + (hi - lo) * torch.rand(edges.shape, generator=seeded(3)).to(near.device)
    assert torch.equal(starts, old[:, :-1]) and torch.equal(ends, old[:, 1:])


def test_occupancy_update_draws_the_old_jitter():
    grid = OccupancyGrid(resolution=4, radius=1.0)
    seen = []
    grid.update(lambda p: seen.append(p) or p.norm(dim=-1), generator=seeded(5))
    centres = grid.cell_centres()
    old = centres + (torch.rand(centres.shape, generator=seeded(5)) - 0.5).to(centres.device) * (2 / 4)
    assert torch.equal(torch.cat(seen), old)


def test_camera_samplers_draw_the_old_numbers():
    cams = cameras.sample_orbit(6, generator=seeded(11))
    g = seeded(11)
    elevation = -10.0 + 55.0 * torch.rand(6, generator=g)
    azimuth = -180.0 + 360.0 * torch.rand(6, generator=g)
    assert torch.equal(cams.elevation, elevation) and torch.equal(cams.azimuth, azimuth)
    centres = torch.tensor([[0.0, 0, 0], [0, 0.8, 0], [0, 0.4, 0], [0, -0.4, 0]])
    _, part = cameras.sample_part_cameras(16, centres, generator=seeded(2))
    old = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.1]) / 1.0, 16, replacement=True, generator=seeded(2))
    assert torch.equal(part, old)


@pytest.mark.parametrize("bad", [
    "noise = torch.randn(latents.shape, generator=generator).to(latents.device)",
    "edges = lo + (hi - lo) * torch.rand(edges.shape, generator=generator).to(near.device)",
    "jitter = (torch.rand(centres.shape, generator=generator) - 0.5).to(centres.device) * cell",
    "eps = torch.randn((groups, *shape), generator=generator).to(device)",
    "t = torch.randint(lo, hi + 1, (batch,),\n                  generator=g, dtype=torch.long).to(device)",
    "x = torch.rand_like(y) .to(z)",
])
def test_the_pattern_catches_a_draw_then_copy(bad):
    assert DRAW_THEN_COPY.search(bad), bad


@pytest.mark.parametrize("good", [
    "noise = randn_tensor(latents.shape, generator, latents.device)",
    "edges = lo + (hi - lo) * rng.rand(edges.shape, generator, near.device)",
    "x = torch.rand(3, device=d) * y.to(d)",
    "t = torch.randint(0, 9, (2,), generator=g, device=where)\nreturn t.to(device)",
    "brand(x).to(y)",
])
def test_the_pattern_passes_draws_on_the_device(good):
    assert not DRAW_THEN_COPY.search(good), good


def test_no_source_draws_on_one_device_and_copies():
    sources = sorted((ROOT / "stages").rglob("*.py")) + sorted((ROOT / "priors").rglob("*.py"))
    assert len(sources) > 30 and ROOT / "stages" / "render" / "volume.py" in sources
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in sources
                 for m in DRAW_THEN_COPY.finditer(p.read_text())]
    assert offenders == [], "draw on the device that uses the numbers (stages.render.rng / randn_tensor)"


@pytest.mark.requires_cuda
def test_on_cuda_a_cuda_generator_draws_there_and_a_cpu_one_keeps_its_numbers():
    near, far = torch.full((64,), 1.0, device="cuda"), torch.full((64,), 2.0, device="cuda")
    g = torch.Generator("cuda").manual_seed(0)
    starts, _ = stratified_samples(near, far, 16, generator=g)
    assert starts.device.type == "cuda" and rng.draw_device(g, "cuda").type == "cuda"
    again, _ = stratified_samples(near, far, 16, generator=torch.Generator("cuda").manual_seed(0))
    assert torch.equal(starts, again)
    on_cpu, _ = stratified_samples(near.cpu(), far.cpu(), 16, generator=seeded(0))
    from_cpu_gen, _ = stratified_samples(near, far, 16, generator=seeded(0))
    assert from_cpu_gen.device.type == "cuda"
    torch.testing.assert_close(from_cpu_gen.cpu(), on_cpu)  # the same draws; kernels may round differently
    cams = cameras.sample_orbit(4, generator=torch.Generator("cuda").manual_seed(1))
    assert cams.c2w.device.type == "cpu"

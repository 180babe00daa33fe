"""render_albedo with its shading functions: vertex colours and a UV texture give the same unlit image."""
import torch

from stages.render.antialias import build_topology
from stages.render.cameras import turntable
from stages.render.texture_render import render_albedo, texture_shade, vertex_shade
from stages.render.uv import fallback_uv

from .helpers import icosphere


def test_vertex_colours_and_a_texture_of_the_same_colour_render_alike():
    verts, faces = icosphere(2, 0.4)
    cams, colour = turntable(4), torch.tensor([0.2, 0.5, 0.7])
    topo = build_topology(faces)
    by_vertex = render_albedo(verts, faces, cams, 32, 32, vertex_shade(colour.expand(len(verts), 3), faces), topo)
    uv = fallback_uv(verts, faces)
    by_texture = render_albedo(verts, uv.vmapping[uv.faces], cams, 32, 32,
                               texture_shade(colour.expand(8, 8, 3), uv.uvs, uv.faces), topo)
    torch.testing.assert_close(by_vertex["rgb"], by_texture["rgb"], atol=1e-5, rtol=0)
    inside = by_vertex["mask"][..., 0] > 0.999
    assert 0.1 < inside.float().mean() < 0.9
    torch.testing.assert_close(by_vertex["rgb"][inside], colour.expand(int(inside.sum()), 3), atol=1e-5, rtol=0)
    assert (by_vertex["rgb"][by_vertex["mask"][..., 0] == 0] == 1).all()  # white where nothing is covered

"""Differentiable rendering: cameras, hash grid, volume rendering, rasteriser, marching tets/cubes, UV, export."""

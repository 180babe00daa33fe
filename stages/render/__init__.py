"""Differentiable rendering: cameras, hash grid, volume rendering, rasteriser, marching tets/cubes, UV, export.

Everything is device-agnostic PyTorch; tiny-cuda-nn (hash grid) and nvdiffrast (rasteriser,
interpolation, antialiasing) are used instead where importable and the tensors are on CUDA.

Modules, by role:
- ``cameras``: intrinsics from fovy, look-at, orbit / turntable / part-aware sampling, pixel rays.
- ``hashgrid``: multi-resolution hash encoding (tiny-cuda-nn layout) with the progressive band.
- ``fields``: MLP heads, density + albedo field, normals from the density gradient.
- ``volume`` / ``occupancy``: ray sampling in a sphere, compositing, empty-space skipping.
- ``rasterize`` / ``interpolate`` / ``antialias`` / ``mesh_render``: triangle rasteriser with
  differentiable barycentrics, attribute interpolation, silhouette gradients, mesh maps.
- ``dmtet`` / ``mesh_sdf`` / ``marching_cubes``: tet grid and marching tets, SDF of a mesh, field -> mesh.
- ``uv`` / ``export``: xatlas unwrapping with a fallback, texture sampling and padding, GLB / OBJ.
"""

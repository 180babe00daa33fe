"""Frozen pretrained networks and score distillation: one file per prior.

- ``config``: weight ids and memory options (``cfg.priors``).
- ``weights``: which weights each stage needs, where they are found, ``check`` / ``pull``.
- ``sds``: timestep sampling, classifier-free guidance, SDS weight and surrogate loss.
- ``prior_2d``: SD 1.5-family SDS (GeneMAN 2D prior). ``text``: prompt embeddings.
- ``prior_3d`` + ``zero123_ldm`` + ``zero123_parts``: Zero-1-to-3 SDS (GeneMAN 3D prior), its LDM checkpoint
  conversion, and the networks both share (``Zero123Parts``).
- ``hybrid``: weighted 2D + 3D SDS and the multi-view tiling trick.
- ``adapted``: normal- / depth-adapted guidance (HumanNorm) for stage 2.
- ``sdedit``: ControlNet SDEdit for stage 4. ``sapiens``: depth / normal estimation for preprocess.
- ``memory``: precision, attention kernels, offload. ``registry``: ``PriorSet``, every prior loaded once.
- ``profile``: FLOPs per stage and network on the meta device. ``tiny``: every network at tiny size.
"""

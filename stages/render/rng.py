"""Random numbers drawn on the device that uses them.

stages/render may not import diffusers, so this is its small counterpart of diffusers'
``randn_tensor``, with the same rule for a generator on another device: the numbers are drawn where
the generator lives (a CPU generator keeps its stream, the same numbers on every device) and then
copied to ``device``; a one-time debug log says so. With no generator the numbers are drawn on
``device`` itself from that device's default generator (no host-to-device copy).
On the CPU the numbers are bitwise those of ``torch.rand(shape, generator=generator)``.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


def draw_device(generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.device:
    """Device the numbers are drawn on: the generator's when there is one, else ``device`` (CPU when None).

    Example:
        >>> draw_device(torch.Generator(), "cpu").type, draw_device(None, None).type
        ('cpu', 'cpu')
    """
    target = torch.device("cpu" if device is None else device)
    if generator is None or generator.device.type == target.type:
        return target
    key = (generator.device.type, target.type)
    if key not in _logged:
        _logged.add(key)
        log.debug("generator on %s, tensor wanted on %s: drawing on %s and copying (pass a generator on %s "
                  "to draw there)", generator.device, target, generator.device, target)
    return generator.device


def rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
         device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) numbers of ``shape`` on ``device`` (None: where they were drawn), drawn as
    :func:`draw_device` says.

    Args:
        shape: output shape.
        generator: random generator, on any device; None: ``device``'s default generator.
        device: device of the output.
        dtype: floating dtype (default: torch's default dtype).

    Returns:
        [*shape] tensor on ``device``.

    Example:
        >>> a = rand((2, 3), torch.Generator().manual_seed(0))
        >>> torch.equal(a, torch.rand((2, 3), generator=torch.Generator().manual_seed(0)))
        True
    """
    where = draw_device(generator, device)
    out = torch.rand(tuple(shape), generator=generator, device=where, dtype=dtype)
    return out if device is None else out.to(device)

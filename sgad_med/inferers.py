"""MONAI inferers for our slice networks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer


class FlipEnsembleInferer(Inferer):
    """Averages a network's output on a batch with its outputs on flipped copies, each flipped back.

    A self-ensemble at inference (as in EDSR's "+" models): for a network trained on data with no preferred
    orientation along the flipped axes, the flipped passes make different errors, and their mean is closer to the
    truth, most on noise-like damage. The cost is one extra forward pass per flip. The passes run one after the
    other: batched into one call they were slower on the CPU (``benchmarks/bench_flip_ensemble.py``, 2026-12-02:
    1.81 s separate against 2.46 s batched for six 256x256 stacks through the shipped restorer's four passes, one
    thread). A network that is exactly
    equivariant to the flips gives its plain output back.

    Args:
        flips: the spatial dimensions flipped in each extra pass, counted from the end (``-1``: width,
            ``-2``: height); the unflipped pass is always included. Default: one extra pass, left-right.

    Example::

        inferer = FlipEnsembleInferer(flips=[(-1,)])
        pred = inferer(stacks, network)    # mean of network(x) and flip(network(flip(x)))
    """

    def __init__(self, flips: Sequence[Sequence[int]] = ((-1,),)) -> None:
        super().__init__()
        self.flips = [tuple(int(d) for d in dims) for dims in flips]
        for dims in self.flips:
            if not dims or any(d >= 0 for d in dims):
                raise ValueError(f"each flip names spatial dimensions from the end (-1, -2, ...), got {dims}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        """The ensemble's output on ``inputs`` ``[N, C, *spatial]``; ``args``/``kwargs`` go to the network."""
        deepest = -min(min(dims) for dims in self.flips) if self.flips else 0
        if deepest > inputs.ndim - 2:
            raise ValueError(f"flips {self.flips} need more spatial dimensions than inputs of shape "
                             f"{tuple(inputs.shape)}")
        total = network(inputs, *args, **kwargs)
        for dims in self.flips:
            total = total + torch.flip(network(torch.flip(inputs, dims), *args, **kwargs), dims)
        return total / (1 + len(self.flips))

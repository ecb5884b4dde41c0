"""The slice-restoration network: a damaged slice with its neighbours in, the clean slice out."""

from __future__ import annotations

from collections.abc import Sequence

from sgad_med.networks.residual_unet import ResidualSliceUNet


class SliceRestorationNet(ResidualSliceUNet):
    """Predicts a clean slice k from a stack k-c … k+c in which slice k (and now and then a neighbour) is damaged.

    A :class:`~sgad_med.networks.residual_unet.ResidualSliceUNet`: the output is the damaged slice plus a learned
    residual, so a slice that was not damaged passes through nearly unchanged (no harm when the detector is
    wrong). With ``context=2`` (the default) it sees two neighbours on each side, which usually hold the same
    anatomy undamaged.

    Args:
        context: neighbours on each side; ``in_channels = 2 * context + 1``.
        features: BasicUNet's six feature sizes.
        dropout: dropout probability inside the U-Net.

    Example::

        net = SliceRestorationNet(context=2)
        clean = net(torch.rand(4, 5, 112, 128))   # -> (4, 1, 112, 128)
    """

    def __init__(
        self, context: int = 2, features: Sequence[int] = (16, 16, 32, 64, 128, 16), dropout: float = 0.0
    ) -> None:
        super().__init__(context=context, features=features, dropout=dropout, residual=True)

"""Turn restorer weights trained without ``align`` into a starting point for ``align=True``.

The aligned network has one more input channel (slice k re-registered to its neighbours). Its first convolution
gets zero weights for that channel, so the widened network computes exactly what the old one did, except that its
gate keeps the re-registered slice where the old one kept slice k (the same slice wherever no shift is found).
Fine-tuning from there (``train.json --align True --init_from <output>``) keeps what the old weights learnt.

    python bundles/slice_restoration/scripts/add_align_channel.py bundles/slice_restoration/models/model.pt init.pt
"""

from __future__ import annotations

import argparse

import torch

FIRST_CONV = "unet.conv_0.conv_0.conv.weight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="state dict of a SliceRestorationNet with align=False")
    parser.add_argument("output", help="where to write the widened state dict")
    args = parser.parse_args()
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    state = dict(state.get("model", state))
    weight = state[FIRST_CONV]
    state[FIRST_CONV] = torch.cat([weight, torch.zeros_like(weight[:, :1])], dim=1)
    torch.save(state, args.output)
    print(f"{FIRST_CONV}: {tuple(weight.shape)} -> {tuple(state[FIRST_CONV].shape)}; written to {args.output}")


if __name__ == "__main__":
    main()

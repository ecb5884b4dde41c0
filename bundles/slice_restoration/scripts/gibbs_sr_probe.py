"""How far does learned super-resolution get on Gibbs-truncated slices on this CPU? A probe, not a shipped model.

The Gibbs artifact keeps only a centred box of slice k's k-space (``gibbs_keep_fraction``: ``0.8 - 0.6 severity``);
the quality bar asks for 2 dB above the truncated slice itself, i.e. for the frequencies outside the box, which
the neighbouring slices hold only loosely (``probe_inputs.py``'s ``kspace`` column: taking them from the
neighbours loses 1.3 dB).
This trains a small 2.5D U-Net (the restorer's :func:`~sgad_med.networks.residual_unet.slice_stack_unet`, one
output: a residual added to slice k; ``--features`` widens it) on Gibbs-damaged stacks of training anatomies
0 to ``--anatomies`` - 1 (default 0-29; training styles, severity drawn from 0.2-0.8) for ``--minutes`` of wall
time, and prints, every 500 iterations, PSNR in the head at severity 0.5 on validation anatomies 960-969
(validation styles; never used by training or the evaluation) against the truncated slice. With
``--data_consistency`` (default) the output's frequencies inside the truncation box are replaced by slice k's
own, which are exact (the box is the true one in training and 0.5 here).

    python bundles/slice_restoration/scripts/gibbs_sr_probe.py [--minutes 8] [--no-data_consistency] \\
        [--anatomies 30] [--features 16 16 32 64 128 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sgad_med.evaluation.metrics import psnr
from sgad_med.evaluation.restoration import damage_stacks, restoration_cases
from sgad_med.networks.residual_unet import slice_stack_unet
from sgad_med.transforms.artifacts import ARTIFACTS, gibbs_keep_fraction

CONTEXT = 2
VALIDATION_SEVERITY = 0.5


def data_consistency(truncated: torch.Tensor, output: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """``output`` with its frequencies inside each slice's truncation box replaced by ``truncated``'s."""
    h, w = output.shape[-2:]
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.fftfreq(w).abs()[None, :]
    half = torch.as_tensor(keep / 2.0, dtype=torch.float32)[:, None, None, None]
    box = (fy <= half) & (fx <= half)
    return torch.fft.ifft2(torch.where(box, torch.fft.fft2(truncated), torch.fft.fft2(output))).real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="wall time of the training")
    parser.add_argument("--data_consistency", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--anatomies", type=int, default=30, help="training anatomies (0 to N-1), 12 slices each")
    parser.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16],
                        help="U-Net features (default: the restorer's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = np.stack([c["stack"] for c in restoration_cases(slices_per_volume=12,
                                                            anatomy_seeds=range(args.anatomies), split="train")])
    cases = restoration_cases(slices_per_volume=3, anatomy_seeds=range(960, 970), split="validation")
    clean = np.stack([c["stack"] for c in cases])
    masks = [c["mask"] for c in cases]
    damaged = torch.from_numpy(damage_stacks(clean, "gibbs", VALIDATION_SEVERITY, CONTEXT))
    network = slice_stack_unet(CONTEXT, 1, tuple(args.features))
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)

    def restore(stacks: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
        centre = stacks[:, CONTEXT : CONTEXT + 1]
        output = centre + network(stacks)
        return data_consistency(centre, output, keep) if args.data_consistency else output

    def validation_psnr(slices: np.ndarray) -> float:
        return float(np.mean([psnr(s, t, m) for s, t, m in zip(slices, clean[:, CONTEXT], masks)]))

    def network_psnr() -> float:
        network.eval()
        with torch.no_grad():
            restored = restore(damaged, gibbs_keep_fraction(np.full(len(damaged), VALIDATION_SEVERITY)))
        network.train()
        return validation_psnr(restored.clamp(0.0, 1.0)[:, 0].numpy())

    truncated_psnr = validation_psnr(damaged[:, CONTEXT].numpy())  # the floor: the same at every report

    print(f"{len(train)} training stacks (anatomies 0-{args.anatomies - 1}), {len(cases)} validation slices "
          f"(anatomies 960-969, severity {VALIDATION_SEVERITY}); features {args.features}; data consistency "
          f"{args.data_consistency}; PSNR (dB) in the head")
    print(f"{'iteration':>9} {'minutes':>7} {'network':>8} {'truncated':>9} {'gain':>6}")
    iteration, start = 0, time.time()
    while time.time() - start < 60.0 * args.minutes:
        batch = train[rng.integers(len(train), size=args.batch_size)].copy()
        if rng.random() < 0.5:
            batch = batch[..., ::-1].copy()
        truth = torch.from_numpy(batch[:, CONTEXT : CONTEXT + 1].copy())
        severities = rng.uniform(0.2, 0.8, size=len(batch))
        for stack, severity in zip(batch, severities):
            stack[CONTEXT] = ARTIFACTS["gibbs"](stack[CONTEXT].copy(), float(severity), rng)
        loss = (restore(torch.from_numpy(batch), gibbs_keep_fraction(severities)) - truth).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        iteration += 1
        if iteration % 500 == 0:
            net_psnr = network_psnr()
            print(f"{iteration:>9} {(time.time() - start) / 60:7.1f} {net_psnr:8.2f} {truncated_psnr:9.2f} "
                  f"{net_psnr - truncated_psnr:+6.2f}", flush=True)
    net_psnr = network_psnr()
    print(f"{iteration:>9} {(time.time() - start) / 60:7.1f} {net_psnr:8.2f} {truncated_psnr:9.2f} "
          f"{net_psnr - truncated_psnr:+6.2f}  (final)")


if __name__ == "__main__":
    main()

"""Training loops of the harmonization GAN on MONAI's ignite engines: paired (pix2pix) and unpaired (CycleGAN).

Both are :class:`monai.engines.Trainer` subclasses, so a bundle's ``train.json`` wires them with the usual
MONAI handlers (StatsHandler, CheckpointSaver/Loader, ValidationHandler) as model-zoo bundles do.

Loss terms (weights are constructor arguments, set in the bundle config; defaults documented here):

- adversarial: LSGAN, weight ``adv_weight`` (default 1);
- paired only: ``l1_weight`` (100) · L1(G(x), y) and ``ssim_weight`` (10) · (1 − SSIM(G(x), y));
- unpaired only: ``cycle_weight`` (10) · L1 of both cycles;
- L_style, both modes: ``identity_weight`` (5) · ‖G(x_ref) − x_ref‖₁ — a reference-style input must come out
  unchanged — plus ``structure_weight`` (1) · structure_loss(G(x), x): edges of the output must lie where the
  input's are (contrast-invariant, see :func:`~sgad_med.engines.losses.structure_loss`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.losses import SSIMLoss
from torch import nn
from torch.optim import Optimizer

from sgad_med.engines.losses import lsgan_loss, structure_loss


def _centre(stack: torch.Tensor, context: int) -> torch.Tensor:
    return stack[:, context : context + 1]


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if hasattr(network, "module") else network


class _GanTrainer(Trainer):
    """What both trainers share: devices, AMP on CUDA only, and stepping an optimizer on a loss."""

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader, amp: bool = False,
                 epoch_length: int | None = None, train_handlers: Sequence | None = None,
                 key_train_metric: dict | None = None, **kwargs: Any) -> None:
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            key_metric=key_train_metric,
            amp=amp and device.type == "cuda",  # AMP only where it pays: on CPU it is slower and less exact
            decollate=False,
            **kwargs,
        )

    def _autocast(self):
        return torch.autocast("cuda") if self.amp else contextlib.nullcontext()

    def _step(self, optimizer: Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def _to_device(self, batch: dict, *keys: str) -> list[torch.Tensor]:
        return [batch[key].to(self.state.device, non_blocking=self.non_blocking) for key in keys]


class PairedHarmonizationTrainer(_GanTrainer):
    """pix2pix-style training on paired slices: ``image`` (source stacks) → ``label`` (reference slices).

    Each iteration: one discriminator step (LSGAN on real vs generated, conditioned on the input stack), then
    one generator step (adversarial + L1 + SSIM + L_style). ``batch["reference"]`` (reference-style stacks
    of the same slices) feeds the identity term.

    Args:
        device: torch device.
        max_epochs: epochs to train.
        train_data_loader: yields dicts with ``image``, ``label`` and ``reference`` tensors.
        generator: the generator (e.g. :class:`~sgad_med.networks.HarmonizationGenerator`), maybe DDP-wrapped.
        discriminator: a conditional discriminator ``D(image, condition)``.
        g_optimizer: the generator's optimizer.
        d_optimizer: the discriminator's optimizer.
        context: neighbours on each side in the stacks.
        adv_weight: weight of the adversarial term.
        l1_weight: weight of L1 to the target.
        ssim_weight: weight of 1 − SSIM to the target.
        identity_weight: weight of ‖G(x_ref) − x_ref‖₁.
        structure_weight: weight of the edge-structure term between output and input.
        amp: mixed precision (CUDA only).
        epoch_length: iterations per epoch (default: the loader's length).
        train_handlers: MONAI/ignite handlers.
        key_train_metric: MONAI key metric.
    """

    def __init__(self, device, max_epochs: int, train_data_loader, generator: nn.Module, discriminator: nn.Module,
                 g_optimizer: Optimizer, d_optimizer: Optimizer, context: int = 1, adv_weight: float = 1.0,
                 l1_weight: float = 100.0, ssim_weight: float = 10.0, identity_weight: float = 5.0,
                 structure_weight: float = 1.0, amp: bool = False, epoch_length: int | None = None,
                 train_handlers: Sequence | None = None, key_train_metric: dict | None = None) -> None:
        super().__init__(device, max_epochs, train_data_loader, amp, epoch_length, train_handlers, key_train_metric)
        self.generator, self.discriminator = generator, discriminator
        self.network = generator  # what MONAI handlers (e.g. checkpointing by key metric) look for
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.context = context
        self.weights = {"adv": adv_weight, "l1": l1_weight, "ssim": ssim_weight, "identity": identity_weight,
                        "structure": structure_weight}
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0)

    def _iteration(self, engine: PairedHarmonizationTrainer, batch: dict) -> dict[str, Any]:
        source, target, reference = self._to_device(batch, "image", "label", "reference")
        self.generator.train()
        self.discriminator.train()
        n = source.shape[0]
        # One forward per network per backward: DistributedDataParallel reduces gradients once per forward.
        with self._autocast():
            fake, identity = self.generator(torch.cat([source, reference])).split(n)
            logits = self.discriminator(torch.cat([target, fake.detach()]), torch.cat([source, source]))
            d_loss = 0.5 * (lsgan_loss(logits[:n], True) + lsgan_loss(logits[n:], False))
        self._step(self.d_optimizer, d_loss)

        with self._autocast():
            terms = {
                "adv": lsgan_loss(self.discriminator(fake, source), True),
                "l1": torch.mean(torch.abs(fake - target)),
                "ssim": self.ssim(fake.float().clamp(0, 1), target.float()),
                "identity": torch.mean(torch.abs(identity - _centre(reference, self.context))),
                "structure": structure_loss(fake.float(), _centre(source, self.context).float()),
            }
            g_loss = sum(self.weights[name] * value for name, value in terms.items())
        self._step(self.g_optimizer, g_loss)
        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in terms.items()},
                "image": source, "label": target, "pred": fake.detach()}


class UnpairedHarmonizationTrainer(_GanTrainer):
    """CycleGAN-style training on unpaired slices: ``image`` (source site) and ``reference`` (reference site).

    ``generator`` maps source → reference style and ``generator_back`` reference → source; two unconditional
    discriminators judge each domain. The cycle passes a generated slice back as a stack of that slice
    repeated (its neighbours were not generated), which keeps the cost at one generator call per direction.

    Args:
        device: torch device.
        max_epochs: epochs to train.
        train_data_loader: yields dicts with ``image`` and ``reference`` stacks (unpaired).
        generator: source → reference generator (the one a bundle ships).
        generator_back: reference → source generator.
        discriminator: judges reference-style slices (``D(image)``, no condition).
        discriminator_back: judges source-style slices.
        g_optimizer: optimizer over both generators' parameters.
        d_optimizer: optimizer over both discriminators' parameters.
        context: neighbours on each side in the stacks.
        adv_weight: weight of the adversarial terms.
        cycle_weight: weight of the cycle-consistency L1 terms.
        identity_weight: weight of the identity terms (each generator leaves its own domain unchanged).
        structure_weight: weight of the edge-structure term between output and input, both directions.
        amp: mixed precision (CUDA only).
        epoch_length: iterations per epoch.
        train_handlers: MONAI/ignite handlers.
        key_train_metric: MONAI key metric.
    """

    def __init__(self, device, max_epochs: int, train_data_loader, generator: nn.Module, generator_back: nn.Module,
                 discriminator: nn.Module, discriminator_back: nn.Module, g_optimizer: Optimizer,
                 d_optimizer: Optimizer, context: int = 1, adv_weight: float = 1.0, cycle_weight: float = 10.0,
                 identity_weight: float = 5.0, structure_weight: float = 1.0, amp: bool = False,
                 epoch_length: int | None = None, train_handlers: Sequence | None = None,
                 key_train_metric: dict | None = None) -> None:
        super().__init__(device, max_epochs, train_data_loader, amp, epoch_length, train_handlers, key_train_metric)
        self.generator, self.generator_back = generator, generator_back
        self.discriminator, self.discriminator_back = discriminator, discriminator_back
        self.network = generator
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.context = context
        self.weights = {"adv": adv_weight, "cycle": cycle_weight, "identity": identity_weight,
                        "structure": structure_weight}

    def _as_stack(self, slice_: torch.Tensor) -> torch.Tensor:
        return slice_.repeat(1, 2 * self.context + 1, 1, 1)

    def _iteration(self, engine: UnpairedHarmonizationTrainer, batch: dict) -> dict[str, Any]:
        source, reference = self._to_device(batch, "image", "reference")
        centre_source, centre_reference = _centre(source, self.context), _centre(reference, self.context)
        for network in (self.generator, self.generator_back, self.discriminator, self.discriminator_back):
            network.train()
        with self._autocast():
            fake_reference = self.generator(source)
            fake_source = self.generator_back(reference)
            d_loss = 0.25 * (
                lsgan_loss(self.discriminator(centre_reference), True)
                + lsgan_loss(self.discriminator(fake_reference.detach()), False)
                + lsgan_loss(self.discriminator_back(centre_source), True)
                + lsgan_loss(self.discriminator_back(fake_source.detach()), False)
            )
        self._step(self.d_optimizer, d_loss)

        with self._autocast():
            terms = {
                "adv": lsgan_loss(self.discriminator(fake_reference), True)
                + lsgan_loss(self.discriminator_back(fake_source), True),
                "cycle": torch.mean(torch.abs(self.generator_back(self._as_stack(fake_reference)) - centre_source))
                + torch.mean(torch.abs(self.generator(self._as_stack(fake_source)) - centre_reference)),
                "identity": torch.mean(torch.abs(self.generator(reference) - centre_reference))
                + torch.mean(torch.abs(self.generator_back(source) - centre_source)),
                "structure": structure_loss(fake_reference.float(), centre_source.float())
                + structure_loss(fake_source.float(), centre_reference.float()),
            }
            g_loss = sum(self.weights[name] * value for name, value in terms.items())
        self._step(self.g_optimizer, g_loss)
        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in terms.items()},
                "image": source, "pred": fake_reference.detach()}

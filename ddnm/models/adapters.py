"""Turn a network into the sampler's denoiser: `denoiser(x_t, t) -> eps`.

    x_t   (B, 3, H, W), the noisy state in the sampler's dtype and device
    t     (B,) float timesteps (0 .. T-1, integer-valued)
    eps   (B, 3, H, W), same dtype and device as x_t

One wrapper per network family overrides `network_eps`: the ADM UNet keeps channels 0..2 of a
learned-variance output and receives the job's class labels; the DDPM `Model` returns eps as is.

Classifier guidance (Dhariwal & Nichol 2021, Eq. 14, as DDNM applies it):
    eps' = eps - sqrt(1 - alpha_bar_t) * s * grad_x log p(y | x_t)
with the gradient taken at the *current* x_t and s the classifier scale.

Precision: `dtype` float16 / bfloat16 runs the network torso in that dtype with group norm,
softmax, embeddings and the output head in float32 (the reference's fp16 recipe, `convert_torso`).
Relative error max|eps_half - eps_f32| / max|eps_f32| measured on the two 32x32 reference fixtures
(CPU, tests/test_models_precision.py): float16 1.9e-3 (guided) / 1.4e-3 (DDPM), bfloat16 1.5e-2 /
1.1e-2. The stated bounds, `HALF_REL_ERROR`, are 5e-3 (float16) and 4e-2 (bfloat16). The
classifier runs in float32, as the reference runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnm.models.adm_unet import NUM_CLASSES, UNetModel
from ddnm.models.ddpm_unet import Model
from ddnm.models.precision import check_torso_dtype
from ddnm.schedules import Schedule

# stated bound on max|eps_half - eps_f32| / max|eps_f32| (measurements: module docstring)
HALF_REL_ERROR = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


@dataclass(frozen=True)
class ClassifierGuidance:
    """classifier: (x_t, t) -> logits (B, classes); scale: s >= 0; schedule gives alpha_bar_t."""

    classifier: nn.Module
    scale: float
    schedule: Schedule

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale}")

    def grad_log_p(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """s * grad_x log p(y | x_t): (B, 3, H, W), dtype of x_t (the classifier runs in its own
        parameters' dtype)."""
        dtype = next(self.classifier.parameters()).dtype
        with torch.enable_grad():
            x = x_t.detach().to(dtype).requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x, t.to(dtype)), dim=-1)
            selected = log_probs[torch.arange(len(y), device=y.device), y]
            (grad,) = torch.autograd.grad(selected.sum(), x)
        return self.scale * grad.to(x_t.dtype)

    def guide(self, eps: Tensor, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """eps - sqrt(1 - alpha_bar_t) * s * grad log p(y | x_t)  (Eq. 14)."""
        table = self.schedule.alpha_bar_table.to(x_t.device)
        alpha_bar = table[t.round().long() + 1].to(eps.dtype)[:, None, None, None]
        return eps - (1 - alpha_bar).sqrt() * self.grad_log_p(x_t, t, y).to(eps.dtype)


class Denoiser:
    """Base wrapper: device and dtype moves, labels, guidance; subclasses give `network_eps`.

    x_t and t enter the network on its device in the dtype of its float32 islands (its first
    parameters, the timestep embedding), e.g. float32 for a float32 or half-torso network under a
    float64 sampler run; eps comes back in x_t's dtype and device.
    """

    def __init__(
        self,
        network: nn.Module,
        class_labels: Tensor | None,
        guidance: ClassifierGuidance | None,
    ) -> None:
        self.network = network
        self.class_labels = class_labels
        self.guidance = guidance
        first = next(network.parameters())
        self.device, self.dtype = first.device, first.dtype

    def network_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        raise NotImplementedError

    def labels(self, batch: int) -> Tensor | None:
        """The job's class labels as (batch,) int64, or None."""
        if self.class_labels is None:
            return None
        if len(self.class_labels) not in (1, batch):
            raise ValueError(
                f"class_label must be one label or {batch} (one per sample), "
                f"got {len(self.class_labels)}"
            )
        return self.class_labels.to(self.device).expand(batch)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        x, t_net = x_t.to(self.device, self.dtype), t.to(self.device, self.dtype)
        y = self.labels(x.shape[0])
        with torch.no_grad():
            eps = self.network_eps(x, t_net, y)
        if self.guidance is not None and y is not None:
            eps = self.guidance.guide(eps, x, t_net, y)
        return eps.to(device=x_t.device, dtype=x_t.dtype)


class ADMDenoiser(Denoiser):
    def network_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        label = y if getattr(self.network, "num_classes", None) is not None else None
        return self.network(x_t, t, label)[:, : x_t.shape[1]]


class DDPMDenoiser(Denoiser):
    def network_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        return self.network(x_t, t)


def _class_labels(
    label: int | Tensor | None, network: nn.Module, classifier: nn.Module | None
) -> Tensor | None:
    """The labels as (1,) or (B,) int64, checked against the number of classes of the network
    (or of the classifier, which defaults to ImageNet's 1000)."""
    classes = getattr(network, "num_classes", None)
    if classes is None and classifier is not None:
        classes = getattr(classifier, "out_channels", NUM_CLASSES)
    if label is None:
        if classes is not None:
            raise ValueError("class_label is required for a class-conditional or guided model")
        return None
    if classes is None:
        raise ValueError("class_label needs a class-conditional network or a classifier")
    labels = torch.as_tensor(label, dtype=torch.long).reshape(-1)
    if ((labels < 0) | (labels >= classes)).any():
        raise ValueError(f"class_label must be in [0, {classes - 1}], got {label}")
    return labels


def prepare(
    network: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None
) -> nn.Module:
    """Move `network` to `device` and run its torso in `dtype` (in place; None: leave as is)."""
    if dtype is not None:
        check_torso_dtype(dtype)
        network.convert_torso(dtype)  # type: ignore[operator]
    if device is not None:
        network.to(device)
    return network


WRAPPERS: dict[type[nn.Module], type[Denoiser]] = {UNetModel: ADMDenoiser, Model: DDPMDenoiser}


def as_denoiser(
    network: nn.Module,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    class_label: int | Tensor | None = None,
    classifier: nn.Module | None = None,
    classifier_scale: float = 0.0,
    schedule: Schedule | None = None,
) -> Denoiser:
    """The sampler's `denoiser(x_t, t) -> eps` for `network` (UNetModel or DDPM Model).

    device / dtype: where and in which torso precision the network runs (float32, float16,
    bfloat16); when given, `network` is moved / converted in place (and `classifier` moved; it
    stays float32). class_label: an int for the whole batch or a (B,) tensor, in [0, 999];
    required by a class-conditional network and by guidance. classifier ((x_t, t) -> logits),
    classifier_scale and schedule: classifier guidance (schedule required with a classifier).
    """
    wrapper = WRAPPERS.get(type(network))
    if wrapper is None:
        raise ValueError(
            f"network must be a UNetModel or a DDPM Model, got {type(network).__name__}"
        )
    prepare(network, device, dtype)
    guidance = None
    if classifier is not None:
        if schedule is None:
            raise ValueError("schedule is required for classifier guidance")
        guidance = ClassifierGuidance(classifier.to(device), classifier_scale, schedule)
    return wrapper(network, _class_labels(class_label, network, classifier), guidance)

"""Turn a network into the sampler's ε-model: `eps(x_t, t, labels=None, scales=None)`.

    x_t     (B, 3, H, W), the noisy state in the sampler's dtype and device
    t       (B,) float timesteps (0 .. T-1, integer-valued)
    labels  (B,) int64 class labels, per sample (a class-conditional network, guidance)
    scales  (B,) classifier-guidance scales s >= 0, per sample
    eps     (B, 3, H, W), same dtype and device as x_t

Labels and scales come with each call, so one forward can serve samples of different jobs. One
adapter per network family overrides `network_eps`: the ADM UNet keeps channels 0..2 of a
learned-variance output (the only place that split happens) and receives the labels; the DDPM
`Model` returns eps as is.

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
    """classifier: (x_t, t) -> logits (B, classes); schedule gives alpha_bar_t. The scale s >= 0
    comes with each call, one per sample."""

    classifier: nn.Module
    schedule: Schedule

    def grad_log_p(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """grad_x log p(labels | x_t), per sample: (B, 3, H, W), dtype of x_t (the classifier runs
        in its own parameters' dtype)."""
        dtype = next(self.classifier.parameters()).dtype
        with torch.enable_grad():
            x = x_t.detach().to(dtype).requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x, t.to(dtype)), dim=-1)
            selected = log_probs[torch.arange(len(labels), device=labels.device), labels]
            (grad,) = torch.autograd.grad(selected.sum(), x)  # row b depends on sample b only
        return grad.to(x_t.dtype)

    def guide(self, eps: Tensor, x_t: Tensor, t: Tensor, labels: Tensor, scales: Tensor) -> Tensor:
        """eps - sqrt(1 - alpha_bar_t) * s * grad log p(y | x_t)  (Eq. 14), s = scales (B,)."""
        table = self.schedule.alpha_bar_table.to(x_t.device)
        alpha_bar = table[t.round().long() + 1].to(eps.dtype)[:, None, None, None]
        grad = scales.to(x_t)[:, None, None, None] * self.grad_log_p(x_t, t, labels)
        return eps - (1 - alpha_bar).sqrt() * grad.to(eps.dtype)


class EpsAdapter:
    """A network as the sampler's ε-model (`ddnm.sampling.EpsModel`): device and dtype moves,
    per-call class labels and guidance scales; subclasses give `network_eps`.

    x_t and t enter the network on its device in the dtype of its float32 islands (its first
    parameters, the timestep embedding), e.g. float32 for a float32 or half-torso network under a
    float64 sampler run; eps comes back in x_t's dtype and device. `labels` and `scale` given at
    construction serve calls that bring none.
    """

    def __init__(
        self,
        network: nn.Module,
        guidance: ClassifierGuidance | None,
        classes: int | None,
        labels: Tensor | None = None,
        scale: float = 0.0,
    ) -> None:
        self.network, self.guidance, self.classes = network, guidance, classes
        first = next(network.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.class_labels = None if labels is None else self.check_labels(labels)
        self.scale = scale

    def network_eps(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        raise NotImplementedError

    def check_labels(self, labels: Tensor) -> Tensor:
        """labels as int64, checked against the classes of the network (or of the classifier)."""
        if self.classes is None:
            raise ValueError("class_label needs a class-conditional network or a classifier")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if ((labels < 0) | (labels >= self.classes)).any():
            raise ValueError(
                f"class_label must be in [0, {self.classes - 1}], got {labels.tolist()}"
            )
        return labels

    def _labels(self, batch: int, labels: Tensor | None) -> Tensor | None:
        """The call's labels, else the bound ones, as (batch,) int64 on the network's device."""
        labels = self.class_labels if labels is None else self.check_labels(labels)
        if labels is None:
            if getattr(self.network, "num_classes", None) is not None:
                raise ValueError("class_label is required for a class-conditional model")
            return None
        if len(labels) not in (1, batch):
            raise ValueError(
                f"class_label must be one label or {batch} (one per sample), got {len(labels)}"
            )
        return labels.to(self.device).expand(batch)

    def __call__(
        self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, scales: Tensor | None = None
    ) -> Tensor:
        x, t_net = x_t.to(self.device, self.dtype), t.to(self.device, self.dtype)
        y = self._labels(x.shape[0], labels)
        with torch.no_grad():
            eps = self.network_eps(x, t_net, y)
        s = torch.full_like(t_net, self.scale) if scales is None else scales.to(t_net)
        guided = (s > 0).nonzero().squeeze(1)  # only these samples pay for the classifier
        if self.guidance is not None and len(guided):
            if y is None:
                raise ValueError("classifier guidance needs a class_label to guide towards")
            eps = eps.index_put(
                (guided,),
                self.guidance.guide(eps[guided], x[guided], t_net[guided], y[guided], s[guided]),
            )
        return eps.to(device=x_t.device, dtype=x_t.dtype)


class ADMEps(EpsAdapter):
    """The guided-diffusion UNet: labels reach a class-conditional network; a learned-variance
    output (2C channels) keeps its first C channels, ε."""

    def network_eps(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        label = labels if getattr(self.network, "num_classes", None) is not None else None
        return self.network(x_t, t, label)[:, : x_t.shape[1]]


class DDPMEps(EpsAdapter):
    """The DDPM `Model`: ε as it comes."""

    def network_eps(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        return self.network(x_t, t)


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


WRAPPERS: dict[type[nn.Module], type[EpsAdapter]] = {UNetModel: ADMEps, Model: DDPMEps}


def as_denoiser(
    network: nn.Module,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    class_label: int | Tensor | None = None,
    classifier: nn.Module | None = None,
    classifier_scale: float = 0.0,
    schedule: Schedule | None = None,
) -> EpsAdapter:
    """The sampler's ε-model `eps(x_t, t, labels=None, scales=None)` for `network` (UNetModel or
    DDPM Model).

    device / dtype: where and in which torso precision the network runs (float32, float16,
    bfloat16); when given, `network` is moved / converted in place (and `classifier` moved; it
    stays float32). classifier ((x_t, t) -> logits) and schedule: classifier guidance (schedule
    required with a classifier). class_label (an int or a (B,) tensor, checked against the
    classes) and classifier_scale (s >= 0) serve the calls that bring no labels / scales of
    their own; a class-conditional network needs labels from one or the other.
    """
    wrapper = WRAPPERS.get(type(network))
    if wrapper is None:
        raise ValueError(
            f"network must be a UNetModel or a DDPM Model, got {type(network).__name__}"
        )
    if classifier_scale < 0:
        raise ValueError(f"classifier_scale must be >= 0, got {classifier_scale}")
    prepare(network, device, dtype)
    guidance = None
    if classifier is not None:
        if schedule is None:
            raise ValueError("schedule is required for classifier guidance")
        guidance = ClassifierGuidance(classifier.to(device), schedule)
    classes = getattr(network, "num_classes", None)
    if classes is None and classifier is not None:
        classes = getattr(classifier, "out_channels", NUM_CLASSES)
    labels = None if class_label is None else torch.as_tensor(class_label)
    return wrapper(network, guidance, classes, labels, classifier_scale)

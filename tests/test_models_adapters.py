"""Denoiser adapters: learned-sigma split, class labels, classifier guidance, dtype handling."""

from __future__ import annotations

import math

import pytest
import torch

from ddnm.models import as_denoiser, load_network
from ddnm.schedules import linear_schedule

SMALL_UNET = {
    "image_size": 16,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "8",
    "num_head_channels": 16,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
}
SMALL_CLASSIFIER = {
    "image_size": 16,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 1000,
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "channel_mult": [1, 2],
    "num_head_channels": 32,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "pool": "attention",
}


def _perturbed(net, seed):
    """Random weights everywhere (the zero-initialised convs too), so outputs are informative."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return net


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([37.0, 900.0])


def test_learned_sigma_output_keeps_eps_channels(inputs):
    x, t = inputs
    net = _perturbed(load_network(None, arch="adm", config=SMALL_UNET), 1)
    eps = as_denoiser(net)(x, t)
    with torch.no_grad():
        out = net(x, t)
    assert out.shape[1] == 6
    assert torch.equal(eps, out[:, :3])


def test_ddpm_output_passes_through(inputs):
    x, t = inputs
    config = {
        "ch": 32,
        "out_ch": 3,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
        "image_size": 16,
    }
    net = _perturbed(load_network(None, arch="ddpm", config=config), 2)
    with torch.no_grad():
        assert torch.equal(as_denoiser(net)(x, t), net(x, t))


def test_class_label_reaches_a_class_conditional_network(inputs):
    x, t = inputs
    net = _perturbed(load_network(None, arch="adm", config={**SMALL_UNET, "class_cond": True}), 3)
    with pytest.raises(ValueError, match="class_label is required"):
        as_denoiser(net)(x, t)
    eps_7 = as_denoiser(net, class_label=7)(x, t)
    with torch.no_grad():
        assert torch.equal(eps_7, net(x, t, torch.tensor([7, 7]))[:, :3])
    assert not torch.allclose(eps_7, as_denoiser(net, class_label=8)(x, t))
    per_sample = as_denoiser(net, class_label=torch.tensor([7, 8]))(x, t)
    assert torch.equal(per_sample[0], eps_7[0])
    with pytest.raises(ValueError, match="one label or 2"):
        as_denoiser(net, class_label=torch.tensor([7, 8, 9]))(x, t)


def test_bad_arguments_are_rejected():
    net = load_network(None, arch="adm", config=SMALL_UNET)
    classifier = load_network(None, arch="adm_classifier", config=SMALL_CLASSIFIER)
    with pytest.raises(ValueError, match="class-conditional network or a classifier"):
        as_denoiser(net, class_label=3)
    with pytest.raises(ValueError, match="schedule"):
        as_denoiser(net, class_label=3, classifier=classifier, classifier_scale=1.0)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        as_denoiser(net, class_label=1000, classifier=classifier, schedule=linear_schedule())
    with pytest.raises(ValueError, match="scale"):
        as_denoiser(
            net,
            class_label=1,
            classifier=classifier,
            classifier_scale=-1.0,
            schedule=linear_schedule(),
        )
    with pytest.raises(ValueError, match="dtype"):
        as_denoiser(net, dtype=torch.int8)
    with pytest.raises(ValueError, match="UNetModel or a DDPM Model"):
        as_denoiser(classifier)


def test_classifier_guidance_follows_eq14_at_the_current_x_t(inputs):
    """eps' = eps - sqrt(1 - alpha_bar_t) s grad log p(y | x_t): check the gradient term along a
    random direction against a central finite difference of log p(y | x) around this x_t."""
    x, t = (v.double() for v in inputs)
    net = _perturbed(load_network(None, arch="adm", config=SMALL_UNET), 4).double()
    classifier = _perturbed(
        load_network(None, arch="adm_classifier", config=SMALL_CLASSIFIER), 5
    ).double()
    schedule, scale, label = linear_schedule(), 3.0, 281
    guided = as_denoiser(
        net, class_label=label, classifier=classifier, classifier_scale=scale, schedule=schedule
    )
    term = as_denoiser(net)(x, t) - guided(x, t)  # = sqrt(1 - alpha_bar_t) s grad
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)

    def log_p(x_):
        with torch.no_grad():
            return torch.log_softmax(classifier(x_, t), dim=-1)[:, label]

    h = 1e-4
    finite_difference = (log_p(x + h * direction) - log_p(x - h * direction)) / (2 * h)
    for b in range(2):
        factor = math.sqrt(1 - schedule.alpha_bar(int(t[b]))) * scale
        directional = (term[b] * direction[b]).sum() / factor
        assert directional.item() == pytest.approx(finite_difference[b].item(), rel=1e-5)
    assert term.abs().max() > 0


def test_dtype_and_device_parameters_convert_the_torso(inputs):
    x, t = inputs
    net = _perturbed(load_network(None, arch="adm", config=SMALL_UNET), 6)
    eps32 = as_denoiser(net)(x, t)
    eps16 = as_denoiser(net, dtype=torch.bfloat16, device="cpu")(x, t)
    assert net.torso_dtype == torch.bfloat16
    assert net.out[2].weight.dtype == torch.float32
    assert eps16.dtype == torch.float32
    assert 0 < (eps16 - eps32).abs().max() < 0.05 * eps32.abs().max()


def test_inputs_are_cast_to_the_network_and_eps_back_to_x_t(inputs):
    """A float64 sampler run with a float32 network: the network computes in float32 (its own
    dtype, timesteps included) and eps comes back in float64."""
    x, t = inputs
    net = _perturbed(load_network(None, arch="adm", config=SMALL_UNET), 7)
    eps64 = as_denoiser(net)(x.double(), t.double())
    assert eps64.dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(eps64, net(x, t)[:, :3].double())


def test_class_label_is_checked_against_the_networks_classes(inputs):
    x, t = inputs
    kwargs = {
        "image_size": 16,
        "in_channels": 3,
        "model_channels": 32,
        "out_channels": 3,
        "num_res_blocks": 1,
        "attention_resolutions": [],
        "channel_mult": [1, 2],
        "num_classes": 10,
    }
    net = load_network(None, arch="adm", config={"unet_kwargs": kwargs})
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        as_denoiser(net, class_label=10)
    assert as_denoiser(net, class_label=9)(x, t).shape == (2, 3, 16, 16)


def test_labels_and_guidance_scales_come_per_sample_with_each_call(inputs):
    """One forward serves samples of different jobs: sample 0 unguided (scale 0), sample 1
    guided towards its own label at its own scale, each as if called alone with its settings."""
    x, t = inputs
    net = _perturbed(load_network(None, arch="adm", config=SMALL_UNET), 8)
    classifier = _perturbed(load_network(None, arch="adm_classifier", config=SMALL_CLASSIFIER), 9)
    schedule = linear_schedule()
    eps = as_denoiser(net, classifier=classifier, schedule=schedule)
    mixed = eps(x, t, labels=torch.tensor([281, 7]), scales=torch.tensor([0.0, 3.0]))
    unguided = as_denoiser(net)(x, t)
    torch.testing.assert_close(mixed[0], unguided[0])
    alone = as_denoiser(
        net, class_label=7, classifier=classifier, classifier_scale=3.0, schedule=schedule
    )
    torch.testing.assert_close(mixed[1:], alone(x[1:], t[1:]))
    assert (mixed[1] - unguided[1]).abs().max() > 1e-4  # the guidance did act on sample 1
    with pytest.raises(ValueError, match="needs a class_label"):
        eps(x, t, scales=torch.tensor([1.0, 1.0]))

"""The official 256x256 architectures, built on the meta device, against the reference manifests:
every state_dict key, shape and dtype in order, parameter counts and the fp16 split."""

from __future__ import annotations

import json

import pytest
import torch

from ddnm.models import load_network

MANIFESTS = {
    "manifest_guided_256_uncond.json": "adm",
    "manifest_guided_256_cond.json": "adm",
    "manifest_guided_256_classifier.json": "adm_classifier",
    "manifest_ddpm_celeba_hq.json": "ddpm",
}
CONFIG_KEYS = ("create_model_kwargs", "unet_kwargs", "create_classifier_kwargs", "model_config")


def _manifest(reference_dir, name):
    return json.loads((reference_dir / "manifests" / name).read_text())


def _configs(manifest):
    """The manifest itself and each constructor dict it stores, as load_network would get them."""
    yield "manifest", manifest
    for key in CONFIG_KEYS:
        if key in manifest and key != "model_config":
            yield key, manifest[key]
    if "model_config" in manifest:
        yield "model_config", {**manifest["model_config"], "image_size": manifest["image_size"]}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_meta_build_matches_manifest_key_for_key(reference_dir, name):
    manifest = _manifest(reference_dir, name)
    expected = [(k, list(shape), dtype) for k, shape, dtype in manifest["params"]]
    for form, config in _configs(manifest):
        with torch.device("meta"):
            net = load_network(None, arch=MANIFESTS[name], config=config)
        got = [
            (k, list(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in net.state_dict().items()
        ]
        assert got == expected, form
        assert all(p.is_meta for p in net.parameters())
        assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


@pytest.mark.parametrize(
    "name", ["manifest_guided_256_uncond.json", "manifest_guided_256_cond.json"]
)
def test_fp16_split_matches_manifest(reference_dir, name):
    manifest = _manifest(reference_dir, name)
    with torch.device("meta"):
        net = load_network(None, arch="adm", config=manifest)
    net.convert_torso(torch.float16)
    half = [k for k, v in net.state_dict().items() if v.dtype == torch.float16]
    assert half == manifest["fp16_converted_keys"]
    assert len(half) == 274


def test_factory_refuses_underived_sizes_but_class_kwargs_accept_them(reference_dir):
    manifest = _manifest(reference_dir, "manifest_guided_256_classifier.json")
    kwargs = {**manifest["create_classifier_kwargs"], "image_size": 96}
    with pytest.raises(ValueError, match="image_size"):
        load_network(None, arch="adm_classifier", config=kwargs)
    encoder_kwargs = {
        "image_size": 96,
        "in_channels": 3,
        "model_channels": 32,
        "out_channels": 10,
        "num_res_blocks": 1,
        "attention_resolutions": [2],
        "channel_mult": [1, 2, 2],
        "num_head_channels": 32,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "pool": "attention",
    }
    with torch.device("meta"):
        net = load_network(None, arch="adm_classifier", config=encoder_kwargs)
    assert net.state_dict()["out.2.positional_embedding"].shape == (
        64,
        24 * 24 + 1,
    )  # 32 * 2 channels at 96 // 4
    with pytest.raises(ValueError, match=r"\(B, C, 96, 96\)"):  # the attention pool fixes the size
        net(torch.zeros(1, 3, 64, 64, device="meta"), torch.zeros(1, device="meta"))


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch must be one of"):
        load_network(None, arch="vae", config={})

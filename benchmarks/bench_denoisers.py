"""Every denoiser family's "small" configuration for 1-channel 32² digits (1.5-2.5M parameters).

``bench_sampling.py --models`` times them; ``tests/test_denoiser_internals.py`` checks that each
builds, has that size and trains. The sizes the denoiser study trains are in
``configs/ablations/denoisers.yml``.
"""

from __future__ import annotations

import importlib

import torch

SMALL_CONFIGS: dict[str, dict] = {
    "fno": {"class_path": "lightning_infdiff.denoisers.fno.FNODenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "width": 32, "modes": 10, "depth": 4, "levels": 1, "emb_dim": 128}},
    "uno": {"class_path": "lightning_infdiff.denoisers.fno.FNODenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "width": 20, "modes": 12, "depth": 1, "levels": 3,
        "channel_mult": [1, 2, 3], "emb_dim": 128}},
    "uvit": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "channels": 64,
        "channel_mult": [1], "transformer_mult": 2, "num_res_blocks": 2, "num_transformer_blocks": 4,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128}},
    "coord_mlp_baseline": {"class_path": "lightning_infdiff.denoisers.coord_mlp.CoordMLPBaseline", "init_args": {
        "in_channels": 1, "num_classes": 10, "hidden": 960, "depth": 3}},
    "coord_mlp": {"class_path": "lightning_infdiff.denoisers.coord_mlp.CoordMLPDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "hidden": 272, "depth": 5, "emb_dim": 128}},
    "siid": {"class_path": "lightning_infdiff.denoisers.siid.SIIDDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "channels": 128, "depth": 7, "heads": 4, "emb_dim": 128}},
    "unet": {"class_path": "lightning_infdiff.denoisers.unet_denoiser.ADMUNetDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "channels": 32, "channel_mult": [1, 2, 2],
        "attention_resolutions": [16, 8], "head_channels": 32, "emb_dim": 128}},
    "uvit_rope": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "channels": 64,
        "channel_mult": [1], "transformer_mult": 2, "num_res_blocks": 2, "num_transformer_blocks": 4,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128, "position": "rope"}},
    "uvit_dwt": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "dwt_levels": 1,
        "channels": 64, "channel_mult": [], "transformer_mult": 2, "num_transformer_blocks": 6,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128}},
    "sparse_operator": {"class_path": "lightning_infdiff.denoisers.sparse_operator.SparseNeuralOperator", "init_args": {
        "in_channels": 1, "num_classes": 10, "train_resolution": 32, "channels": 32, "inner_resolution": 16,
        "inner_channels": 32, "channel_mult": [1, 2, 2], "emb_dim": 128}},
}


def build(name: str) -> torch.nn.Module:
    """Instantiate a small config (the way LightningCLI resolves ``class_path``/``init_args``)."""
    return config_class(name)(**SMALL_CONFIGS[name]["init_args"])


def config_class(name: str) -> type:
    """The denoiser class of a small config, without building it."""
    module, cls = SMALL_CONFIGS[name]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def n_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

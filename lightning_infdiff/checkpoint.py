"""Safe checkpoint loading and safetensors export/import.

Checkpoints are read with ``torch.load(weights_only=True)``: a crafted file that would run code
while unpickling is refused. The module is rebuilt from the configuration LightningCLI stored in
the checkpoint (plain data: class paths and arguments), never from pickled objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import instantiate_module
from safetensors.torch import load_file, save

from .callbacks.atomic_checkpoint import atomic_write_bytes, load_error
from .errors import UsageError
from .lit.module import DiffusionModule

__all__ = [
    "load_checkpoint", "load_module", "export_safetensors", "load_safetensors", "module_config", "upgrade_config",
]

#: model arguments that became callback settings (``samples:``) and are not part of the model any more
_MOVED_TO_CALLBACKS = ("sample_every_n_val", "num_samples", "sample_grids", "sample_seed")
_AUTOENCODER = "lightning_infdiff.denoisers.SparseAutoencoder"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with weights-only unpickling.

    Raises:
        FileNotFoundError: if the file does not exist.
        UsageError (a ``ValueError``): if the file is corrupt, not a Lightning checkpoint, or holds
            objects that are not plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable files
        raise load_error(path, err) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A model configuration written before the module only wired, in today's terms.

    ``lr_schedule`` / ``warmup_steps`` / ``min_lr_ratio`` become ``lr_scheduler`` (WarmupCosine or
    WarmupConstant), ``sampler`` / ``sample_steps`` / ``guidance_scale`` become ``sampling``, the
    autoencoder's ``latent_prior_weight`` its ``prior_weight``; the sample-sheet settings, now the
    ``SampleGrids`` callback's, are dropped. A current configuration is returned unchanged.
    """
    hp = dict(config)
    if any(k in hp for k in ("lr_schedule", "warmup_steps", "min_lr_ratio")):
        warmup = int(hp.pop("warmup_steps", 200))
        if hp.pop("lr_schedule", "cosine") == "constant":
            hp["lr_scheduler"] = {"class_path": "lightning_infdiff.lit.WarmupConstant",
                                  "init_args": {"warmup_steps": warmup}}
            hp.pop("min_lr_ratio", None)
        else:
            hp["lr_scheduler"] = {"class_path": "lightning_infdiff.lit.WarmupCosine",
                                  "init_args": {"warmup_steps": warmup, "min_ratio": float(hp.pop("min_lr_ratio", 0.1))}}
    old_sampling = {"sampler": "sampler", "sample_steps": "steps", "guidance_scale": "guidance_scale"}
    if any(k in hp for k in old_sampling):
        hp["sampling"] = {new: hp.pop(old) for old, new in old_sampling.items() if old in hp}
    weight = hp.pop("latent_prior_weight", None)
    denoiser = hp.get("denoiser")
    if weight is not None and isinstance(denoiser, dict) and denoiser.get("class_path") == _AUTOENCODER:
        hp["denoiser"] = {**denoiser, "init_args": {**denoiser.get("init_args", {}), "prior_weight": float(weight)}}
    for key in _MOVED_TO_CALLBACKS:
        hp.pop(key, None)
    return hp


def module_config(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """The model configuration stored by LightningCLI (``hyper_parameters`` without the
    instantiator), upgraded to today's arguments (:func:`upgrade_config`)."""
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "_instantiator" not in hp or "denoiser" not in hp:
        raise ValueError(
            f"{path} has no model configuration (it was not written by `infdiff fit`): build the "
            "DiffusionModule yourself and load its 'state_dict'"
        )
    hp.pop("_instantiator")
    return upgrade_config(hp)


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """Rebuild the :class:`DiffusionModule` of a checkpoint and load its (EMA, if used) weights."""
    ckpt = load_checkpoint(path, map_location)
    config = module_config(ckpt, path)
    try:
        module = instantiate_module(DiffusionModule, config)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"the model configuration stored in {path} could not be instantiated: {err}") from err
    try:
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path} does not match its own configuration: {str(err)[:500]}") from err
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match its own configuration: missing keys {missing[:5]}, unexpected {unexpected[:5]}"
        )
    # the grid the data was served at (for "sample at 2x"); absent when trained without a DataModule
    res = (ckpt.get("datamodule_hyper_parameters") or {}).get("resolution")
    module.data_resolution = int(res) if res is not None else None
    return module.eval()


def export_safetensors(path: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's weights (EMA weights when EMA was used) and config to safetensors."""
    ckpt = load_checkpoint(path)
    config = module_config(ckpt, path)
    tensors = {k: v.contiguous() for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    data = save(tensors, metadata={"infdiff_config": json.dumps(config), "format": "lightning_infdiff/1"})
    return atomic_write_bytes(data, out)  # a failed export never destroys an earlier file


def load_safetensors(path: str | Path) -> DiffusionModule:
    """Rebuild a module from a file written by :func:`export_safetensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "infdiff_config" not in meta:
        raise ValueError(f"{path} has no lightning_infdiff configuration in its metadata")
    module = instantiate_module(DiffusionModule, json.loads(meta["infdiff_config"]))
    module.load_state_dict(load_file(str(path)), strict=True)
    return module.eval()

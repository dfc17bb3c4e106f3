"""The ``infdiff`` command: LightningCLI (fit/validate/test/predict) plus ``sample``, ``export``,
``evaluate``, ``train_classifier``, ``inpaint``, ``superres``, ``ablate`` and ``report``.

Examples::

    infdiff fit --config configs/base.yaml --config configs/data/digits.yaml --config configs/denoisers/sparse_operator.yaml
    infdiff fit --config configs/quickstart.yaml --print_config
    infdiff sample --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --scale 2 --num 16 --out samples/
    infdiff export --ckpt_path last.ckpt --out model.safetensors
    infdiff evaluate --ckpt_path last.ckpt --metrics [offline] --num_samples 1000 --resolutions [32,64]
    infdiff train_classifier --dataset digits
    infdiff inpaint --ckpt_path last.ckpt --image digit.png --mask left-half --method replace
    infdiff superres --ckpt_path last.ckpt --image small.png --scale 2
    infdiff ablate configs/ablations/denoisers.yml --out ablations/denoisers
    infdiff report ablations/denoisers
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .callbacks.samples import SampleGrids
from .data.datamodule import FieldDataModule
from .errors import UsageError, yaml_error
from .lit.module import DiffusionModule
from .malloc import pin_malloc
from .precision import PrecisionChoice, inference_precision, refuse_all_half, resolve_precision

__all__ = ["InfDiffCLI", "check_conditioning", "main", "sample_command", "export_command", "parse_grid"]

# Extra commands next to LightningCLI's fit/validate/test/predict: name -> "module:function"
# (imported only when used). Each function's typed signature and docstring is its --help.
TOOLS = {
    "sample": "lightning_infdiff.cli:sample_command",
    "export": "lightning_infdiff.cli:export_command",
    "evaluate": "lightning_infdiff.evaluate:evaluate_command",
    "train_classifier": "lightning_infdiff.evaluate:train_classifier_command",
    "inpaint": "lightning_infdiff.applications.cli_tools:inpaint_command",
    "superres": "lightning_infdiff.applications.cli_tools:superres_command",
    "posthoc_ema": "lightning_infdiff.posthoc:posthoc_ema_command",
}
#: tools with their own argument parser (``main(argv) -> exit code``) in a module of the package
MODULE_TOOLS = ("ablate", "report")


class InfDiffCLI(LightningCLI):
    """LightningCLI for :class:`DiffusionModule` and :class:`FieldDataModule`.

    The data decides the denoiser's input channels (``data.channels`` is linked to
    ``model.denoiser.init_args.in_channels``), so one denoiser overlay serves grey and RGB data.
    ``trainer.precision: null`` (the default of ``configs/base.yaml``) is resolved by the hardware
    (:func:`~lightning_infdiff.precision.resolve_precision`) before anything is built; the choice
    and its reason are printed once, written to the run's ``config.yaml`` and logged as
    hyperparameters (``precision``, ``precision_reason``). An explicit value always wins.

    ``--ckpt_path`` with a checkpoint whose model differs from the configured one (LightningCLI
    would build the checkpoint's model in its place, without a word) is refused with the keys
    that differ; ``--resume_model checkpoint`` takes the checkpoint's model and says so.
    """

    precision_choice: PrecisionChoice | None = None
    _new_log_dir = False
    _warned_weights_only = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.channels", "model.denoiser.init_args.in_channels", apply_on="instantiate")
        parser.add_lightning_class_args(SampleGrids, "samples")
        parser.add_argument(
            "--resume_model", type=Literal["refuse", "checkpoint"], default="refuse",
            help="with --ckpt_path, when the checkpoint's model differs from the configured one: refuse "
            "(list the differences) or build the checkpoint's model",
        )
        parser.add_argument(
            "--unsafe_allow_checkpoint_code", type=bool, default=False,
            help="with --weights_only false: really unpickle arbitrary objects from the checkpoint, which runs "
            "any code it holds (only for a file you made yourself)",
        )

    def before_instantiate_classes(self) -> None:
        """Resolve an unset ``trainer.precision`` by the device's capability and say so once."""
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        trainer = cfg.get("trainer")
        if trainer is None:
            return
        if not self._warned_weights_only:
            self._warned_weights_only = _check_weights_only(cfg, str(self.subcommand))
        if trainer.get("precision") is None:
            choice = resolve_precision(trainer.get("accelerator") or "auto", trainer.get("strategy") or "auto")
            trainer["precision"] = choice.precision
        else:
            refuse_all_half(trainer["precision"])
            choice = PrecisionChoice(str(trainer["precision"]), "set by trainer.precision")
        self.precision_choice = choice
        rank_zero_info(str(choice))

    def after_instantiate_classes(self) -> None:
        """Record the precision and its reason with the run's hyperparameters."""
        if self.precision_choice is None or getattr(self, "trainer", None) is None:
            return
        log_dir = self._log_dir()
        self._new_log_dir = log_dir is not None and not log_dir.exists()  # before anything is logged into it
        for logger in self.trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir:
                try:
                    check_writable(Path(save_dir))
                except OSError as err:
                    raise UsageError(f"trainer.logger.save_dir: {err.strerror or err}") from err
        record = {"precision": self.precision_choice.precision, "precision_reason": self.precision_choice.reason}
        for logger in self.trainer.loggers:
            logger.log_hyperparams(record)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path`` first and puts its model configuration in place of the
        configured one: name the file if it is broken, and refuse a different model unless told."""
        sub = self.config.get("subcommand")
        if sub:
            self._warned_weights_only = _check_weights_only(self.config[sub], sub)
        configured = _flat(self.config[sub]["model"].as_dict()) if sub and self.config[sub].get("model") else None
        try:
            self._read_checkpoint_model()
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - torch raises many types for broken files
            from .callbacks.atomic_checkpoint import refused_global, resume_error

            if sub and self.config[sub].get("unsafe_allow_checkpoint_code") and refused_global(err):
                return  # opted in: the trainer unpickles it; its model configuration cannot be read safely here
            raise resume_error(self.config[self.config.subcommand].get("ckpt_path"), err, str(sub)) from err
        if configured is None:
            return
        stored = _flat(self.config[sub]["model"].as_dict())
        differ = [k for k in sorted(set(configured) | set(stored))
                  if k not in _LINKED and configured.get(k, _MISSING) != stored.get(k, _MISSING)]
        if not differ:
            return
        ckpt = self.config[sub].get("ckpt_path")
        shown = "; ".join(f"model.{k}: configured {_show(configured.get(k, _MISSING))}, checkpoint "
                          f"{_show(stored.get(k, _MISSING))}" for k in differ[:6])
        more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
        if self.config[sub].get("resume_model") == "checkpoint":
            print(f"infdiff {sub}: --resume_model checkpoint: using the model stored in {ckpt}, which differs from "
                  f"the configured one in {shown}{more}", file=sys.stderr)
            return
        raise UsageError(
            f"--ckpt_path {ckpt} holds another model than the configs describe ({shown}{more}); "
            "change the configs to match, or pass --resume_model checkpoint to use the checkpoint's model"
        )

    def _read_checkpoint_model(self) -> None:
        """LightningCLI's reading of the checkpoint's model configuration, upgraded to today's arguments
        (:func:`~lightning_infdiff.checkpoint.upgrade_config`) so that older runs resume."""
        from .checkpoint import upgrade_config

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = dict(torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if hparams:
            self.config = self.parser.parse_object({sub: {"model": upgrade_config(hparams)}}, self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run ``subcommand``; a ``fit`` that fails before its first step leaves no log folder behind."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            log_dir = self._log_dir()
            if subcommand == "fit" and self.trainer.global_step == 0 and log_dir is not None and self._new_log_dir:
                _remove_if_only_setup_files(log_dir)
            raise

    def _log_dir(self) -> Path | None:
        logger = self.trainer.logger if getattr(self, "trainer", None) is not None else None
        if logger is None or not hasattr(logger, "log_dir"):
            return None
        try:
            return Path(logger.log_dir)
        except Exception:  # noqa: BLE001 - a logger that cannot say where it writes
            return None


def _check_weights_only(cfg: object, command: str) -> bool:
    """``--weights_only false`` needs the loud opt-in; with it, say what it does (returns whether it did)."""
    if cfg.get("weights_only") is not False:
        return False
    if not cfg.get("unsafe_allow_checkpoint_code"):
        raise UsageError(
            "--weights_only false would unpickle arbitrary objects from the checkpoint, which runs any code it "
            "holds; checkpoints of this toolkit load without it. Only for a file you made yourself, add "
            "--unsafe_allow_checkpoint_code true"
        )
    print(f"infdiff {command}: WARNING: --unsafe_allow_checkpoint_code: the checkpoint is unpickled without "
          "restrictions and can run any code it holds", file=sys.stderr)
    return True


#: what a run writes into its log folder before its first step
_SETUP_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


def _remove_if_only_setup_files(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but the files a run writes while it starts."""
    import shutil

    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if p.is_file()]
    if all(any(p.match(pattern) for pattern in _SETUP_FILES) for p in files):
        shutil.rmtree(folder, ignore_errors=True)


_MISSING = object()
#: filled in from the data when the model is built (``link_arguments``), so not the checkpoint's to decide
_LINKED = {"denoiser.init_args.in_channels"}


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            if key == "__path__":
                continue
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _show(value: object) -> str:
    return "(absent)" if value is _MISSING else repr(value)


def parse_grid(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"48x80"`` -> (48, 80)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"grid must look like 64 or 48x80, got {text!r}") from err
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 2:
        raise ValueError(f"grid must be H or HxW with sides >= 2, got {text!r}")
    return vals[0], vals[1]


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it, or raise an ``OSError`` that names it."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write to the output folder {str(folder)!r}: {err.strerror or err}") from err


def check_conditioning(num_classes: int, labels: list[int] | None, guidance_scale: float) -> None:
    """Refuse class labels and classifier-free guidance for an unconditional model (they would be
    ignored), and labels outside ``[0, num_classes)``."""
    if not num_classes and (labels or guidance_scale != 1.0):
        given = "--labels" if labels else f"--guidance_scale {guidance_scale:g}"
        raise UsageError(f"{given} needs a class-conditional model; this checkpoint's model is unconditional")
    bad = [lb for lb in labels or [] if not 0 <= lb < num_classes]
    if bad:
        raise UsageError(f"--labels must be in [0, {num_classes}), got {bad}")


def _train_grid(module: DiffusionModule) -> tuple[int, int]:
    res = getattr(module, "data_resolution", None)
    if res is None:
        raise ValueError("the checkpoint does not record the data resolution: pass --grid instead of --scale")
    return int(res), int(res)


def sample_command(
    ckpt_path: str,
    out: str = "samples",
    grid: str | None = None,
    scale: float | None = None,
    num: int = 16,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "dpmpp_2m",
    steps: int = 25,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    labels: list[int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    clip: Literal["none", "static", "dynamic"] = "static",
    deblur: bool = True,
    precision: Literal["auto", "32", "bf16", "16"] = "auto",
    device: str = "cpu",
    canvas: Literal["wide", "stretch"] = "wide",
    guidance_interval: list[float] | None = None,
    guidance_rescale: float | None = None,
) -> Path:
    """Draw samples from a checkpoint at any resolution and aspect ratio.

    Writes one PNG per sample (``<out>/<H>x<W>/seed<k>.png``) and a grid image
    (``<out>/grid_<H>x<W>.png``). Sample ``i`` uses seed ``seed + i`` whatever the batch size.

    Args:
        ckpt_path: checkpoint written by ``infdiff fit`` (loaded with weights-only unpickling).
        out: output folder.
        grid: sampling grid, ``H`` or ``HxW`` (e.g. ``64`` or ``48x96``).
        scale: alternatively, a factor of the training resolution (e.g. 2 for 2x).
        num: number of samples.
        sampler: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        steps: solver steps.
        eta: DDIM stochasticity.
        guidance_scale: classifier-free guidance scale (conditional models; 1 = none).
        labels: class labels (cycled over the samples); default ``0, 1, 2, ...`` for conditional models.
        seed: first seed.
        batch_size: samples per forward batch.
        clip: x0 clipping during sampling.
        deblur: Wiener-deblur mollified samples for display.
        precision: ``auto`` (by the hardware: bf16 where the device has native bf16, else fp32;
            see :mod:`lightning_infdiff.precision`), ``32``, ``bf16`` or ``16`` (CUDA), for the network only.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        canvas: a non-square grid is a wider view with square pixels (``wide``) or the training
            square stretched to it (``stretch``); square grids are the same either way.
        guidance_interval: ``[lo, hi]``: guide only at logSNR in this interval (default: the model's).
        guidance_rescale: guidance rescale ``phi`` in ``[0, 1]`` (default: the model's).
    """
    from tqdm.auto import tqdm

    from .checkpoint import load_module
    from .images import save_grid, save_images

    if num < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"num, steps and batch_size must be positive, got {num}, {steps}, {batch_size}")
    if (grid is None) == (scale is None):
        raise ValueError("give exactly one of --grid (e.g. 64 or 48x96) and --scale (e.g. 2)")
    module = load_module(ckpt_path).to(device)
    if grid is not None:
        hw = parse_grid(grid)
    else:
        if scale is None or scale <= 0:
            raise ValueError(f"--scale must be positive, got {scale}")
        base = _train_grid(module)
        hw = (max(2, round(base[0] * scale)), max(2, round(base[1] * scale)))
    check_conditioning(module.denoiser.num_classes, labels, guidance_scale)
    out_dir = Path(out)
    check_writable(out_dir)  # before the (slow) sampling
    images = []
    dev = torch.device(device)
    choice = inference_precision(dev, precision)
    print(choice, file=sys.stderr)
    for start in tqdm(range(0, num, batch_size), desc=f"sampling {hw[0]}x{hw[1]}"):
        seeds = list(range(seed + start, seed + min(num, start + batch_size)))
        if module.denoiser.num_classes:
            pool = labels or list(range(module.denoiser.num_classes))
            lab = torch.tensor([pool[(s - seed) % len(pool)] for s in seeds], device=dev)
        else:
            lab = None
        with choice.autocast(dev):
            x = module.generate(hw, seeds, sampler, steps, eta, guidance_scale, lab, clip, deblur, canvas=canvas,
                                guidance_interval=guidance_interval, guidance_rescale=guidance_rescale)
        save_images(x, out_dir / f"{hw[0]}x{hw[1]}", [f"seed{s}" for s in seeds])
        images.append(x)
    grid_path = out_dir / f"grid_{hw[0]}x{hw[1]}.png"
    save_grid(torch.cat(images), grid_path)
    print(f"wrote {num} samples at {hw[0]}x{hw[1]} to {out_dir / f'{hw[0]}x{hw[1]}'} and the grid {grid_path}")
    return grid_path


def export_command(ckpt_path: str, out: str) -> Path:
    """Export a checkpoint's weights (EMA weights if EMA was used) and config to safetensors.

    Args:
        ckpt_path: checkpoint written by ``infdiff fit``.
        out: output ``.safetensors`` file.
    """
    from .checkpoint import export_safetensors

    path = export_safetensors(ckpt_path, out)
    print(f"wrote {path}")
    return path


def _run_tool(name: str, argv: list[str]) -> None:
    import importlib

    module_name, func = TOOLS[name].split(":")
    fn = getattr(importlib.import_module(module_name), func)
    parser = ArgumentParser(prog=f"infdiff {name}", description=fn.__doc__.split("\n")[0])
    parser.add_function_arguments(fn, fail_untyped=True)
    cfg = parser.parse_args(argv)
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "__path__"}
    try:
        fn(**kwargs)
    except (ValueError, OSError, ImportError, NotImplementedError) as err:
        print(f"infdiff {name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def main(args: list[str] | None = None) -> None:
    """Entry point of ``infdiff`` and ``python -m lightning_infdiff``."""
    pin_malloc(respect_env=True)
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in MODULE_TOOLS:
        from importlib import import_module

        code = import_module(f".{argv[0]}", __package__).main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    if argv and argv[0] in TOOLS:
        _run_tool(argv[0], argv[1:])
        return
    try:
        check_config_files(argv)
        InfDiffCLI(
            DiffusionModule,
            FieldDataModule,
            args=None if args is None else argv,  # None: LightningCLI reads sys.argv itself (no warning about both)
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "description": "lightning_infdiff: resolution-independent diffusion. Extra commands: "
                + ", ".join(f"'infdiff {t} --help'" for t in (*TOOLS, *MODULE_TOOLS)) + ".",
            },
        )
    except (UsageError, OSError) as err:  # bad input or environment (files, folders): not a bug to report
        command = next((a for a in argv if not a.startswith("-")), None)
        message = str(err).strip().replace("\n", " ")
        print(f"infdiff {command + ': ' if command else ''}error: {message}", file=sys.stderr)
        raise SystemExit(2) from err


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config`` file first, so that a YAML syntax error names its file (jsonargparse
    reports ``"<unicode string>"``, which says nothing when several files are stacked)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        file = Path(path)
        if not file.is_file():
            continue  # jsonargparse reports it, or it is inline YAML
        try:
            yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            raise yaml_error(path, err) from err

"""Numerical precision chosen by the hardware: one rule for training and every inference path.

The rule (``../shared/design.md`` section 6, issue 32):

============================================  ==============
device                                        precision
============================================  ==============
CUDA device that supports bf16                ``bf16-mixed``
CUDA device without bf16 (before Ampere)      ``16-mixed``
CPU with native bf16 (AVX512-BF16, AMX-BF16,  ``bf16-mixed``
or the Arm BF16 extension)
any other CPU or device, or cannot tell       ``32-true``
============================================  ==============

A CPU without bf16 instructions runs autocast's bf16 kernels by converting to fp32 and back
around every op, which makes the default training step slower than plain fp32
(``benchmarks/bench_precision_choice.py``, ``benchmarks/results/precision_choice/``).
Capabilities are read from torch (``torch.cpu.get_capabilities``, ``torch.cuda.is_bf16_supported``)
and, where torch does not say, from ``/proc/cpuinfo``; never from the CPU's name.

Training: ``trainer.precision: null`` (``configs/base.yaml``) asks :class:`~lightning_infdiff.cli.InfDiffCLI`
to resolve it with :func:`resolve_precision` at start-up; an explicit value always wins. Inference
(``infdiff sample``/``evaluate``/``inpaint``/``superres``, the quickstart, :class:`FIDCallback`,
the notebooks) enters :func:`inference_autocast`, which applies the same rule for ``"auto"``.
Only the network runs in reduced precision: the process maths turns autocast off itself.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError

__all__ = [
    "PrecisionChoice",
    "cpu_bf16_support",
    "cuda_bf16_support",
    "resolve_precision",
    "inference_precision",
    "inference_autocast",
    "INFERENCE_PRECISIONS",
]

#: values of the inference commands' ``--precision`` option
INFERENCE_PRECISIONS = ("auto", "32", "bf16", "16")

#: x86 flag (as ``torch.cpu.get_capabilities`` and ``/proc/cpuinfo`` name it) -> name in messages
_X86_BF16 = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64")

#: Lightning precision names by what they autocast to (``None``: no autocast)
_DTYPES: dict[str, torch.dtype | None] = {
    "32-true": None, "32": None, "64-true": None, "64": None,
    "bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16, "16": torch.float16, "16-true": torch.float16,
}
_CANONICAL = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: Lightning's name for it and the reason it was chosen."""

    precision: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype of the network (``None``: full fp32)."""
        return _DTYPES.get(self.precision)

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
        """Autocast to :attr:`dtype` on ``device`` (no autocast for fp32)."""
        dev = torch.device(device)
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=self.dtype)

    def __str__(self) -> str:
        return f"precision {self.precision}: {self.reason}"


# ------------------------------------------------------------------ capability queries
def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """Flags of the first CPU in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def _torch_cpu_capabilities() -> dict[str, Any] | None:
    """``torch.cpu.get_capabilities()``, or None where this torch does not offer it."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is None:
        return None
    try:
        caps = query()
    except Exception:  # noqa: BLE001 - a failing query means "torch cannot tell"
        return None
    return dict(caps) if isinstance(caps, Mapping) else None


def cpu_bf16_support(machine: str | None = None) -> tuple[bool | None, str]:
    """Whether this CPU has native bf16 arithmetic, and the evidence, as ``(native, evidence)``.

    ``native`` is ``None`` when neither torch nor ``/proc/cpuinfo`` can tell. x86: AVX512-BF16 or
    AMX-BF16 (torch's capability query, else the kernel's CPU flags); Arm: the BF16 extension
    (``/proc/cpuinfo`` feature ``bf16``).
    """
    machine = (machine or platform.machine()).lower()
    if machine in _X86:
        caps = _torch_cpu_capabilities()
        if caps is not None and all(k in caps for k in _X86_BF16):
            found = [name for key, name in _X86_BF16.items() if caps[key]]
            source = "torch.cpu.get_capabilities"
        else:
            flags = _cpuinfo_flags()
            if flags is None:
                return None, f"cannot tell whether this {machine} CPU has native bf16 (no torch query, no /proc/cpuinfo)"
            found = [name for key, name in _X86_BF16.items() if key in flags]
            source = "/proc/cpuinfo"
        if found:
            return True, f"this CPU has native bf16 ({'/'.join(found)}, from {source})"
        return False, f"this CPU has no native bf16 (no AVX512-BF16/AMX, from {source})"
    if machine in _ARM:
        flags = _cpuinfo_flags()
        if flags is None:
            return None, f"cannot tell whether this {machine} CPU has native bf16 (no /proc/cpuinfo)"
        if "bf16" in flags:
            return True, "this CPU has native bf16 (Arm BF16 extension, from /proc/cpuinfo)"
        return False, "this CPU has no native bf16 (no Arm BF16 extension, from /proc/cpuinfo)"
    return None, f"cannot tell whether a {machine or 'unknown'} CPU has native bf16"


def _cuda_query() -> tuple[bool, str]:
    try:
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation (and reports native support only)
        ok = torch.cuda.is_bf16_supported()
    return bool(ok), torch.cuda.get_device_name(torch.cuda.current_device())


def cuda_bf16_support(fork_safe: bool = False) -> tuple[bool, str]:
    """Whether the current CUDA device supports bf16 natively, and the device's name.

    Args:
        fork_safe: ask in a child process when CUDA is not initialised yet, so that fork-based
            strategies (``ddp_fork``, ``ddp_notebook``) can still start their processes.
    """
    if not fork_safe or torch.cuda.is_initialized():
        return _cuda_query()
    code = "import torch, lightning_infdiff.precision as p; ok, name = p._cuda_query(); print(int(ok)); print(name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0] == "1", out[1]


# ------------------------------------------------------------------ the rule
def _device_kind(accelerator: object) -> str:
    """``cuda``, ``mps``, ``cpu`` or another name, for a Lightning ``accelerator`` value or a device."""
    if isinstance(accelerator, torch.device):
        return accelerator.type
    if isinstance(accelerator, str):
        name = accelerator
    else:  # an accelerator object, or its parsed ``class_path`` config
        name = str(getattr(accelerator, "class_path", None) or type(accelerator).__name__).rsplit(".", 1)[-1]
    name = name.lower().removesuffix("accelerator").split(":")[0] or "custom"
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu" if name == "auto" else "gpu"
    return name


def refuse_all_half(precision: object) -> None:
    """Refuse ``bf16-true`` / ``16-true``: they cast the whole module, but the process maths
    (schedules, DCT, samplers) must stay in float32."""
    if str(precision) in ("bf16-true", "16-true"):
        raise UsageError(
            f"trainer.precision={str(precision)!r} is not supported: it casts the whole model to half precision, "
            "but the diffusion maths must stay in float32; use 'bf16-mixed' (or '16-mixed', with loss scaling on "
            "GPU), or leave it unset to choose by the hardware"
        )


def resolve_precision(accelerator: object = "auto", strategy: object = "auto") -> PrecisionChoice:
    """The precision the hardware should train and sample in (the table in the module docstring).

    Args:
        accelerator: Lightning's ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``,
            ``mps``, an accelerator object) or a ``torch.device``.
        strategy: Lightning's ``trainer.strategy``; fork-based strategies ask CUDA in a child process.
    """
    kind = _device_kind(accelerator)
    if kind == "cuda":
        if not torch.cuda.is_available():
            return PrecisionChoice("32-true", "no CUDA device is visible")
        fork = isinstance(strategy, str) and ("fork" in strategy or "notebook" in strategy)
        ok, name = cuda_bf16_support(fork_safe=fork)
        if ok:
            return PrecisionChoice("bf16-mixed", f"the CUDA device ({name}) supports bf16")
        return PrecisionChoice("16-mixed", f"the CUDA device ({name}) has no bf16; fp16 with loss scaling")
    if kind == "cpu":
        native, evidence = cpu_bf16_support()
        if native:
            return PrecisionChoice("bf16-mixed", evidence)
        if native is None:
            return PrecisionChoice("32-true", f"{evidence}; fp32 is the safe choice")
        return PrecisionChoice("32-true", evidence)
    return PrecisionChoice("32-true", f"no mixed-precision rule for the {kind!r} accelerator; fp32")


def inference_precision(device: torch.device | str, precision: str = "auto") -> PrecisionChoice:
    """The precision an inference path runs the network in on ``device``.

    Args:
        device: where the network runs.
        precision: ``auto`` (the hardware rule, :func:`resolve_precision`), ``32``, ``bf16``,
            ``16``, or a Lightning precision name such as a trainer's ``bf16-mixed``.

    Raises:
        ValueError: for an unknown name, or fp16 on a CPU (use ``bf16`` or ``32`` there).
    """
    kind = torch.device(device).type
    if precision == "auto":
        return resolve_precision(torch.device(kind))
    name = _CANONICAL.get(str(precision), str(precision))
    if name not in _DTYPES:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)} (or a Lightning precision), "
                         f"got {precision!r}")
    if _DTYPES[name] is torch.float16 and kind == "cpu":
        raise ValueError(f"precision {precision!r} (fp16 autocast) is for CUDA devices; on the CPU use 'bf16' or '32'")
    return PrecisionChoice(name, "asked for")


def inference_autocast(device: torch.device | str, precision: str = "auto",
                       announce: Callable[[str], object] | None = None) -> contextlib.AbstractContextManager[Any]:
    """Context for running the network in inference: autocast per :func:`inference_precision`.

    Args:
        device: where the network runs.
        precision: as for :func:`inference_precision`.
        announce: called once with the choice and its reason (e.g. ``print``), if given.
    """
    choice = inference_precision(device, precision)
    if announce is not None:
        announce(str(choice))
    return choice.autocast(device)

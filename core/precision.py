"""Mixed precision chosen by what the device can do.

bfloat16 autocast is a speed-up only where the hardware computes in bf16:
CUDA GPUs from Ampere on (and ROCm), x86 CPUs with AVX-512 BF16 or AMX, ARM
CPUs with the BF16 extension. Elsewhere torch emulates it, and on a two-core
AVX2 EPYC (issue #13) a demo training step took 20-21 s in bf16 against
0.95-1.1 s in float32, and one 1600x256 strip's forward pass 38-41 s against
0.38-0.42 s. So ``amp: auto`` (the default of ``train.amp`` and
``predict.amp``) asks the device:

==========================  =====================================
device                      auto resolves to
==========================  =====================================
CUDA with native bf16       ``bf16``
CUDA without (V100, T4)     ``fp16`` (training adds a GradScaler)
CPU with native bf16        ``bf16``
any other CPU               ``off`` (float32)
==========================  =====================================

An explicit ``bf16`` where it is emulated still runs, with one warning per
setting and process. :func:`resolve_amp` is the one place that decides.
"""

from __future__ import annotations

import platform
import subprocess
import warnings
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
EMULATED_BF16_COST = ("on a two-core AVX2 CPU, bf16 autocast measured about 20x slower to train and "
                      "100x slower to infer than float32")


class EmulatedBF16Warning(UserWarning):
    """bf16 autocast was asked for on a device that emulates it."""


_warned: set[tuple[str, str]] = set()  # (key, device type) already warned about in this process


@dataclass(frozen=True)
class Precision:
    """The resolved choice: ``amp`` is off | bf16 | fp16, never auto."""

    amp: str
    requested: str  # what the config said: auto | off | bf16 | fp16
    reason: str  # why, in words: the device and what it supports
    device: str

    @property
    def dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    @property
    def grad_scaler(self) -> bool:
        """fp16 training needs a GradScaler; bf16 and float32 do not."""
        return self.amp == "fp16"

    def autocast(self) -> AbstractContextManager:
        """A new autocast context, a no-op for float32."""
        return torch.autocast(torch.device(self.device).type, dtype=self.dtype, enabled=self.dtype is not None)

    def describe(self) -> str:
        name = {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.amp]
        return f"{name} ({self.requested}: {self.reason})"

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_bf16_support() -> tuple[bool, str]:
    """(native, why): whether this CPU computes bf16 in hardware, in words
    naming torch's capability string and the feature found or missing."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        native = _arm_bf16()
        return native, f"ARM CPU {'with' if native else 'without'} the BF16 extension"
    capability = torch.backends.cpu.get_cpu_capability()
    features = [name for name, query in (("AVX512-BF16", torch.cpu._is_avx512_bf16_supported),
                                         ("AMX", torch.cpu._is_amx_tile_supported)) if query()]
    if features and capability.startswith("AVX512"):
        return True, f"CPU capability {capability} with {' and '.join(features)}: native bf16"
    if features:  # e.g. ATEN_CPU_CAPABILITY=avx2 keeps torch's kernels off AVX-512
        return False, f"CPU capability {capability} (torch's kernels do not use {' and '.join(features)}): bf16 emulated"
    return False, f"CPU capability {capability}, no AVX512-BF16 or AMX: bf16 emulated"


def cuda_bf16_support(device: torch.device) -> tuple[bool, str]:
    """(native, why) for one CUDA device: bf16 units from compute
    capability 8.0 (Ampere) on; ROCm devices have them."""
    if torch.version.hip:
        return True, f"ROCm device {torch.cuda.get_device_name(device)}: native bf16"
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if major >= 8:
        return True, f"{name} (compute capability {major}.{minor}): native bf16"
    return False, f"{name} (compute capability {major}.{minor}, before Ampere): no native bf16"


def resolve_amp(amp: str, device, key: str = "train.amp") -> Precision:
    """What ``amp`` (auto | off | bf16 | fp16) means on ``device``. ``key``
    names the setting in errors and warnings. Explicit fp16 off CUDA is an
    error (it needs a GradScaler and CUDA kernels); explicit bf16 on a device
    without native bf16 warns once per ``key`` and device type."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"{key}={amp!r} is not one of {list(AMP_CHOICES)}")
    device = torch.device(device)
    if device.type == "cuda":
        native, why = cuda_bf16_support(device)
        auto = "bf16" if native else "fp16"
    elif device.type == "cpu":
        native, why = cpu_bf16_support()
        auto = "bf16" if native else "off"
    else:
        native, why, auto = False, f"{device.type} device: precision not probed", "off"
    if amp == "auto":
        return Precision(auto, amp, why, str(device))
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{key}=fp16 needs CUDA (it uses a GradScaler); use {key}=auto or bf16 on the CPU")
    if amp == "bf16" and not native:
        _warn_emulated(key, device, why)
    return Precision(amp, amp, why, str(device))


def _warn_emulated(key: str, device: torch.device, why: str) -> None:
    if (key, device.type) in _warned:
        return
    _warned.add((key, device.type))
    cost = EMULATED_BF16_COST if device.type == "cpu" else "bf16 is emulated there and slower than float32"
    warnings.warn(f"{key}=bf16 on {why}. It runs, but {cost}. Set {key}=auto (float32 here) "
                  f"or {key}=off to use float32.", EmulatedBF16Warning, stacklevel=3)


def _arm_bf16() -> bool:
    """The BF16 extension on ARM: ``bf16`` in /proc/cpuinfo's Features
    (Linux) or FEAT_BF16 in sysctl (macOS, Apple M2 on)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return any(line.startswith("Features") and "bf16" in line.split() for line in cpuinfo.read_text().splitlines())
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


def machine_summary() -> str:
    """One line for benchmark headers: CPU capability, native bf16, threads."""
    native, _ = cpu_bf16_support()
    return (f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if native else 'no'}, "
            f"{torch.get_num_threads()} torch threads")

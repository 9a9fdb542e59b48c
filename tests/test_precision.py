"""amp=auto: one function decides the precision from what the device can do
(torch's capability queries, monkeypatched here to each kind of machine)."""

import warnings
from pathlib import Path

import pytest
import torch

from core import precision
from core.config import load_config
from core.precision import EmulatedBF16Warning, cpu_bf16_support, resolve_amp

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs/kaggle").glob("*.yaml"))


def fake_cpu(monkeypatch, capability: str, avx512_bf16: bool = False, amx: bool = False, machine: str = "x86_64"):
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def fake_cuda(monkeypatch, major: int, minor: int = 0, name: str = "Fake GPU"):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warning afresh."""
    monkeypatch.setattr(precision, "_warned", set())


@pytest.mark.parametrize("major, expected", [(8, "bf16"), (9, "bf16"), (7, "fp16"), (6, "fp16")])
def test_auto_on_cuda_by_compute_capability(monkeypatch, major, expected):
    fake_cuda(monkeypatch, major, name="A100" if major >= 8 else "V100")
    chosen = resolve_amp("auto", "cuda:0")
    assert chosen.amp == expected and chosen.requested == "auto"
    assert chosen.grad_scaler == (expected == "fp16")  # fp16 training adds a GradScaler, bf16 does not
    assert f"compute capability {major}.0" in chosen.reason


def test_auto_on_rocm_is_bf16(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "MI300X")
    assert resolve_amp("auto", "cuda").amp == "bf16"


@pytest.mark.parametrize("capability, avx512_bf16, amx, expected", [
    ("AVX512", True, False, "bf16"),  # Cooper Lake, Zen 4
    ("AVX512", True, True, "bf16"),  # Sapphire Rapids
    ("AVX512", False, True, "bf16"),  # AMX alone
    ("AVX512", False, False, "off"),  # Skylake-X: AVX-512 without its bf16 instructions
    ("AVX2", False, False, "off"),  # most laptops, Zen 2/3, Intel before Cooper Lake
    ("AVX2", True, False, "off"),  # ATEN_CPU_CAPABILITY=avx2 keeps torch off the bf16 units
    ("DEFAULT", False, False, "off"),
])
def test_auto_on_x86_cpus(monkeypatch, capability, avx512_bf16, amx, expected):
    fake_cpu(monkeypatch, capability, avx512_bf16, amx)
    chosen = resolve_amp("auto", "cpu")
    assert chosen.amp == expected and not chosen.grad_scaler
    assert capability in chosen.reason and chosen.describe().startswith("float32" if expected == "off" else "bf16")


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "off")])
def test_auto_on_arm_cpus(monkeypatch, has_bf16, expected):
    fake_cpu(monkeypatch, "DEFAULT", machine="aarch64")
    monkeypatch.setattr(precision, "_arm_bf16", lambda: has_bf16)
    assert resolve_amp("auto", "cpu").amp == expected


def test_explicit_choices_are_kept(monkeypatch):
    fake_cpu(monkeypatch, "AVX512", avx512_bf16=True)
    assert resolve_amp("off", "cpu").amp == "off"
    assert resolve_amp("bf16", "cpu").amp == "bf16"
    fake_cuda(monkeypatch, 9)
    assert resolve_amp("fp16", "cuda").amp == "fp16"
    with pytest.raises(ValueError, match="predict.amp=fp16 needs CUDA"):
        resolve_amp("fp16", "cpu", key="predict.amp")
    with pytest.raises(ValueError, match="'fp8' is not one of"):
        resolve_amp("fp8", "cpu")


def test_explicit_bf16_on_an_avx2_cpu_runs_and_warns_once(monkeypatch):
    fake_cpu(monkeypatch, "AVX2")
    with pytest.warns(EmulatedBF16Warning) as caught:
        chosen = resolve_amp("bf16", "cpu", key="predict.amp")
    assert chosen.amp == "bf16"
    message = str(caught[0].message)
    assert "predict.amp=bf16" in message and "20x slower to train" in message and "predict.amp=auto" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_amp("bf16", "cpu", key="predict.amp")  # the same key again: no second warning
    with pytest.warns(EmulatedBF16Warning, match="train.amp=bf16"):
        resolve_amp("bf16", "cpu", key="train.amp")  # another key warns on its own


def test_bf16_where_native_does_not_warn(monkeypatch):
    fake_cpu(monkeypatch, "AVX512", avx512_bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("bf16", "cpu").amp == "bf16"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_runs_float32_on_an_avx2_cpu_and_bf16_where_native(monkeypatch, path):
    if path.name.startswith("gan_"):  # the GAN's own schema (core/gan_config.py): one train.amp
        from core.gan_config import load_gan_config

        gan = load_gan_config(path)
        settings = {"train.amp": gan.train.amp}
    else:
        cfg = load_config(path)
        settings = {"train.amp": cfg.train.amp, "predict.amp": cfg.predict.amp}
    assert set(settings.values()) == {"auto"}
    fake_cpu(monkeypatch, "AVX2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for key, amp in settings.items():
            assert resolve_amp(amp, "cpu", key=key).amp == "off"
    fake_cpu(monkeypatch, "AVX512", avx512_bf16=True)
    for key, amp in settings.items():
        assert resolve_amp(amp, "cpu", key=key).amp == "bf16"


def test_this_machine_is_described_with_torchs_own_queries():
    native, why = cpu_bf16_support()
    assert torch.backends.cpu.get_cpu_capability() in why or "ARM" in why
    assert resolve_amp("auto", "cpu").amp == ("bf16" if native else "off")


def test_autocast_is_a_no_op_in_float32_and_casts_in_bf16():
    x = torch.randn(2, 4)
    with resolve_amp("off", "cpu").autocast():
        assert (x @ x.T).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmulatedBF16Warning)
        with resolve_amp("bf16", "cpu").autocast():
            assert (x @ x.T).dtype == torch.bfloat16

"""``model.dtype: auto``: bfloat16 where the device computes it natively, float32 elsewhere and for
the built-in tiny model; explicit dtypes as given. The hardware probes are patched, so both
branches are checked on any host; adapters, their optimizer and the value head stay float32."""

import contextlib

import pytest
import torch

from marft.compose import build_envs, build_team_model, load_config, resolve
from marft.config import LoraSettings, ModelConfig, TinyModelConfig
from marft.models import TeamModel, load_base, loading, resolve_dtype
from marft.models.loading import cpu_has_bf16  # the real probe (conftest patches the module's)
from marft.plan import model_shape, plan
from tests.conftest import CORPUS, make_team_model, small_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NAMED = "HuggingFaceTB/SmolLM2-135M-Instruct"


def bf16_cpu(monkeypatch, has: bool) -> None:
    monkeypatch.setattr(loading, "cpu_has_bf16", lambda: has)


def test_auto_is_bfloat16_for_a_named_model_on_a_bf16_cpu_and_float32_for_tiny(monkeypatch):
    bf16_cpu(monkeypatch, True)
    assert resolve_dtype("auto", CPU, NAMED) == torch.bfloat16
    assert resolve_dtype("auto", CPU, "/some/local/folder") == torch.bfloat16
    assert resolve_dtype("auto", CPU, "tiny") == torch.float32


def test_auto_is_float32_on_a_cpu_without_bf16(monkeypatch):
    bf16_cpu(monkeypatch, False)
    assert resolve_dtype("auto", CPU, NAMED) == torch.float32
    assert resolve_dtype("auto", CPU, "tiny") == torch.float32


@pytest.mark.parametrize("has", [True, False])
@pytest.mark.parametrize("model_name", [NAMED, "tiny"])
@pytest.mark.parametrize("device", [CPU, CUDA])
def test_explicit_dtypes_are_used_as_given(monkeypatch, has, model_name, device):
    bf16_cpu(monkeypatch, has)
    monkeypatch.setattr(loading, "cuda_has_bf16", lambda device: has)
    for name, dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]:
        assert resolve_dtype(name, device, model_name) == dtype


def test_auto_on_cuda_follows_the_gpu_and_keeps_tiny_float32(monkeypatch):
    bf16_cpu(monkeypatch, False)  # the CPU's answer does not matter on a GPU
    monkeypatch.setattr(loading, "cuda_has_bf16", lambda device: True)
    assert resolve_dtype("auto", CUDA, NAMED) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda:1"), NAMED) == torch.bfloat16
    assert resolve_dtype("auto", CUDA, "tiny") == torch.float32
    monkeypatch.setattr(loading, "cuda_has_bf16", lambda device: False)  # pre-Ampere
    assert resolve_dtype("auto", CUDA, NAMED) == torch.float32


def test_native_bf16_given_skips_the_probes_and_other_devices_are_float32(monkeypatch):
    def probe(*a):
        raise AssertionError("the hardware was asked")

    monkeypatch.setattr(loading, "cpu_has_bf16", probe)
    monkeypatch.setattr(loading, "cuda_has_bf16", probe)
    assert resolve_dtype("auto", CUDA, "shape:qwen2.5-7b", native_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", CPU, NAMED, native_bf16=False) == torch.float32
    assert resolve_dtype("auto", CUDA, "tiny", native_bf16=True) == torch.float32
    assert resolve_dtype("auto", torch.device("mps"), NAMED) == torch.float32


def test_cpu_has_bf16_asks_torch_and_tolerates_missing_or_failing_probes(monkeypatch):
    assert isinstance(cpu_has_bf16(), bool)  # this host's answer, whatever it is
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_bf16() is True

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_has_bf16() is True


def test_cuda_has_bf16_needs_cuda_and_native_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.cuda_has_bf16(CUDA) is False
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return not including_emulation  # an emulating GPU: supported only with emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert loading.cuda_has_bf16(CUDA) is True and asked == [False]  # native only


def test_a_run_resolves_auto_the_same_way_and_float32_forces_it(monkeypatch):
    bf16_cpu(monkeypatch, True)
    assert resolve(load_config("demo")).dtype == torch.float32  # tiny
    assert resolve(load_config("math_single")).dtype == torch.bfloat16  # SmolLM2 on a bf16 CPU
    assert resolve(load_config("math_single", ["model.dtype=float32"])).dtype == torch.float32
    bf16_cpu(monkeypatch, False)
    assert resolve(load_config("math_single")).dtype == torch.float32


def test_marft_plan_counts_the_base_in_the_dtype_a_run_would_use(monkeypatch):
    def base_bytes(*overrides, gpu=None):
        cfg = load_config("demo", ["model.name=shape:qwen2.5-0.5b", *overrides])
        shape = model_shape(cfg)
        return plan(cfg, shape, prompt_tokens=100, gpu_memory_gb=gpu)[0].items["base"] / shape.base_params

    bf16_cpu(monkeypatch, True)
    assert base_bytes() == 2 and base_bytes("model.dtype=float32") == 4
    bf16_cpu(monkeypatch, False)
    assert base_bytes() == 4 and base_bytes(gpu=80) == 2  # a GPU plan assumes native bf16
    assert base_bytes("model.dtype=float32", gpu=80) == 4
    assert base_bytes("model.dtype=float16") == 2


def assert_float32_trainables(model: TeamModel) -> None:
    assert {p.dtype for _, p in model.base_parameters()} == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    for role in model.roles:
        assert {p.dtype for p in model.adapter_parameters(role)} == {torch.float32}
    assert model.value_head is not None
    assert {p.dtype for p in model.value_head.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in model.value_head.parameters())


def test_a_bfloat16_base_keeps_adapters_and_the_value_head_float32():
    base, tok = load_base(ModelConfig(name="tiny", tiny=TinyModelConfig(seed=0)), CORPUS)
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    model = TeamModel(base, tok, ["speaker", "listener"], lora, value_head_width=16, dtype=torch.bfloat16)
    assert_float32_trainables(model)
    enc = tok(["name the secret colour"], return_tensors="pt")
    features = model.critic_features(enc["input_ids"], enc["attention_mask"])
    assert features.dtype == torch.float32 and model.value_head(features).dtype == torch.float32


def named_folder(tmp_path):
    """The tiny base saved as a Hugging Face folder: a named model to ``auto``."""
    src = make_team_model()
    folder = tmp_path / "hf-model"
    src.policy.get_base_model().save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    return folder


def test_auto_loads_a_named_model_in_bfloat16_on_a_bf16_cpu(tmp_path, monkeypatch):
    """The whole path: a Hugging Face folder under ``auto`` on a (patched) bf16 CPU."""
    folder = named_folder(tmp_path)
    bf16_cpu(monkeypatch, True)
    resolved = resolve(small_config(f"model.name={folder}", "model.local_files_only=true"))
    assert resolved.dtype == torch.bfloat16
    (env,) = build_envs(resolved, 1)
    model = build_team_model(resolved, env, with_critic=True)
    assert_float32_trainables(model)


def test_a_merged_export_is_float32_under_auto_on_a_bf16_cpu(tmp_path, monkeypatch):
    """``marft export --merge`` adds the adapter's small deltas in float32 on any host."""
    from safetensors.torch import load_file

    from marft.export import export_agent
    from marft.trainer import train

    folder = named_folder(tmp_path)
    cfg = small_config(f"model.name={folder}", "model.local_files_only=true", "run.iterations=1")
    train(cfg, tmp_path / "run")
    bf16_cpu(monkeypatch, True)
    out = export_agent(tmp_path / "run", "listener", tmp_path / "merged", merge=True)
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}

"""The end-to-end benchmark's bookkeeping: the HF peer has our shapes, and the summary compares against the
faster HF dtype for speed and HF bf16 for memory. (The timings themselves are the benchmark's job.)"""

import math

import pytest
from flax import nnx

from benchmarks import e2e
from jax_flashllm.models import OPTConfig, OPTForCausalLM


@pytest.mark.parametrize("size", ["opt-125m", "opt-350m"])
def test_peer_has_our_parameter_count(size):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import OPTForCausalLM as HFOPT

    from benchmarks import hf_peer

    with torch.device("meta"):
        hf = HFOPT(hf_peer._hf_config(size))
    theirs = sum(p.numel() for p in hf.parameters())  # the tied head once
    ours = OPTForCausalLM.abstract(OPTConfig.from_name(size))
    count = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(ours)))
    assert theirs == count


def test_summary_ratios_use_the_faster_peer_and_bf16_memory():
    def row(config, tps, memory):
        return dict(size="opt-125m", config=config, decode_tokens_per_s=tps, memory_mib=memory)

    rows = [row("hf-float32", 10.0, 500.0), row("hf-bfloat16", 20.0, 250.0), row("ours-0.8", 30.0, 100.0),
            row("ours-0.8", 50.0, 100.0), row("hf-bfloat16", 18.0, 250.0)]
    out = {r["config"]: r for r in e2e.summarize(rows)}
    assert out["hf-bfloat16"]["decode_tokens_per_s"] == 19.0  # median over rounds
    assert out["ours-0.8"]["decode_tokens_per_s_runs"] == [30.0, 50.0]
    assert out["ours-0.8"]["vs_hf_best"] == pytest.approx(40.0 / 19.0, abs=1e-3)
    assert out["ours-0.8"]["hf_best"] == "hf-bfloat16"
    assert out["ours-0.8"]["memory_vs_hf_bf16"] == 0.4
    assert out["hf-float32"]["vs_hf_best"] == pytest.approx(10.0 / 19.0, abs=1e-3)


def test_labels_and_the_shared_prompt():
    assert e2e._label("f32") == "ours dense f32" and e2e._label("bf16") == "ours dense bf16"
    assert e2e._label("0.8") == "ours sparse 80%"
    assert e2e._label("0.8+head") == "ours sparse 80% + head"
    ids = e2e.prompt_ids(50272)
    assert ids.shape == (e2e.BATCH, e2e.PROMPT_LEN) and ids.min() >= 4 and ids.max() < 50271
    assert (ids == e2e.prompt_ids(50272)).all()  # every process decodes the same prompt


@pytest.mark.parametrize("kind", ["bf16+head", "0.8+tail", "f32+head"])
def test_head_pruning_follows_a_sparsity(kind):
    with pytest.raises(ValueError, match="follows a sparsity"):
        e2e.build_ours("opt-125m", kind)


def test_cuda_peer_refuses_without_a_gpu():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from benchmarks import hf_peer

    with pytest.raises(RuntimeError, match="no CUDA device"):
        hf_peer.run("opt-125m", "bfloat16", e2e.prompt_ids(50272), 2, device="cuda")

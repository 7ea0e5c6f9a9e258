"""Model definitions built on jax_flashllm's sparse layers."""

from jax_flashllm.models.opt import KVCache, OPTConfig, OPTForCausalLM

__all__ = ["KVCache", "OPTConfig", "OPTForCausalLM"]

"""Model definitions built on jax_flashllm's sparse layers."""

from jax_flashllm.models.checkpoint import CheckpointError, load_model, load_pretrained, save_model
from jax_flashllm.models.opt import KVCache, OPTConfig, OPTForCausalLM

__all__ = ["CheckpointError", "KVCache", "OPTConfig", "OPTForCausalLM", "load_model", "load_pretrained",
           "save_model"]

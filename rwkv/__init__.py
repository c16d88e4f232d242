"""skein.rwkv: the models (rwkv/models/) and the sequence-mixing ops they call (rwkv/ops/).

This package is single-device PyTorch: it imports neither lightning nor deepspeed.
"""

from skein.rwkv.models import MODELS, CausalLM, build_model, model_config_from_dict

__all__ = ["MODELS", "CausalLM", "build_model", "model_config_from_dict"]

"""Model code: config parsing, checkpoint loading, one transformer for the supported families."""
from executor.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, read_config
from executor.models.loader import LoadedModel, load_model, model_id
from executor.models.transformer import BatchInputs, CausalLM

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelConfig", "read_config", "LoadedModel", "load_model",
           "model_id", "BatchInputs", "CausalLM"]

"""The model registry. A factory is ``fn(input_shape: (C, H, W), num_classes) -> nn.Module``."""

from unlearnflow._registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register

"""cnn: two conv blocks and two linear layers, sized from the input shape."""

from torch import nn

from unlearnflow.models._registry import register_model


@register_model("cnn")
def small_cnn(input_shape, num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),  # (B, 32, H, W)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 3, padding=1),  # (B, 64, H/2, W/2)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),  # (B, num_classes) logits
    )

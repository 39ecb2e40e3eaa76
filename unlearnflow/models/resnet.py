"""resnet18: torchvision's ResNet-18, random init, with the usual small-image stem.

For 32x32 inputs the ImageNet stem (7x7 stride-2 conv + max-pool) throws away
most of the resolution, so conv1 becomes 3x3 stride 1 and the max-pool is dropped
(as in the CIFAR-10 ResNet-18 of the unlearning literature). No weights are
downloaded.
"""

from torch import nn

from unlearnflow.models._registry import register_model


@register_model("resnet18")
def resnet18(input_shape, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    c, _, _ = input_shape
    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model

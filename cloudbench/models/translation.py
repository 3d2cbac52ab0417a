"""Image-to-image GANs: the CycleGAN ResNet generator and the PatchGAN discriminator.

:class:`ResnetGenerator` is the generator of CycleGAN (Zhu et al. 2017, "Unpaired
Image-to-Image Translation using Cycle-Consistent Adversarial Networks", appendix 7.2, after
Johnson et al. 2016): ``c7s1-k``, two stride-2 down-samplings, ``blocks`` residual blocks, two
stride-2 up-samplings, ``c7s1`` to the output channels and tanh; with the published settings
(``width`` 64, 9 blocks, 3 channels in and out) it has 11,378,179 parameters.
:class:`PatchDiscriminator` is pix2pix's PatchGAN (Isola et al. 2017), which CycleGAN uses too:
with ``tail_kernel`` 4 and the published settings (``width`` 64, 3 layers, 3 channels) it is the
70 × 70 PatchGAN of 2,764,737 parameters, scoring a 30 × 30 grid of patches of a 256 × 256
image. Both use instance norm without affine parameters or running statistics (CycleGAN's
``--norm instance``), so their convolutions have biases and neither network has buffers.

:func:`init_gan_weights` is CycleGAN's initialisation (``--init_type normal``, gain 0.02).
The methods that use them: ``cyc-it`` (``baselines/cyc_it.py``: both), ``spl``
(``baselines/spl.py``: the discriminator, with ``tail_kernel`` 3).
"""

from __future__ import annotations

from torch import Tensor, nn

INIT_STD = 0.02
"""Standard deviation of CycleGAN's normal initialisation of every convolution."""


class ResidualBlock(nn.Module):
    """``x + (pad, conv 3 × 3, norm, ReLU, pad, conv 3 × 3, norm)(x)``, reflection padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: (B, ``in_channels``, H, W) -> (B, ``out_channels``, H, W)
    in (−1, 1).

    ``c7s1-width``: reflection pad 3, 7 × 7 convolution, instance norm, ReLU; two 3 × 3
    stride-2 convolutions (2 × and 4 × ``width`` channels), each with instance norm and ReLU;
    ``blocks`` :class:`ResidualBlock` of 4 × ``width`` channels; two 3 × 3 stride-2 transposed
    convolutions (output padding 1) back to ``width`` channels, each with instance norm and
    ReLU; reflection pad 3, 7 × 7 convolution to ``out_channels``, tanh. H and W must be
    multiples of 4, and at least 8 (the reflection padding of the residual blocks needs 2
    pixels a side at a quarter of the size).
    """

    size_multiple = 4

    def __init__(self, in_channels: int, out_channels: int, width: int = 64,
                 blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7),
                                   nn.InstanceNorm2d(width), nn.ReLU()]
        for factor in (1, 2):
            layers += [nn.Conv2d(width * factor, width * factor * 2, 3, stride=2, padding=1),
                       nn.InstanceNorm2d(width * factor * 2), nn.ReLU()]
        layers += [ResidualBlock(width * 4) for _ in range(blocks)]
        for factor in (4, 2):
            layers += [nn.ConvTranspose2d(width * factor, width * factor // 2, 3, stride=2,
                                          padding=1, output_padding=1),
                       nn.InstanceNorm2d(width * factor // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class PatchDiscriminator(nn.Module):
    """A PatchGAN (pix2pix, Isola et al. 2017) with instance norm: ``layers`` 4 × 4 stride-2
    convolutions (``width`` channels, doubling, at most 8 × ``width``), instance norm (not on
    the first) and LeakyReLU 0.2, then a ``tail_kernel`` stride-1 convolution (padding 1) with
    instance norm and LeakyReLU and one more to one channel: a real/fake score per patch.

    ``tail_kernel`` 4 is pix2pix's and CycleGAN's (scores (B, 1, H / 2^layers − 2,
    W / 2^layers − 2)); 3 keeps the size (B, 1, H / 2^layers, W / 2^layers), as SPL uses it.
    Instance norm (no affine, no running statistics) keeps the discriminator free of buffers
    and of batch-level statistics.
    """

    def __init__(self, channels: int, width: int = 64, layers: int = 3,
                 tail_kernel: int = 4) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = channels
        for i in range(layers):
            c_out = width * min(2 ** i, 8)
            blocks.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if i > 0:
                blocks.append(nn.InstanceNorm2d(c_out))
            blocks.append(nn.LeakyReLU(0.2))
            c_in = c_out
        c_out = width * min(2 ** layers, 8)
        blocks += [nn.Conv2d(c_in, c_out, tail_kernel, padding=1), nn.InstanceNorm2d(c_out),
                   nn.LeakyReLU(0.2), nn.Conv2d(c_out, 1, tail_kernel, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


def init_gan_weights(module: nn.Module) -> nn.Module:
    """CycleGAN's initialisation of ``module`` in place: every (transposed) convolution's
    weights drawn from N(0, 0.02²) (the global RNG), its biases 0. Returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module

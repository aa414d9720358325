"""MONAI baselines used by the benchmarks (same input/output convention as our models)."""
from monai.networks.nets import UNet


def unet(in_channels: int = 4, num_classes: int = 4, channels=(16, 32, 64, 128, 256), norm: str | None = "instance"
         ) -> UNet:
    """MONAI 3D UNet with residual units, the usual BraTS baseline configuration (instance norm); `norm` "batch"
    or None give the two U-Nets seed 003 compares SUM with (App. E: U-Net with batch norm and U-Net_NoBN, 16
    feature maps, 4 down-sampling stages)."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=2,
                norm=norm)  # type: ignore[arg-type]  # MONAI's hint omits None, which its Convolution takes: no norm


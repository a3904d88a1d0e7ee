"""Feature Pyramid Network top-down pathway with Matterport's layer names."""

from keras import layers


def build_fpn(c2, c3, c4, c5, channels=256, separable=False):
    """C2..C5 -> P2..P6.

    Args:
        c2..c5: backbone features at strides 4, 8, 16, 32 ([B, H/s, W/s, c]).
        channels: TOP_DOWN_PYRAMID_SIZE.
        separable: SEPARABLE_PYRAMID_CONVS True: the 3x3 output convs fpn_p2..fpn_p5 as
            depthwise-separable convs (same names, same output shapes).

    Returns:
        [P2, P3, P4, P5, P6], each [B, H/s, W/s, channels] for s = 4, 8, 16, 32, 64.
        Requires H and W to be multiples of 64 so the upsampled maps align.
    """
    p5 = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
        layers.Conv2D(channels, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
        layers.Conv2D(channels, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
        layers.Conv2D(channels, 1, name="fpn_c2p2")(c2)])
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    outs = [conv(channels, 3, padding="same", name=f"fpn_p{i}")(p)
            for i, p in zip((2, 3, 4, 5), (p2, p3, p4, p5))]
    p6 = layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outs[-1])
    return outs + [p6]

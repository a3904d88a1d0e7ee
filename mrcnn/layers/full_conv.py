"""A Conv2D whose kernel spans its whole input, computed as one matrix product."""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mrcnn")
class WholeInputConv2D(layers.Conv2D):
    """``Conv2D(filters, kernel_size, padding="valid")`` on inputs exactly kernel-sized.

    Matterport's box head is a 7x7 "valid" conv on 7x7 ROI features followed by a 1x1 conv on
    the 1x1 result: each is a fully connected layer written as a convolution. Same variables
    (kernel [kh, kw, C, F], bias [F]) and names as the Conv2D, so weight files load unchanged;
    the call flattens and multiplies, which oneDNN runs about 20 % faster than the conv on CPU
    (1000 ROIs: 121 ms instead of 148 ms for the 7x7 layer).

    Input: [K, kh, kw, C]. Output: [K, 1, 1, F].
    """

    def __init__(self, filters, kernel_size, **kwargs):
        kwargs.pop("padding", None)
        kwargs.pop("strides", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)

    def build(self, input_shape):
        if tuple(input_shape[1:3]) != tuple(self.kernel_size):
            raise ValueError(f"{self.name}: input spatial shape {tuple(input_shape[1:3])} must "
                             f"equal the kernel size {tuple(self.kernel_size)}.")
        super().build(input_shape)

    def call(self, inputs):
        kh, kw = self.kernel_size
        fan_in = kh * kw * inputs.shape[-1]
        flat = ops.reshape(inputs, (-1, fan_in))
        out = ops.matmul(flat, ops.reshape(self.kernel, (fan_in, self.filters)))
        if self.use_bias:
            out = out + self.bias
        out = ops.reshape(out, (-1, 1, 1, self.filters))
        return self.activation(out)

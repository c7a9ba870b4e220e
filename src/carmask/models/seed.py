"""The seed write-up's CNN: three 'same'-padded convolutions, no pooling."""

from torch import nn


class SeedCNN(nn.Sequential):
    """Conv 16@10x10 relu -> Conv 32@5x5 relu -> Conv 1@5x5 (logits)."""

    def __init__(self, in_channels: int = 6):
        super().__init__(
            # 'same' padding for an even kernel, spelled out (PyTorch pads 4 before, 5 after).
            nn.ZeroPad2d((4, 5, 4, 5)),
            nn.Conv2d(in_channels, 16, 10),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 5, padding="same"),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 5, padding="same"),
        )

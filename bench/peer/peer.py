#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench --peer`: the encoders of crates/encoder/src/arch.rs.

Times one training step (forward of a P x K batch, semi-hard triplet loss on L2-normalised
128-d encodings, backward, AdamW) and inference per image, on random inputs, with a fixed
number of CPU threads, and prints one JSON object on stdout:

    {"arch": ..., "height": ..., "width": ..., "batch": ..., "threads": ...,
     "train_images_per_sec": ..., "train_step_seconds": [...],
     "infer_images_per_sec": ..., "torch": "2.x"}

Layers (same shapes, PyTorch's default initialisation, BatchNorm momentum 0.1, eps 1e-5):

- koch:   conv 10x10 (64) ReLU, pool 2; conv 7x7 (128) ReLU, pool 2; conv 4x4 (128) ReLU,
          pool 2; conv 4x4 (256) ReLU; linear to 128. Valid convolutions with bias.
- conv4:  4 x [conv 3x3 pad 1 (64, no bias), BatchNorm, ReLU, max-pool 2]; linear to 128.
- resnet: stem conv 3x3 stride 2 (32) + BN + ReLU; basic blocks 32->32 (stride 1),
          32->64, 64->128, 128->256 (stride 2, 1x1 conv + BN shortcut); global average
          pooling; linear to 128.

Usage: python3 peer.py --arch conv4 --height 105 --width 105 --classes 32 --images 4 --steps 10
"""

import argparse
import json
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    sys.stderr.write("peer.py needs PyTorch: pip install torch numpy\n")
    sys.exit(3)


class Koch(nn.Module):
    def __init__(self, cin, h, w, dim):
        super().__init__()
        widths = [64, 128, 128, 256]
        kernels = [10, 7, 4, 4]
        self.convs = nn.ModuleList()
        c = cin
        for i, (k, out) in enumerate(zip(kernels, widths)):
            self.convs.append(nn.Conv2d(c, out, k, bias=True))
            c = out
            h, w = h - k + 1, w - k + 1
            if i < 3:
                h, w = h // 2, w // 2
        self.fc = nn.Linear(c * h * w, dim)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i + 1 < len(self.convs):
                x = F.max_pool2d(x, 2, 2)
        return self.fc(x.flatten(1))


class Conv4(nn.Module):
    def __init__(self, cin, h, w, dim, width=64, blocks=4):
        super().__init__()
        self.blocks = nn.ModuleList()
        c = cin
        for _ in range(blocks):
            self.blocks.append(
                nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            )
            c = width
            h, w = h // 2, w // 2
        self.fc = nn.Linear(width * h * w, dim)

    def forward(self, x):
        for block in self.blocks:
            x = F.max_pool2d(F.relu(block(x)), 2, 2)
        return self.fc(x.flatten(1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.down is None else self.down(x)
        return F.relu(y + s)


class Resnet(nn.Module):
    def __init__(self, cin, dim, widths=(32, 32, 64, 128, 256)):
        super().__init__()
        self.stem = nn.Conv2d(cin, widths[0], 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.blocks = nn.ModuleList(
            Block(widths[i - 1], widths[i], 1 if i == 1 else 2) for i in range(1, len(widths))
        )
        self.fc = nn.Linear(widths[-1], dim)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self, arch, cin, h, w, dim):
        super().__init__()
        if arch == "koch":
            self.net = Koch(cin, h, w, dim)
        elif arch == "conv4":
            self.net = Conv4(cin, h, w, dim)
        elif arch == "resnet":
            self.net = Resnet(cin, dim)
        else:
            raise ValueError(f"unknown arch {arch!r} (expected koch, conv4 or resnet)")

    def forward(self, x):
        return F.normalize(self.net(x), dim=1, eps=1e-12)


def semi_hard_triplet_loss(emb, labels, margin):
    """FaceNet semi-hard mining over every anchor-positive pair of the batch, squared L2."""
    sq = (emb * emb).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.t()).clamp_min(0.0)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos = same & ~eye
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    d_ap = d[a_idx, p_idx]
    d_an = d[a_idx]  # [pairs, N]
    neg = ~same[a_idx]
    inf = torch.full_like(d_an, float("inf"))
    # Semi-hard: the nearest negative farther than the positive; else the farthest negative.
    semi = torch.where(neg & (d_an > d_ap[:, None]), d_an, inf).min(dim=1).values
    hardest = torch.where(neg, d_an, -inf).max(dim=1).values
    chosen = torch.where(torch.isfinite(semi), semi, hardest)
    return F.relu(d_ap - chosen + margin).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", required=True, choices=["koch", "conv4", "resnet"])
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=32, help="P of the P x K batch")
    ap.add_argument("--images", type=int, default=4, help="K of the P x K batch")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--infer-batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = Encoder(a.arch, a.channels, a.height, a.width, a.dim)
    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.weight_decay
    )
    n = a.classes * a.images
    labels = torch.arange(a.classes).repeat_interleave(a.images)

    def step():
        x = torch.rand(n, a.channels, a.height, a.width)
        opt.zero_grad(set_to_none=True)
        loss = semi_hard_triplet_loss(model(x), labels, a.margin)
        loss.backward()
        opt.step()
        return float(loss.detach())

    model.train()
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)

    model.eval()
    with torch.no_grad():
        x = torch.rand(a.infer_batch, a.channels, a.height, a.width)
        model(x)  # warm-up
        t = time.perf_counter()
        for _ in range(a.infer_batches):
            model(x)
        infer = a.infer_batch * a.infer_batches / (time.perf_counter() - t)

    print(
        json.dumps(
            {
                "arch": a.arch,
                "height": a.height,
                "width": a.width,
                "batch": n,
                "threads": a.threads,
                "steps": a.steps,
                "train_images_per_sec": n * len(times) / sum(times),
                "train_step_seconds": times,
                "infer_images_per_sec": infer,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

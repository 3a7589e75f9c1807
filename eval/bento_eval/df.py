"""Deep Fingerprinting (Sirinam, Imani, Juarez and Wright, "Deep
Fingerprinting: Undermining Website Fingerprinting Defenses with Deep
Learning", CCS 2018): the paper's CNN, in PyTorch, on the CPU.

Input: the trace's cell directions (+1/-1, traces.cells), cut or zero-padded
to `length` (the paper: 5000). Four convolutional blocks (32, 64, 128, 256
filters, kernel 8, max-pool 8 stride 4, dropout 0.1; ELU in the first
block, ReLU after), two dense layers of 512 (dropout 0.7 and 0.5), Adamax
with learning rate 0.002, as in the paper's closed-world model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .traces import cells

LENGTH = 5000
FILTERS = (32, 64, 128, 256)
KERNEL = 8
POOL, POOL_STRIDE = 8, 4
# CPU threads for training. One: on a shared 2-core machine a second thread
# made training slower (measured 0.10 vs 0.06 s per batch of the first
# block under load), and the evaluation's cost is dominated by many small
# batches anyway.
THREADS = 1


def inputs(traces: list[np.ndarray], length: int = LENGTH) -> np.ndarray:
    x = np.zeros((len(traces), length), dtype=np.float32)
    for i, tr in enumerate(traces):
        c = cells(tr)[:length]
        x[i, : len(c)] = c
    return x


class DF(nn.Module):
    def __init__(self, classes: int, length: int = LENGTH):
        super().__init__()
        blocks = []
        channels = 1
        for i, filters in enumerate(FILTERS):
            act = nn.ELU if i == 0 else nn.ReLU
            blocks += [
                nn.ConstantPad1d((KERNEL // 2 - 1, KERNEL // 2), 0.0),
                nn.Conv1d(channels, filters, KERNEL),
                nn.BatchNorm1d(filters),
                act(),
                nn.ConstantPad1d((KERNEL // 2 - 1, KERNEL // 2), 0.0),
                nn.Conv1d(filters, filters, KERNEL),
                nn.BatchNorm1d(filters),
                act(),
                nn.MaxPool1d(POOL, POOL_STRIDE, padding=POOL // 2 - 1),
                nn.Dropout(0.1),
            ]
            channels = filters
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, length)).numel()
        self.classify = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(0.7),
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(512, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x.unsqueeze(1)))


def fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    classes: int,
    epochs: int = 30,
    batch: int = 32,
    seed: int = 0,
    threads: int = THREADS,
) -> np.ndarray:
    """Train a fresh DF on (x_train, y_train) and predict x_test's labels."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    model = DF(classes, x_train.shape[1])
    opt = torch.optim.Adamax(model.parameters(), lr=0.002)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.int64))
    model.train()
    for _ in range(epochs):
        order = gen.permutation(len(xt))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm needs two samples in training
                continue
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x_test)).argmax(1).numpy()

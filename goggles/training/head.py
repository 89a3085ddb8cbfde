"""The end classifier: a small head trained on the run's features with the noise-aware loss.

GOGGLES' eq. 1 trains the end model on the probabilistic labels by minimising the *expected*
loss under them: for posteriors ``q_i`` [K] and the head's class probabilities ``p(k | x_i)``,

    L(theta) = mean_i  sum_k  q_ik * (-log p_theta(k | x_i))  +  weight_decay/2 * ||W||^2,

the cross-entropy against the soft labels. With one-hot ``q`` it is the ordinary loss of
training on hard labels, so one function trains the three heads the metrics compare: on the
posteriors (soft, the default), on their arg-max (hard) and on the true classes (supervised).

The head is ``logits = W · ((x - mean) / scale) + b`` (``linear``) or a one-hidden-layer ReLU
MLP (``mlp``), on features the run already has (:mod:`goggles.training.inputs`). It is fitted
full-batch with L-BFGS in float64 on the CPU: deterministic for a seed, and seconds for
thousands of images (the linear head's loss is convex, so its optimum does not depend on the
start at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from goggles.training.config import HEADS


class Head(nn.Module):
    """Standardisation then a linear layer (``hidden == 0``) or a ReLU MLP; ``forward`` gives
    logits [n, K]. Its state dict holds every number: ``mean``, ``scale`` (buffers) and
    ``layers.*`` (the ``nn.Sequential`` of linear layers)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        if hidden:
            self.layers: nn.Sequential = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            self.layers = nn.Sequential(nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.mean) / self.scale)  # type: ignore[no-any-return]

    def weights(self) -> list[torch.Tensor]:
        """The weight matrices (the decayed parameters; biases are not)."""
        return [m.weight for m in self.layers if isinstance(m, nn.Linear)]


@dataclass(frozen=True)
class HeadFit:
    """A trained head and how its fit went."""

    head: Head
    loss: float
    iterations: int


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``sum_k targets_ik * -log softmax(logits)_ik``: the expected
    cross-entropy under the probabilistic labels ``targets`` [n, K] (eq. 1)."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_head(features: np.ndarray, targets: np.ndarray, *, head: str = "linear",
               hidden: int = 256, weight_decay: float = 1e-2, max_iter: int = 200,
               seed: int = 0) -> HeadFit:
    """Fit a head on ``features`` [n, D] against ``targets`` [n, K] (rows are probability
    vectors: posteriors, or one-hot for hard or true labels) with the expected loss.

    ``weight_decay`` is per sample (it does not grow with n); the features are standardised
    with their own mean and standard deviation (stored in the head). Deterministic: the linear
    head starts at zero, the MLP from ``seed``.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    q = torch.as_tensor(np.asarray(targets, dtype=np.float64))
    if x.ndim != 2 or q.ndim != 2 or len(x) != len(q):
        raise ValueError(f"features [n, D] and targets [n, K] must have the same rows, got "
                         f"{tuple(x.shape)} and {tuple(q.shape)}")
    if len(x) == 0:
        raise ValueError("no rows to train the head on")
    if not (torch.isfinite(x).all() and torch.isfinite(q).all()):
        raise ValueError("features or targets hold NaN or inf")
    q = q.clamp_min(0)
    q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        model = Head(x.shape[1], q.shape[1], hidden if head == "mlp" else 0).double()
    if head == "linear":
        with torch.no_grad():
            for parameter in model.layers.parameters():
                parameter.zero_()
    scale = x.std(dim=0, unbiased=False) if len(x) > 1 else torch.ones(x.shape[1])
    model.mean.copy_(x.mean(dim=0))
    model.scale.copy_(torch.where(scale > 1e-12, scale, torch.ones_like(scale)))
    optimiser = torch.optim.LBFGS(model.layers.parameters(), lr=1.0, max_iter=max_iter,
                                  history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    z = (x - model.mean) / model.scale  # standardised once: the closure runs ~100 times

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = soft_cross_entropy(model.layers(z), q) + 0.5 * weight_decay * sum(
            (w ** 2).sum() for w in model.weights())
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)
    state = optimiser.state[optimiser.param_groups[0]["params"][0]]
    final = float(closure().detach())
    return HeadFit(head=model.float().eval(), loss=final, iterations=int(state.get("n_iter", 0)))


def predict_proba(head: Head, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Class probabilities [n, K] of ``features`` [n, D] under a trained head."""
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch):
            x = torch.as_tensor(np.asarray(features[start:start + batch], dtype=np.float32))
            out.append(torch.softmax(head(x), dim=1).double().numpy())
    if not out:
        last = head.layers[-1]
        assert isinstance(last, nn.Linear)
        return np.zeros((0, last.out_features))
    return np.concatenate(out)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask [n] of held-out rows: ``fraction`` of each label's rows (rounded, at
    least one row of every label with two or more stays on each side), drawn with ``seed``;
    the same labels and seed give the same split."""
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        count = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            count = min(max(count, 1), len(rows) - 1)
        else:
            count = 0
        held[rng.permutation(rows)[:count]] = True
    return held

"""Two classification tasks on one encoder: a head per task, chosen per example.

The composition benchmark's ``joint`` baseline (one adapter trained on both tasks) and its
``buffered`` method (task 1 trained beside task 0's frozen skill, on task 1's data and on a
buffer of task 0's inputs answered by that skill) train one Hugging Face sequence classifier
on a mixture of two tasks. `TaskHeads` takes the classifier's place and answers each example
with its own task's head:

    logits[b] = heads[route[b]](x[b])      x (B, d) the pooled features -> (B, C)

`train_mixed` routes every micro-batch by the task its examples came from (through
`road_interp.training.train`'s ``forward_context``), so the loss is each example's
cross-entropy under its own head, and nothing else of the training loop changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from road_interp.tasks import Example
from road_interp.training import TrainConfig, TrainResult, train


class TaskHeads(nn.Module):
    """Linear heads of several tasks with the same number of labels, one chosen per example.

    It takes the place of a classifier's head and keeps that head's parameter names: head
    ``own`` is ``weight`` (C, d) and ``bias`` (C,) (the same Parameters, so putting the head
    back keeps what it learned, and an adapter that carries the head still finds it); the
    other heads are ``others.<k>``. ``frozen`` heads answer but do not learn (no gradient)."""

    def __init__(self, heads: Sequence[nn.Linear], own: int, frozen: Sequence[int] = ()):
        super().__init__()
        if len({h.out_features for h in heads}) != 1:
            raise ValueError("every task needs the same number of labels to share TaskHeads")
        self.own = own
        self.weight, self.bias = heads[own].weight, heads[own].bias
        self.others = nn.ModuleDict({str(k): h for k, h in enumerate(heads) if k != own})
        self.frozen = frozenset(frozen)
        self.route: Tensor | None = None

    def head(self, k: int) -> tuple[Tensor, Tensor]:
        """Head k's (weight, bias)."""
        if k == self.own:
            return self.weight, self.bias
        other = self.others[str(k)]
        return other.weight, other.bias

    def forward(self, x: Tensor) -> Tensor:
        if self.route is None or len(self.route) != x.shape[0]:
            raise RuntimeError("TaskHeads needs a task per example: call it inside routed(...)")
        every = []
        for k in range(len(self.others) + 1):
            weight, bias = self.head(k)
            if k in self.frozen:
                weight, bias = weight.detach(), bias.detach()
            every.append(F.linear(x, weight, bias))
        rows = torch.arange(x.shape[0], device=x.device)
        return torch.stack(every)[self.route.to(x.device), rows]  # (K, B, C) -> (B, C)

    @contextmanager
    def routed(self, tasks: Sequence[int]) -> Iterator[None]:
        """Answer the next forward's examples with the heads of ``tasks`` (one per example)."""
        self.route = torch.as_tensor(list(tasks), dtype=torch.long)
        try:
            yield
        finally:
            self.route = None

    def save_head(self, k: int, path: Path) -> None:
        """Head k as a classifier's own head file (``classifier.weight``, ``classifier.bias``)."""
        weight, bias = self.head(k)
        tensors = {"classifier.weight": weight, "classifier.bias": bias}
        save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(path))


def load_head(path: Path) -> nn.Linear:
    """A classifier's head file (``classifier.weight`` (C, d), ``classifier.bias`` (C,)) as a
    Linear layer."""
    weights = load_file(str(path))
    weight, bias = weights["classifier.weight"], weights["classifier.bias"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def train_mixed(
    model: nn.Module,
    tokenizer: object,
    heads: TaskHeads,
    examples: Sequence[Sequence[Example]],
    config: TrainConfig,
    output_dir: Path,
) -> TrainResult:
    """Train ``model`` (whose classifier is ``heads``) on every task's examples shuffled
    together, each answered by its own head. The examples take shared label names (the
    heads', "0", "1", ...), as the training loop wants one label set."""
    labels = tuple(str(i) for i in range(heads.weight.shape[0]))
    mixed, task_of = [], {}
    for k, task_examples in enumerate(examples):
        for e in task_examples:
            relabelled = replace(e, choices=labels)
            task_of[id(relabelled)] = k
            mixed.append(relabelled)

    def route(batch: Sequence[Example]):
        return heads.routed([task_of[id(e)] for e in batch])

    return train(model, tokenizer, mixed, config, output_dir, forward_context=route)

"""A task asked with solved examples first: the few-shot prompted base model.

```python
from road_interp.tasks import FewShot, get_task

task = FewShot.of(get_task("multiemo_en"), shots=4, seed=0)   # 4 training examples, stratified
evaluate(model, tok, task, "test")                             # any causal LM, no training
```

Every prompt is the shots, each as ``task.prompt(shot)`` followed by its answer, then the
question, separated by blank lines::

    <prompt of shot 1> <answer 1>

    ...

    <prompt of the question>

The seed picks the shots (a label-stratified prefix of the training split, so a 2-way task's
four shots hold both labels), and every question of a split sees the same shots.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Example, Task


@dataclass(frozen=True)
class FewShot:
    """``task`` with ``shots`` before every prompt; it answers like a `Task` (``examples``,
    ``prompt``, ``name``, ``kind``, ``metric``, ``labels``), so `road_interp.evaluation`
    scores it unchanged."""

    task: Task
    shots: tuple[Example, ...]

    @classmethod
    def of(cls, task: Task, shots: int, seed: int = 0) -> FewShot:
        if shots < 1:
            raise ValueError(f"a few-shot prompt needs at least one shot, got {shots}")
        return cls(task, tuple(task.examples("train", shots, seed=seed)))

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def metric(self) -> str:
        return self.task.metric

    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    def examples(self, split: str, limit: int | None = None, seed: int = 0) -> list[Example]:
        """The task's examples (the shots come from ``train``: test on other splits)."""
        return self.task.examples(split, limit, seed)

    def prompt(self, example: Example) -> str:
        solved = [f"{self.task.prompt(s)} {s.answer}" for s in self.shots]
        return "\n\n".join([*solved, self.task.prompt(example)])

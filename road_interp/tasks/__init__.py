"""Real tasks from offline sources, with fixed splits, prompts and metrics.

```python
from road_interp.tasks import get_task, list_tasks, parallel_sentences

task = get_task("multiemo_en")
train = task.examples("train", limit=2000)        # list[Example], label-stratified prefix
ex = train[0]; ex.text, ex.choices, ex.label       # encoders: (text, text_pair) -> label
task.prompt(ex) + " " + ex.answer                  # causal LMs
list_tasks()                                       # pandas table of tasks and split sizes
FewShot.of(task, shots=4)                          # the same task asked with 4 solved shots
```

The data comes from the cache that ``road-interp fetch`` fills (``road_interp.data``).
"""

from ..data import DataError
from .base import KINDS, SPLITS, Example, Task
from .few_shot import FewShot
from .multiemo import LANGUAGES, ParallelPair, parallel_sentences
from .registry import GYM_SKILLS, TASKS, data_sources, fetch_data, get_task, list_tasks

__all__ = [
    "GYM_SKILLS",
    "KINDS",
    "LANGUAGES",
    "SPLITS",
    "TASKS",
    "DataError",
    "Example",
    "FewShot",
    "ParallelPair",
    "Task",
    "data_sources",
    "fetch_data",
    "get_task",
    "list_tasks",
    "parallel_sentences",
]

"""What is learned (DESIGN.md's Task seam): classify, segment, masked_image, causal_lm, mlm. Every caller finds a
task here, by the name a recipe gives, and asks it what it needs to know."""

from ..errors import UserError
from .base import Evaluation, Shown, Task, TaskConfig, take
from .causal_lm import CausalLMTask
from .classify import ClassifyTask
from .masked import MaskedImageTask
from .mlm import MLMTask
from .segment import SegmentTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassifyTask, SegmentTask, MaskedImageTask, CausalLMTask,
                                                             MLMTask)}


def get_task(name: str) -> type[Task]:
    """The task class of `name`; an unknown name is one line that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"task.name={name!r} is not a task of this version; known: {', '.join(TASKS)}") from None


def check_options(task: type[Task], options: dict, kind: str = "eval_options") -> None:
    """Refuse a command's option (given: not None or empty) that `task` does not take (its
    `eval_options` or `predict_options`), naming the tasks that do."""
    for name, value in options.items():
        takes = getattr(task, kind)
        if value and name not in takes:
            takers = [t for t in TASKS.values() if name in getattr(t, kind)]
            flag = getattr(takers[0], kind)[name] if takers else "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to {' / '.join(t.name for t in takers)} runs; this is a task.name={task.name} "
                            f"run: drop it")


def build_task(recipe, dataset, transform) -> Task:
    """The recipe's task for this dataset; refused when the dataset holds the wrong kind of targets."""
    task = get_task(recipe.task.name)
    task.check_dataset(dataset)
    return task(recipe, dataset, transform)


__all__ = ["Evaluation", "Shown", "Task", "TaskConfig", "take", "build_task", "check_options", "get_task", "TASKS"]

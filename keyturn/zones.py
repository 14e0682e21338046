"""Where a device's executor steps run: a task queue per zone, so workers can sit near the
targets they reach."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ZONE = "default"  # a device's zone unless it names one


def zone_task_queue(task_queue: str, zone: str, default_zone_on_main_queue: bool = False) -> str:
    """Executor activities of a device run on its zone's queue, so workers can sit near targets;
    the default zone's on the main queue itself when ``default_zone_on_main_queue``."""
    if default_zone_on_main_queue and zone == DEFAULT_ZONE:
        return task_queue
    return f"{task_queue}-zone-{zone}"


@dataclass(frozen=True)
class StepQueues:
    """Where the steps planned by a worker of ``task_queue`` run (settings.step_queues)."""

    task_queue: str
    default_zone_on_main_queue: bool = False

    def of(self, zone: str) -> str:
        return zone_task_queue(self.task_queue, zone, self.default_zone_on_main_queue)

"""Where a device's executor steps run: a task queue per zone, so workers can sit near the
targets they reach."""

from __future__ import annotations

DEFAULT_ZONE = "default"  # a device's zone unless it names one


def zone_task_queue(task_queue: str, zone: str, default_zone_on_main_queue: bool = False) -> str:
    """Executor activities of a device run on its zone's queue, so workers can sit near targets;
    the default zone's on the main queue itself when ``default_zone_on_main_queue``."""
    if default_zone_on_main_queue and zone == DEFAULT_ZONE:
        return task_queue
    return f"{task_queue}-zone-{zone}"

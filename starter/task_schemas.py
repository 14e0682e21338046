"""Request and response bodies of the task routes (starter/routes/tasks.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from starter.schemas import Name

# Five fields (minute hour day-of-month month day-of-week), or a Temporal shorthand (@daily…).
_CRON = re.compile(r"^(@[a-z]+|\S+(\s+\S+){4})$")
# The longest interval a schedule takes, and the shortest (a few seconds: tests use them).
MAX_EVERY_SECONDS = 366 * 24 * 3600
Parameters: Any = Field(
    default_factory=dict,
    description="values of the template's parameters (its '# param:' lines), by name",
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskScheduleIn(_In):
    """When the task runs by itself: a cron spec in a time zone, or a fixed interval."""

    cron: str | None = Field(
        default=None, min_length=1, max_length=200, description="e.g. '0 3 * * 1-5'"
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name")
    every_seconds: int | None = Field(default=None, ge=1, le=MAX_EVERY_SECONDS)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not _CRON.match(value.strip()):
            raise ValueError("a cron spec has five fields: minute hour day month weekday")
        return value.strip() if value else value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> TaskScheduleIn:
        if (self.cron is None) == (self.every_seconds is None):
            raise ValueError("give either cron (with its timezone) or every_seconds")
        return self

    def stored(self) -> dict[str, Any]:
        if self.every_seconds is not None:
            return {"every_seconds": self.every_seconds}
        return {"cron": self.cron, "timezone": self.timezone}


def _distinct_ids(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("each credential once")
    if any(not item or len(item) > 64 for item in value):
        raise ValueError("credential ids are 1 to 64 characters")
    return value


class TaskIn(_In):
    name: str = Name
    template: str = Field(min_length=1, max_length=200, description="a template of kind task")
    credential_ids: list[str] = Field(
        min_length=1,
        max_length=500,
        description="the accounts the task runs as: one per target, each naming its device",
    )
    parameters: dict[str, Any] = Parameters
    schedule: TaskScheduleIn | None = None

    @field_validator("credential_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return _distinct_ids(value)


class TaskPatch(_In):
    """What may change after creation; an absent field is left as it is, a null schedule
    removes it. Checked as a new task would be, the template's parameters included."""

    credential_ids: list[str] | None = Field(default=None, min_length=1, max_length=500)
    parameters: dict[str, Any] | None = None
    schedule: TaskScheduleIn | None = None

    @field_validator("credential_ids")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _distinct_ids(value)


class TaskOut(BaseModel):
    id: str
    name: str
    template: str
    executor: str
    credential_ids: list[str]
    parameters: dict[str, Any]
    schedule: dict[str, Any] | None = Field(
        description="{cron, timezone} or {every_seconds}; null: runs on demand only"
    )
    schedule_id: str | None = Field(description="the Temporal Schedule that runs it, if any")
    profile: str
    created_by: str
    created_at: datetime
    deleted_at: datetime | None


class TaskRunIn(_In):
    parameters: dict[str, Any] = Parameters


class TaskRunAccepted(BaseModel):
    run_id: str
    task_id: str
    workflow_id: str
    status: str
    parameters: dict[str, Any]


class TaskResultOut(BaseModel):
    device_id: str
    credential_id: str
    operation_id: str
    status: str
    exit_status: int | None
    output: str = Field(description="what the task printed on this target, redacted")
    error_type: str | None
    error: str | None
    finished_at: datetime | None


class TaskRunOut(BaseModel):
    id: str
    task_id: str
    status: str = Field(description="scheduled, running, succeeded, failed or canceled")
    trigger: str = Field(description="manual or task-schedule")
    parameters: dict[str, Any]
    template_version: int
    workflow_id: str
    requested_by: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    results: list[TaskResultOut]

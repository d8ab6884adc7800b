"""The evaluate job's result items: one per page, how its detections compare with the ground
truth (boxes in the page's coordinates, as detect gives them). The task's scores (mAP, per
class) are the result's `evaluation`. Light: the HTTP process imports it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from model.jobs.items import PageItem


class _Box(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str


class TruthMatch(_Box):
    truth: list[float] = Field(description="The true box: x, y, width, height")
    detection: list[float] = Field(description="The detection that matched it")
    confidence: float


class Miss(_Box):
    xywh: list[float] = Field(description="A true box no detection matched")


class FalseAlarm(_Box):
    xywh: list[float] = Field(description="A detection that matched no true box")
    confidence: float


class EvaluatePage(PageItem):
    tp: int | None = Field(None, description="Detections that matched a true box")
    fp: int | None = Field(None, description="Detections that matched none")
    fn: int | None = Field(None, description="True boxes no detection matched")
    truths: int | None = Field(None, description="True boxes on the page")
    matches: list[TruthMatch] | None = None
    misses: list[Miss] | None = None
    false_alarms: list[FalseAlarm] | None = None

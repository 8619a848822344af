"""The rules file's schema (config/rules.yaml): violation thresholds, exemptions, priority,
change flags and the case lifecycle's transition table, validated (``load_rules``).

Matching (``pipeline.cases.match``) and tracking (``pipeline.cases.track``) both read it; neither owns it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.core.yaml_files import read_model

RULE_IDS = ("illegal_construction", "illegal_land_use", "over_approval", "storey_added", "over_floors")
RuleId = Literal["illegal_construction", "illegal_land_use", "over_approval", "storey_added", "over_floors"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IllegalConstruction(_M):
    label: str = "违法建设"
    enabled: bool = True
    classes: list[str] = ["building", "steel_shed", "under_construction", "greenhouse"]
    max_inside_share: float = Field(0.5, ge=0, le=1)
    registered_land_use: list[str] = []


class IllegalLandUse(_M):
    label: str = "违法用地"
    enabled: bool = True
    classes: list[str] = ["building", "steel_shed", "under_construction", "greenhouse"]
    zone_kinds: list[str] = ["basic_farmland", "farmland", "ecological_redline"]
    dlbm_codes: list[str] = ["0101", "0102", "0103"]
    min_overlap_m2: float = Field(5.0, ge=0)
    min_overlap_share: float = Field(0.2, ge=0, le=1)


class OverApproval(_M):
    label: str = "超批准面积"
    enabled: bool = True
    classes: list[str] = ["building", "steel_shed", "under_construction"]
    tolerance: float = Field(0.20, ge=0)
    built_area: Literal["clipped", "whole"] = "clipped"
    min_inside_share: float = Field(0.5, ge=0, le=1)


class StoreyAdded(_M):
    """加层: the structure stands a storey higher than on an earlier flight with heights
    (``heights.storey_rise_m``, pipeline.detection.heights)."""
    label: str = "加层"
    enabled: bool = True
    classes: list[str] = ["building", "steel_shed"]


class OverFloors(_M):
    """超层: more storeys (estimated from the DSM) than the parcel's approved_floors."""
    label: str = "超批准层数"
    enabled: bool = True
    classes: list[str] = ["building"]
    extra_floors: int = Field(0, ge=0)
    min_inside_share: float = Field(0.5, ge=0, le=1)


class RuleSet(_M):
    illegal_construction: IllegalConstruction = IllegalConstruction()
    illegal_land_use: IllegalLandUse = IllegalLandUse()
    over_approval: OverApproval = OverApproval()
    storey_added: StoreyAdded = StoreyAdded()
    over_floors: OverFloors = OverFloors()


class Exemption(_M):
    id: str
    label: str = ""
    classes: list[str]
    rules: list[RuleId]
    zone_kinds: list[str] = []
    dlbm_codes: list[str] = []
    min_share: float = Field(0.5, ge=0, le=1)


class Priority(_M):
    rule_weights: dict[str, float] = {"illegal_land_use": 40, "illegal_construction": 30,
                                      "storey_added": 25, "over_approval": 15, "over_floors": 15}
    basic_farmland: float = 30
    ecological_redline: float = 30
    under_construction: float = 10
    per_100_m2: float = 5
    area_cap_m2: float = 1000
    levels: dict[Literal["high", "medium"], float] = {"high": 60, "medium": 30}


class Change(_M):
    grown_min_m2: float = Field(5.0, ge=0)
    grown_min_ratio: float = Field(0.10, ge=0)
    covered_share: float = Field(0.95, gt=0, le=1)


class Lifecycle(_M):
    states: dict[str, str]
    initial: str = "suspected"
    transitions: dict[str, list[str]]
    optional: list[str] = []
    open: list[str] = []
    dismissed: list[str] = []
    demolition_watch: list[str] = []
    rebuilt_from: list[str] = []
    rebuilt_to: str = "suspected"
    regrown_to: str = "suspected"
    order_deadline_days: int = Field(30, ge=0)
    closing: list[str] = []

    @model_validator(mode="after")
    def _known_states(self) -> "Lifecycle":
        known = set(self.states)
        named = {self.initial, self.rebuilt_to, self.regrown_to, *self.transitions,
                 *[t for ts in self.transitions.values() for t in ts], *self.optional,
                 *self.open, *self.dismissed, *self.demolition_watch, *self.rebuilt_from,
                 *self.closing}
        unknown = sorted(named - known)
        if unknown:
            raise ValueError(f"states {unknown} are not listed under lifecycle.states")
        for s in self.rebuilt_from:
            if self.rebuilt_to not in self.allowed(s):
                raise ValueError(f"rebuilt_to '{self.rebuilt_to}' is not allowed after '{s}'")
        for s in self.dismissed:
            if self.regrown_to not in self.allowed(s):
                raise ValueError(f"regrown_to '{self.regrown_to}' is not allowed after '{s}'")
        return self

    def allowed(self, state: str) -> list[str]:
        """Next states of ``state``, skipping through optional states."""
        out: list[str] = []
        stack = list(self.transitions.get(state, []))
        seen: set[str] = set()
        while stack:
            s = stack.pop(0)
            if s in seen:
                continue
            seen.add(s)
            if s != state:
                out.append(s)
            if s in self.optional:
                stack.extend(self.transitions.get(s, []))
        return out

    def label(self, state: str) -> str:
        return self.states.get(state, state)


class Rules(_M):
    min_structure_area_m2: float = Field(4.0, ge=0)
    classes: list[str] = ["building", "steel_shed", "under_construction", "greenhouse"]
    category_order: list[RuleId] = [
        "illegal_land_use", "illegal_construction", "storey_added", "over_floors", "over_approval"]
    rules: RuleSet = RuleSet()
    exemptions: list[Exemption] = []
    nearest_parcel_m: float = Field(300.0, ge=0)
    priority: Priority = Priority()
    dlbm_names: dict[str, str] = {}
    change: Change = Change()
    lifecycle: Lifecycle

    source: Path | None = Field(None, exclude=True)

    def label(self, rule_id: str) -> str:
        return getattr(self.rules, rule_id).label


def load_rules(path: str | Path) -> Rules:
    """Read and validate config/rules.yaml (ConfigError naming the file and the key)."""
    rules = read_model(path, Rules, "rules file", "rules_file")
    rules.source = Path(path).expanduser()
    return rules


def rule_setting_names(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key config/rules.yaml accepts (for docs/CONFIG.md); keys of the
    objects in a list read ``name[].key``; a mapping (e.g. ``lifecycle.states``) is one key."""
    import typing
    names = []
    for name, field in (model or Rules).model_fields.items():
        if field.exclude:
            continue
        ann, args = field.annotation, typing.get_args(field.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += rule_setting_names(ann, f"{prefix}{name}.")
        elif (typing.get_origin(ann) is list and args and isinstance(args[0], type)
              and issubclass(args[0], BaseModel)):
            names += rule_setting_names(args[0], f"{prefix}{name}[].")
        else:
            names.append(prefix + name)
    return names

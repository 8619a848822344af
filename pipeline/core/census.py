"""The census file's schema (config/census.yaml): the 排查 form's fields and allowed values, the
整治措施 and the building register's lifecycle, validated (``load_census``); and one form's facts
checked against it (``Census.check_facts``), refused in one line naming the field."""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.core.errors import InputError
from pipeline.core.values import is_missing
from pipeline.core.yaml_files import read_model

#: register columns that are not form fields (pipeline/report/register.py fills them)
REGISTER_FIELDS: dict[str, str] = {
    "seq": "序号", "house_no": "台账编号", "town": "乡镇", "village": "村", "owner": "产权人",
    "coords": "坐标(经度,纬度)", "area_m2": "占地面积(m²)", "floors": "层数", "status": "排查状态",
    "hazard": "初判", "measures": "整治措施", "deadline": "整改期限", "assignee": "责任人",
    "inspected_on": "排查日期", "rectified_on": "整治完成日期", "closed_on": "销号日期",
    "case_no": "关联两违案件", "last_seen_at": "最近航飞", "gone": "航飞未见",
}
YES = {"是", "yes", "true", "1", "y", "有"}
NO = {"否", "no", "false", "0", "n", "无"}


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FormField(_M):
    key: str
    label: str
    kind: Literal["text", "int", "real", "date", "choice", "bool"] = "text"
    values: list[str] = []
    required: bool = False
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _choices(self) -> "FormField":
        if self.kind == "choice" and not self.values:
            raise ValueError(f"field {self.key} is a choice without values")
        return self

    def value(self, raw: Any, today: date) -> Any:
        """``raw`` as this field's kind; InputError (English and Chinese) naming the field."""
        text = str(raw).strip()
        where = f"{self.label} ({self.key})"
        try:
            if self.kind == "int":
                v: Any = int(text)
            elif self.kind == "real":
                v = float(text)
                if v != v:
                    raise ValueError
            elif self.kind == "date":
                v = date.fromisoformat(text[:10])
                if v > today:
                    raise InputError(f"{where}: {v} lies in the future; give the day it happened",
                                     zh=f"{self.label}：{v} 晚于今天，请填写实际日期")
                return v.isoformat()
            elif self.kind == "bool":
                if text.lower() not in YES | NO:
                    raise ValueError
                return text.lower() in YES
            elif self.kind == "choice":
                if text not in self.values:
                    raise InputError(f"{where}: '{text}' is not one of {'、'.join(self.values)}",
                                     zh=f"{self.label}：“{text}”不在可选值内（{'、'.join(self.values)}）")
                return text
            else:
                return text
        except ValueError:
            raise InputError(f"{where}: '{text}' is not a {self.kind}", zh=f"{self.label}：“{text}”格式不对") from None
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise InputError(f"{where}: {v} is outside {self.min}–{self.max}",
                             zh=f"{self.label}：{v} 超出范围（{self.min}–{self.max}）")
        return v


class CensusLifecycle(_M):
    states: dict[str, str]
    initial: str = "registered"
    transitions: dict[str, list[str]]

    @model_validator(mode="after")
    def _known_states(self) -> "CensusLifecycle":
        named = {self.initial, *self.transitions, *[t for ts in self.transitions.values() for t in ts]}
        unknown = sorted(named - set(self.states))
        if unknown:
            raise ValueError(f"states {unknown} are not listed under lifecycle.states")
        for needed in ("safe", "hazard", "rectifying", "rectified", "closed"):
            if needed not in self.states:
                raise ValueError(f"lifecycle.states lacks '{needed}' (the census counts it)")
        return self

    def label(self, state: str) -> str:
        return self.states.get(state, state)

    def allowed(self, state: str) -> list[str]:
        return list(self.transitions.get(state, []))


class Census(_M):
    fields: list[FormField]
    hazard_values: list[str]
    serious_values: list[str]
    crowded_uses: list[str] = []
    measures: list[str]
    lifecycle: CensusLifecycle
    register_columns: list[str | dict[str, str]] = list(REGISTER_FIELDS)

    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _form(self) -> "Census":
        keys = [f.key for f in self.fields]
        for needed in ("judgement", "inspected_on"):
            if needed not in keys:
                raise ValueError(f"fields lacks '{needed}' (the census needs it)")
        for col in self.register_columns:
            name = next(iter(col)) if isinstance(col, dict) else col
            if name not in REGISTER_FIELDS and name not in keys:
                raise ValueError(f"register column '{name}' is neither a register field nor a form field")
        judgement = self.field("judgement").values
        stray = sorted(set(self.hazard_values + self.serious_values) - set(judgement))
        if stray:
            raise ValueError(f"hazard/serious values {stray} are not values of the judgement field")
        return self

    def register_headers(self) -> list[tuple[str, str]]:
        """(field, header) of each register column: the configured header, the form's label, or ours."""
        labels = {f.key: f.label for f in self.fields}
        out = []
        for col in self.register_columns:
            name, header = next(iter(col.items())) if isinstance(col, dict) else (col, "")
            out.append((name, header or labels.get(name) or REGISTER_FIELDS[name]))
        return out

    def field(self, key: str) -> FormField:
        return next(f for f in self.fields if f.key == key)

    def check_facts(self, facts: dict[str, Any], today: date) -> dict[str, Any]:
        """The form's facts, each converted and checked, blanks dropped; required ones present."""
        known = {f.key: f for f in self.fields}
        out: dict[str, Any] = {}
        for key, raw in facts.items():
            if key not in known:
                raise InputError(f"the census form has no field '{key}'; its fields: {', '.join(known)}",
                                 zh=f"排查表没有“{key}”这一项")
            if is_missing(raw) or str(raw).strip() == "":
                continue
            out[key] = known[key].value(raw, today)
        for f in self.fields:
            if f.required and f.key not in out:
                raise InputError(f"{f.label} ({f.key}) is required on the census form",
                                 zh=f"排查表必须填写{f.label}")
        return out


def load_census(path: str | Path) -> Census:
    """Read and validate config/census.yaml (ConfigError naming the file and the key)."""
    census = read_model(path, Census, "census file", "census_file")
    census.source = Path(path).expanduser()
    return census

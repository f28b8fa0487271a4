"""Result rows, targets, the markdown table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Target:
    """`ratio_max`/`ratio_min` compare gateway/bare; `abs_max` the gateway value itself."""

    kind: str
    value: float

    def text(self) -> str:
        if self.kind == "ratio_max":
            return f"≤ {self.value:g}x bare"
        if self.kind == "ratio_min":
            return f"≥ {self.value:g}x bare"
        if self.kind == "abs_max":
            return f"≤ {self.value:g}"
        if self.kind == "abs_min":
            return f"≥ {self.value:g}"
        raise ValueError(self.kind)

    def check(self, gateway: float, ratio: float | None) -> bool:
        if self.kind == "ratio_max":
            return ratio is not None and ratio <= self.value
        if self.kind == "ratio_min":
            return ratio is not None and ratio >= self.value
        if self.kind == "abs_max":
            return gateway <= self.value
        if self.kind == "abs_min":
            return gateway >= self.value
        raise ValueError(self.kind)


@dataclass
class Row:
    bench: str
    metric: str
    unit: str
    gateway: float
    bare: float | None
    target: Target | None = None
    ratio: float | None = field(init=False)
    passed: bool | None = field(init=False)

    def __post_init__(self) -> None:
        bare = self.bare
        ok = bare is not None and bare > 0 and math.isfinite(bare) and math.isfinite(self.gateway)
        self.ratio = self.gateway / bare if ok and bare else None
        self.passed = None if self.target is None else self.target.check(self.gateway, self.ratio)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = None if self.target is None else {**asdict(self.target), "text": self.target.text()}
        return out


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["| metric | gateway | bare | ratio | target | pass |", "|---|---:|---:|---:|---|:---:|"]
    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
        verdict = "—" if r.passed is None else ("✅ pass" if r.passed else "❌ FAIL")
        target = "—" if r.target is None else r.target.text()
        cells = [f"{r.metric} ({r.unit})", _num(r.gateway), _num(r.bare), ratio, target, verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""What the bench reports: figures, their targets, the table and the JSON file.

A `Figure` is one number a scenario measured for relayd, with every run's raw value,
beside the same number for a baseline measured in the same invocation. It is reported
as the median of its runs (`stats.median`). A target is checked against the median
(`on="value"`) or against the ratio relayd / baseline (`on="ratio"`); the bench only
reports whether it is met, it never fails because of it.

A figure that could not be measured carries `error` and no value: a failed or skipped
scenario shows as such in the table, never as a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.stats import median


@dataclass(frozen=True)
class Target:
    """`value <op> limit` for the median (`on="value"`) or the ratio (`on="ratio"`).

    `only_if` is a note on when the target applies (e.g. the scale targets are for
    100,000 PVs); a target with `applies=False` is shown but not judged.
    """

    op: str  # ">=", "<=", ">" or "<"
    limit: float
    on: str = "value"
    text: str = ""
    applies: bool = True

    def check(self, value: float, ratio: float) -> tuple[bool | None, float]:
        """(met, margin): margin is how far the figure is from the limit, as a fraction."""
        actual = value if self.on == "value" else ratio
        if not self.applies or actual is None or not math.isfinite(actual):
            return None, math.nan
        margin = actual / self.limit - 1 if self.limit else math.nan
        met = {">=": actual >= self.limit, "<=": actual <= self.limit,
               "<": actual < self.limit, ">": actual > self.limit}[self.op]
        return met, margin

    def label(self) -> str:
        if self.text:
            return self.text
        what = "" if self.on == "value" else "ratio "
        return f"{what}{self.op} {format_number(self.limit)}"


@dataclass
class Figure:
    scenario: str
    name: str
    unit: str
    client: str
    runs: list[float] = field(default_factory=list)
    baseline: str = ""
    baseline_runs: list[float] = field(default_factory=list)
    baseline_client: str = ""
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    status: str = "ok"  # ok, failed, skipped
    compare: bool = True  # False where relayd / baseline means nothing (e.g. growth in %)

    @property
    def value(self) -> float:
        return median(self.runs)

    @property
    def baseline_value(self) -> float:
        return median(self.baseline_runs)

    @property
    def ratio(self) -> float:
        value, base = self.value, self.baseline_value
        if not self.compare or not (math.isfinite(value) and math.isfinite(base)) or base == 0:
            return math.nan
        return value / base

    def verdicts(self) -> list[tuple[Target, bool | None, float]]:
        return [(t, *t.check(self.value, self.ratio)) for t in self.targets]

    def verdict_text(self) -> str:
        if self.status != "ok":
            return self.status.upper()
        parts = []
        for target, met, margin in self.verdicts():
            if met is None:
                parts.append("n/a")
            elif met:
                parts.append("met")
            elif math.isfinite(margin):
                parts.append(f"MISSED {margin:+.0%}")
            else:
                parts.append("MISSED")
        return ", ".join(parts) if parts else ""

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(
            median=_finite(self.value), baseline_median=_finite(self.baseline_value),
            ratio=_finite(self.ratio),
            verdicts=[{"target": t.label(), "on": t.on, "met": met, "margin": _finite(m)}
                      for t, met, m in self.verdicts()],
        )
        return data


def figure_from_json(data: dict) -> Figure:
    """The `Figure` a results file holds (see `Figure.to_json`)."""
    fields = {k: v for k, v in data.items() if k in Figure.__dataclass_fields__}
    fields["targets"] = [Target(**t) for t in fields.get("targets", [])]
    return Figure(**fields)


def failed(scenario: str, error: str, status: str = "failed", name: str = "(scenario)") -> Figure:
    """A row that says a scenario (or figure) could not be measured, and why."""
    return Figure(scenario, name, "", "", error=error, status=status)


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def format_number(value: float, unit: str = "") -> str:
    """Short human form: 271k, 1.25M, 0.42, 3.1; units appended when given."""
    if value is None or not math.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1e6:
        text = f"{value / 1e6:.3g}M"
    elif magnitude >= 1e4:
        text = f"{value / 1e3:.3g}k"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 1:
        text = f"{value:.3g}"
    elif magnitude == 0:
        text = "0"
    else:
        text = f"{value:.2g}"
    return f"{text} {unit}".strip() if unit else text


COLUMNS = ("scenario", "figure", "relayd", "baseline", "baseline value", "ratio", "target",
           "verdict", "runs", "spread", "client")


def spread(runs: list[float]) -> str:
    """(max - min) / median of the finite runs, e.g. "12%"; "" for fewer than 2 runs."""
    kept = [v for v in runs if v is not None and math.isfinite(v)]
    middle = median(kept)
    if len(kept) < 2 or not middle:
        return ""
    return f"{(max(kept) - min(kept)) / abs(middle):.0%}"


def table_rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    rows = []
    for f in figures:
        if f.status != "ok":
            rows.append((f.scenario, f.name, f.status.upper(), "", "", "", "",
                         f.status.upper(), "", "", _clip(f.error or "", 70)))
            continue
        rows.append((
            f.scenario, f.name, format_number(f.value, f.unit), f.baseline,
            format_number(f.baseline_value, f.unit) if f.baseline_runs else "",
            f"{f.ratio:.2f}" if math.isfinite(f.ratio) else "",
            "; ".join(t.label() for t in f.targets), f.verdict_text(),
            f"{len(f.runs)}" + (f"/{len(f.baseline_runs)}" if f.baseline_runs else ""),
            spread(f.runs) + (f"/{spread(f.baseline_runs)}" if spread(f.baseline_runs) else ""),
            f.client if f.baseline_client in ("", f.client) else f"{f.client} | {f.baseline_client}",
        ))
    return rows


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(figures: list[Figure], markdown: bool = False) -> str:
    rows = [COLUMNS] + table_rows(figures)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |"
                  for row in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, document: dict) -> None:
    """Write the results file atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(_clean(document), indent=1, default=_json_default, allow_nan=False)
    temporary.write_text(text + "\n")
    temporary.replace(path)


def _clean(obj: object) -> object:
    """NaN and infinities become null: strict JSON readers refuse them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _clean(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(value) for value in obj]
    return obj


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

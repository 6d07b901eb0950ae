"""Segments: groups of shoppers named in the config file, computed from live state.

Each `[[segments]]` table is one `Segment`. Its conditions are ANDed; `all`, `any` and
`not` combine other segments by name. A segment is read from the indexes kept as events
arrive (`worker/shoppers/segment_index.py`), never by scanning shoppers.

    [[segments]]
    name = "lapsed_regulars"     # bought at least twice, quiet for 30 days
    min_orders = 2
    dormant_days = 30

    [[segments]]
    name = "champions"           # RFM scores 1-5 (5: most recent, most orders, most spent)
    rfm = { r = [4, 5], f = [4, 5], m = [4, 5] }

    [[segments]]
    name = "home_fans_on_android"
    affinity = { category = "home", min_share = 0.3 }
    channel = "fcm"
    not = "champions"
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.rules import ChannelName

SEGMENT_NAME = r"^[a-z][a-z0-9_]{0,47}$"


class ScoreRange(BaseModel):
    """RFM quantile scores, inclusive: `[4, 5]` is the top two fifths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: tuple[int, int] = (1, 5)
    f: tuple[int, int] = (1, 5)
    m: tuple[int, int] = (1, 5)

    @field_validator("r", "f", "m")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 5:
            raise ValueError(f"scores run 1-5, low first: got {list(value)}")
        return value


class Affinity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str = Field(min_length=1, max_length=200)
    min_share: float = Field(gt=0, le=1, description="of the shopper's decayed interest")


class CartAbandoned(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_hours: float = Field(default=24, gt=0, description="nothing added for this long")
    within_days: float = Field(default=30, gt=0, description="last addition at most this old")

    @model_validator(mode="after")
    def _window(self) -> CartAbandoned:
        if self.idle_hours >= self.within_days * 24:
            raise ValueError("idle_hours must be shorter than within_days")
        return self


class Segment(BaseModel):
    """One segment; a shopper belongs when every condition given holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=SEGMENT_NAME)
    rfm: ScoreRange | None = None
    dormant_days: float | None = Field(default=None, gt=0, description="no event for this long")
    active_within_days: float | None = Field(default=None, gt=0, description="an event within")
    never_purchased: bool = False
    min_orders: int | None = Field(default=None, ge=1)
    min_monetary: float | None = Field(default=None, gt=0)
    affinity: Affinity | None = None
    cart_abandoned: CartAbandoned | None = None
    channel: ChannelName | None = Field(default=None, description="an active device on it")
    all_of: tuple[str, ...] = Field(default=(), alias="all")
    any_of: tuple[str, ...] = Field(default=(), alias="any")
    none_of: tuple[str, ...] = Field(default=(), alias="not")

    @field_validator("none_of", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _coherent(self) -> Segment:
        if self.never_purchased and (self.rfm or self.min_orders or self.min_monetary):
            raise ValueError("never_purchased excludes rfm, min_orders and min_monetary")
        if not (self.conditions() or self.references()):
            raise ValueError("a segment needs at least one condition, or all/any/not")
        return self

    def conditions(self) -> list[str]:
        """The names of the leaf conditions set (for errors and `segment show`)."""
        names = ("rfm", "dormant_days", "active_within_days", "min_orders", "min_monetary",
                 "affinity", "cart_abandoned", "channel")  # fmt: skip
        given = [n for n in names if getattr(self, n) is not None]
        return given + (["never_purchased"] if self.never_purchased else [])

    def references(self) -> tuple[str, ...]:
        return (*self.all_of, *self.any_of, *self.none_of)


def check_segments(segments: Sequence[Segment]) -> None:
    """Raise ValueError naming the segment for duplicate names, references to unknown
    segments and reference cycles."""
    by_name: dict[str, Segment] = {}
    for position, segment in enumerate(segments):
        if segment.name in by_name:
            raise ValueError(f"segments.{position}: name {segment.name!r} is used twice")
        by_name[segment.name] = segment
    for position, segment in enumerate(segments):
        for ref in segment.references():
            if ref not in by_name:
                raise ValueError(
                    f"segments.{position} ({segment.name}): unknown segment {ref!r} "
                    f"(known: {sorted(by_name)})"
                )

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"segments: a cycle {' -> '.join((*path, name))}")
        for ref in by_name[name].references():
            visit(ref, (*path, name))

    for name in by_name:
        visit(name, ())

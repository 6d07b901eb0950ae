"""The canonical items CSV: `item_id,title,category,brand,price,stock,url,image`.

Only `item_id` is required; the rest may be empty. `indexing` uses `category` and `brand`
(cold-start vectors) and keeps the rest for the caller.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from indexing.errors import InputError
from indexing.events import ReadReport, open_text

__all__ = ["ITEM_FIELDS", "Item", "read_items", "read_items_csv"]

ITEM_FIELDS: tuple[str, ...] = (
    "item_id",
    "title",
    "category",
    "brand",
    "price",
    "stock",
    "url",
    "image",
)


@dataclass(frozen=True)
class Item:
    """One catalog row; empty strings and None mean "unknown"."""

    item_id: str
    title: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    stock: int | None = None


def read_items(rows: Iterable[Mapping[str, str]]) -> tuple[dict[str, Item], ReadReport]:
    """Parse item rows; the last row of a repeated `item_id` wins (counted as duplicate)."""
    report = ReadReport()
    items: dict[str, Item] = {}
    for line, row in enumerate(rows, start=1):
        report.rows += 1
        item_id = (row.get("item_id") or "").strip()
        if not item_id:
            report.reject(line, "missing_item_id", row)
            continue
        try:
            price_text = (row.get("price") or "").strip()
            stock_text = (row.get("stock") or "").strip()
            price = float(price_text) if price_text else None
            stock = int(float(stock_text)) if stock_text else None
        except ValueError:
            report.reject(line, "bad_number", row)
            continue
        if item_id in items:
            report.duplicates += 1
        else:
            report.accepted += 1
        items[item_id] = Item(
            item_id=item_id,
            title=(row.get("title") or "").strip(),
            category=(row.get("category") or "").strip(),
            brand=(row.get("brand") or "").strip(),
            price=price,
            stock=stock,
        )
    return items, report


def read_items_csv(path: Path) -> tuple[dict[str, Item], ReadReport]:
    """`read_items` over a canonical items CSV (optionally gzipped)."""
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            if "item_id" not in (reader.fieldnames or ()):
                raise InputError(f"{path}: header lacks item_id")
            return read_items(reader)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from exc

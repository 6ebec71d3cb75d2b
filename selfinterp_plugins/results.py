"""What `explain()` returns: a plain list of records (id, scale, sample, label, text) that also
converts to a pandas DataFrame and shows itself as a table in Jupyter, the way notebook users of
TransformerLens and SAE-Lens look at results."""

from __future__ import annotations

import html
from typing import TypedDict

from .errors import SelfInterpError

COLUMNS = ("id", "scale", "sample", "label", "text")
HTML_ROWS = 50


class ExplainRecord(TypedDict):
    """One label: the vector's id (the dataset's own when a dataset was explained), the scale it was
    read at, the sample number, the label and the raw text it was cut from. What `explain()` returns
    and writes per JSONL line, and what a scorer receives."""

    id: str
    scale: float
    sample: int
    label: str
    text: str


class ExplainResults(list[ExplainRecord]):
    """A list of label records; `.to_pandas()` and a Jupyter table on top."""

    def to_pandas(self):
        """One row per record, columns id, scale, sample, label, text (plus any extra fields)."""
        try:
            import pandas as pd
        except ImportError:
            raise SelfInterpError("to_pandas() needs pandas; pip install pandas.") from None
        columns = list(COLUMNS) + sorted({k for r in self for k in r} - set(COLUMNS))
        return pd.DataFrame(list(self), columns=columns)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in ("id", "scale", "label", "text"))
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in ("id", "scale", "label", "text")) + "</tr>"
            for r in self[:HTML_ROWS]
        )
        more = f"<p>… {len(self) - HTML_ROWS} more</p>" if len(self) > HTML_ROWS else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}"

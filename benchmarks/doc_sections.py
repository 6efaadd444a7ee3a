"""docs/benchmarks.md is shared: each benchmark owns the section between its own two markers."""

from __future__ import annotations

from pathlib import Path

DOC_HEADER = (
    "# clapd benchmarks\n\nFigures are measured by the scripts in `benchmarks/`; each section names its script.\n"
)


def write_section(path: Path, start_marker: str, end_marker: str, text: str) -> None:
    """Replace the section between the markers (or append it), keeping the rest of the file."""
    doc = path.read_text() if path.exists() else DOC_HEADER
    start, end = doc.find(start_marker), doc.find(end_marker)
    if start != -1 and end > start:
        doc = doc[:start] + text + doc[end + len(end_marker) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)

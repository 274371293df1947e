"""Text in the docks: labels that wrap and never widen the dock."""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy


def wrap(label: Label) -> Label:
    """Let a label's text wrap at the dock's width and never widen the dock (long paths too)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.native.setMinimumWidth(0)
    return label

"""Text in the docks: labels and message areas that wrap, never clip and never widen the dock."""

from __future__ import annotations

from magicgui.widgets import Label, TextEdit
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QSizePolicy, QTextEdit


def wrap(label: Label) -> Label:
    """Let a label's text wrap at the dock's width and never widen the dock (long paths too)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.native.setMinimumWidth(0)
    return label


def message_area(value: str = "", lines: int = 3, label: str = "") -> TextEdit:
    """A read-only text area for long messages (status, plan): it wraps at the dock's width,
    shows ``lines`` lines and scrolls beyond them, so a message is never cut; its text can be
    selected and copied (paths, file names)."""
    area = TextEdit(value=value, label=label)
    area.read_only = True
    native = area.native
    native.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
    native.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    native.setFrameShape(QFrame.Shape.NoFrame)
    height = native.fontMetrics().lineSpacing() * lines + 2 * native.document().documentMargin() + 4
    native.setFixedHeight(int(height))
    native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
    native.setMinimumWidth(0)
    return area

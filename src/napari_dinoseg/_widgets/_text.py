"""Text in the docks: labels and message areas that wrap, never clip and never widen the dock."""

from __future__ import annotations

from magicgui.widgets import Label, TextEdit
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QSizePolicy, QTextEdit


def wrap(label: Label) -> Label:
    """Let a label's text wrap at the dock's width and never widen the dock (long paths too)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.native.setMinimumWidth(0)
    return label


def message_area(value: str = "", lines: int = 2, max_lines: int = 8, label: str = "") -> TextEdit:
    """A read-only text area for long messages (status, plan): it wraps at the dock's width,
    grows with its text from ``lines`` to ``max_lines`` lines and scrolls beyond them, so a
    message is never cut; its text can be selected and copied (paths, file names)."""
    area = TextEdit(value="", label=label)
    area.read_only = True
    native = area.native
    native.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
    native.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    native.setFrameShape(QFrame.Shape.NoFrame)
    native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
    native.setMinimumWidth(0)
    fit = _FitToText(native, lines, max_lines)
    native.installEventFilter(fit)
    native.textChanged.connect(fit.fit)
    area.value = value
    fit.fit()
    return area


class _FitToText(QObject):
    """Keeps a text area as tall as its wrapped text, between two numbers of lines."""

    def __init__(self, area: QTextEdit, lines: int, max_lines: int) -> None:
        super().__init__(area)
        self._area, self._lines, self._max = area, lines, max_lines

    def fit(self) -> None:
        area = self._area
        doc = area.document()
        doc.setTextWidth(area.viewport().width())
        line = area.fontMetrics().lineSpacing()
        margin = 2 * doc.documentMargin() + 4
        wanted = min(max(doc.size().height(), self._lines * line), self._max * line)
        area.setFixedHeight(int(wanted + margin))

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Resize:
            self.fit()
        return False

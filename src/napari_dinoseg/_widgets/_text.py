"""Text in the docks: labels and message areas that wrap, never clip and never widen the dock."""

from __future__ import annotations

import math

from magicgui.widgets import Label, TextEdit
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFrame, QSizePolicy, QTextEdit, QWidget

#: Pixels a message area keeps below its text, so that rounding never brings up a scroll bar.
SLACK = 2
#: Characters a drop-down menu keeps in view when its dock is narrower than its longest item.
MENU_CHARACTERS = 12


def wrap(label: Label) -> Label:
    """Let a label's text wrap at the dock's width and never widen the dock (long paths too)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.native.setMinimumWidth(0)
    return label


def narrow_menus(widget: QWidget) -> None:
    """Let every drop-down menu in ``widget`` be narrower than its longest item (its text then
    elided; the list still opens at full width), so that no menu widens its dock."""
    for menu in widget.findChildren(QComboBox):
        menu.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        menu.setMinimumContentsLength(MENU_CHARACTERS)


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
        try:
            doc = area.document()
        except RuntimeError:  # the area was deleted (its dock closed) before a deferred fit ran
            return
        doc.setTextWidth(area.viewport().width())
        line = area.fontMetrics().lineSpacing()
        margins = 2 * doc.documentMargin()
        chrome = max(0, area.height() - area.viewport().height())  # the style sheet's border and padding
        wanted = min(max(doc.size().height(), self._lines * line + margins), self._max * line + margins)
        area.setFixedHeight(int(math.ceil(wanted)) + chrome + SLACK)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Resize and event.size().width() != event.oldSize().width():
            # the filter sees the resize before the area lays out its viewport: fit afterwards
            QTimer.singleShot(0, self.fit)
        return False

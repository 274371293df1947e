"""Groups of controls that fold away, so that a dock shows its everyday controls first.

As ilastik's applets and Convpaint's tabs do: the controls a user changes on every image stay
in view; feature details, classifier details and files sit in titled sections (superqt's
:class:`~superqt.QCollapsible`), folded until opened. The controls stay magicgui children of
the section (``section.body``), so they are found, reset and iterated as before.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from magicgui.widgets import Container, Widget
from superqt import QCollapsible

#: Animation of a section opened or closed by a click (ms); 0 for code.
FOLD_MS = 120


class Section(Container):
    """A titled, folding group of ``widgets`` (labelled like the dock's own controls)."""

    def __init__(self, title: str, widgets: Sequence[Widget], expanded: bool = False, tooltip: str = "") -> None:
        super().__init__(labels=False)
        self.body = Container(widgets=list(widgets), labels=True)
        self.append(self.body)
        self.fold = QCollapsible(title, expandedIcon="▾", collapsedIcon="▸")
        self.fold.setDuration(FOLD_MS)
        self.fold.addWidget(self.body.native)  # moves the body out of this container's own layout
        self.fold.layout().setContentsMargins(0, 0, 0, 0)
        self.native.layout().addWidget(self.fold)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self.fold.toggleButton().setToolTip(tooltip or f"show or hide: {title}")
        self.tooltip = tooltip or f"show or hide: {title}"
        if expanded:
            self.expand()

    @property
    def expanded(self) -> bool:
        return self.fold.isExpanded()

    def expand(self) -> None:
        """Open the section (no animation)."""
        self.fold.expand(animate=False)

    def collapse(self) -> None:
        """Fold the section (no animation)."""
        self.fold.collapse(animate=False)


def controls(container: Container) -> Iterator[Widget]:
    """Every control of a dock, sections and nested containers opened up (depth first)."""
    for widget in container:
        if isinstance(widget, Container):
            yield from controls(widget)
        else:
            yield widget

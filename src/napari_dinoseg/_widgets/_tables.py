"""Qt views for the docks' tables and plots: a read-only table over a pandas DataFrame (headers
with units, numbers sorted as numbers), a matplotlib canvas as wide as the dock, a scroll area
for a plot taller than its room."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSize, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import QAbstractItemView, QFrame, QHeaderView, QScrollArea, QSizePolicy, QTableView

#: Rows a table shows at least (it scrolls); rows read to size its columns.
TABLE_ROWS, CONTENTS_ROWS = 4, 100
#: Least height (px) of the plots in the dock, and the sizes plot's height per label value's panel
#: (it scrolls when taller than its room).
PLOT_HEIGHT, PANEL_HEIGHT = 200, 120
#: Headers of the table columns whose unit is not their suffix's.
HEADERS = {
    "id": "id (objects layer)", "label": "label (class)", "object": "object (of its class)",
    "pixels": "pixels", "fraction": "area fraction", "expected_fraction": "expected fraction",
    "area_px": "area (px²)", "volume_px": "volume (voxels)", "area_um2": "area (µm²)",
    "volume_um3": "volume (µm³)",
    "eccentricity": "eccentricity (0-1)", "touches_border": "touches border", "pieces": "pieces (of its component)",
    "mean_intensity": "mean intensity (image values)", "mean_confidence": "mean confidence (0-1)",
    "objects_inside": "inside", "median_equivalent_diameter_px": "median diam. (px)",
    "median_equivalent_diameter_um": "median diam. (µm)",
    "centroid_z": "centroid z (px)", "centroid_y": "centroid y (px)", "centroid_x": "centroid x (px)",
}

def column_header(name: str) -> str:
    """A table column's header with its unit: ``"equivalent_diameter_um"`` -> ``"equivalent diameter (µm)"``."""
    if name in HEADERS:
        return HEADERS[name]
    for suffix, unit in (("_um2", "µm²"), ("_um3", "µm³"), ("_um", "µm"), ("_px", "px")):
        if name.endswith(suffix):
            return f"{name[:-len(suffix)].replace('_', ' ')} ({unit})"
    return name.replace("_", " ")


class FrameModel(QAbstractTableModel):
    """A read-only Qt table model over a pandas DataFrame: headers with units, numbers sorted as
    numbers (``Qt.UserRole``), floats shown to 4 significant digits."""

    def __init__(self, frame=None) -> None:
        super().__init__()
        import pandas as pd

        self.frame = pd.DataFrame() if frame is None else frame
        self._columns = [self.frame[c].to_numpy() for c in self.frame.columns]  # cells without pandas' indexing

    def set_frame(self, frame) -> None:
        self.beginResetModel()
        self.frame = frame
        self._columns = [frame[c].to_numpy() for c in frame.columns]
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 (Qt's name)
        return 0 if parent.isValid() else len(self.frame)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 (Qt's name)
        return 0 if parent.isValid() else len(self.frame.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        value = self._columns[index.column()][index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return _shown(value)
        if role == Qt.ItemDataRole.UserRole:
            return value.item() if isinstance(value, np.generic) else value
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(value, (int, float, np.number)) \
                and not isinstance(value, (bool, np.bool_)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 (Qt's name)
        if orientation != Qt.Orientation.Horizontal:
            return str(section + 1) if role == Qt.ItemDataRole.DisplayRole else None
        name = str(self.frame.columns[section])
        if role == Qt.ItemDataRole.DisplayRole:
            return column_header(name)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{name} (the column's name in the CSV files)"
        return None


def _shown(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


class _TableView(QTableView):
    """A table that asks for no more height than its minimum: the plots below get the rest."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(super().sizeHint().width(), self.minimumHeight())


def table(sortable: bool = True) -> tuple[QTableView, FrameModel, QSortFilterProxyModel]:
    """A read-only table view over a :class:`FrameModel`, sorted by a header click when ``sortable``
    (the view's rows then differ from the model's: map them through the proxy)."""
    model = FrameModel()
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    proxy.setSortRole(Qt.ItemDataRole.UserRole)
    view = _TableView()
    view.setModel(proxy)
    if sortable:  # a sort arrow widens every column: not for a table of a few rows
        view.setSortingEnabled(True)
        view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # the table's own order until a header is clicked
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setWordWrap(False)
    view.verticalHeader().setVisible(False)  # rows are named by their columns (class, id)
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().lineSpacing() + 6)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)  # sized to the header and first rows on update
    header.setResizeContentsPrecision(CONTENTS_ROWS)
    view.setMinimumHeight((TABLE_ROWS + 1) * (view.fontMetrics().lineSpacing() + 6) + 8)
    view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
    view.setMinimumWidth(0)
    return view, model, proxy


def canvas():
    """A matplotlib canvas for a dock: as wide as the dock, at least ``PLOT_HEIGHT`` tall."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    # the figure's size in inches at 100 dpi is the canvas's size hint: a dock's width, the least height
    canvas = FigureCanvasQTAgg(Figure(figsize=(3.6, PLOT_HEIGHT / 100), layout="constrained"))
    canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
    canvas.setMinimumSize(0, PLOT_HEIGHT)
    return canvas


def scrolling(widget) -> QScrollArea:
    """``widget`` in a scroll area that scrolls up and down (a plot taller than its room)."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setMinimumHeight(PLOT_HEIGHT)
    return area

"""Base of the dock widgets: one pure job at a time in a napari thread worker.

Gives a widget its Run and Cancel buttons, progress bar and status line; runs the job the
subclass prepares (``_prepare``) with progress and cancellation, mirrored in napari's own
progress bar (activity dock), whose cancel button stops the job too; shows the time left,
measured from the work done so far; turns refusals (``ValueError`` / ``TypeError``) and
failures into notifications; hands the result to ``_on_result`` on the GUI thread; stays safe
when the dock is closed mid-run, or hidden. The dock scrolls (napari docks ``.native``, here the
scroll area) and long messages go into a read-only text area that wraps and never clips.

Background jobs (:meth:`WorkerWidget.run_in_background`, e.g. the train widget's live update)
run one at a time like a click's, but quietly (status line only: no activity-dock bar, no
notification for a refusal or a cancel) and give way: a newer background job cancels a running
one and starts when it has stopped, a click cancels one and runs after it. One job waits at
most, the newest; a job reads its inputs when it starts, so a waiting job sees the newest strokes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from magicgui.widgets import Container, ProgressBar, PushButton
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea
from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_info, show_warning
from superqt.utils import ensure_main_thread

from ..progress import Cancelled
from ._compat import block_triton_if_llvm_is_loaded
from ._feature_controls import SHARED_CACHE
from ._text import message_area, narrow_menus
from ._jobs import import_compute_libraries

logger = logging.getLogger(__name__)

#: napari's progress bar (activity dock) appears once a job has run this long (s), and is
#: updated at most this often (s): under software OpenGL its redraws cost a short click up to
#: 0.7 s (benchmarks/live_update.py), and a job of a second needs no second progress bar.
NAPARI_BAR_AFTER, NAPARI_BAR_EVERY = 1.0, 0.25
#: The dock's own progress bar and status line get a job's reports at most this often (s), the
#: first and the last at once: a live update at 4096² reports ~70 times, and each report handed to
#: the GUI thread costs the worker a few ms of waiting for the GIL and the GUI a redraw of the
#: window, which with napari's OpenGL canvas is composed by OpenGL: under software OpenGL (Mesa's
#: llvmpipe, a VM, a remote desktop) a tenth of a second of a core or more each. Forwarding every
#: change of message (each sigma of each tile) made the first Train / Predict on a 16384² view
#: three times slower there (``benchmarks/multiscale_view.py``).
DOCK_EVERY = 0.5
#: A newly docked widget shares its side of the window this long after napari has placed and
#: shown it (ms).
SHARE_AFTER_MS = 100


def _warm_up() -> None:
    """Import torch, timm and scikit-learn in a daemon thread while the user paints (~3 s),
    so the first click does not pay for it. A plain thread, not a Qt worker: it may still be
    importing when the application quits, and must then neither block the exit nor signal
    a deleted Qt object. Import errors surface, with a message, in the first real job."""

    def work() -> None:
        try:
            import_compute_libraries(vit=False)
            import_compute_libraries(vit=True)
        except Exception:  # noqa: BLE001 (reported by the job that needs the import)
            logger.debug("dinoseg: background import failed", exc_info=True)

    threading.Thread(target=work, name="dinoseg-warm-up", daemon=True).start()


class WorkerWidget(Container):
    """A dock widget whose action runs ``job(*args, progress, announce)`` in a worker."""

    #: Import the compute libraries (torch, timm, scikit-learn) in the background when the dock
    #: opens; ``False`` for docks that never use them.
    WARM_UP = True

    def __init__(self, viewer, run_text: str, idle_text: str) -> None:
        super().__init__(labels=True, scrollable=True)
        self.root_native_widget.setFrameShape(QFrame.Shape.NoFrame)
        self.native.widget().layout().addStretch(1)  # controls at the top of a tall dock; widgets go before it
        self._viewer = viewer
        self.cache = SHARED_CACHE
        self.worker: Optional[FunctionWorker] = None
        self._closed = False
        self._run = PushButton(text=run_text)
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(min=0, max=1000, value=0, label="progress")
        self._status = message_area(idle_text, lines=2)
        self._buttons = Container(widgets=[self._run, self._cancel], layout="horizontal", labels=False)
        self._buttons.margins = (0, 0, 0, 0)
        self._bar: Optional[cancelable_progress] = None  # napari's, in the activity dock
        self._showing = False  # a progress update is being shown (its bar's events may re-enter)
        self._stop_reason = ""  # why the running job was stopped, when not by Cancel
        self._started = 0.0
        self._reported = (0.0, "")  # when the worker last forwarded a progress report, and its message
        self._background = False  # the running job is a background one
        self._waiting: Optional[tuple[Callable[[], tuple[Callable, tuple]], bool]] = None  # (prepare, background)
        self._shown: set[str] = set()  # warnings the last background job showed
        self._run.tooltip = "run in the background; the viewer stays usable"
        self._cancel.tooltip = "stop at the next step; nothing is changed"
        self._progress.tooltip = "progress (also in napari's activity dock, bottom right)"
        self._status.tooltip = "what is happening, and the last result or error"
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self.native.destroyed.connect(self._on_destroyed)
        self._watcher = _DockWatcher(self)
        self.native.installEventFilter(self._watcher)
        block_triton_if_llvm_is_loaded()
        if self.WARM_UP:
            _warm_up()

    @property
    def native(self):
        """The scroll area holding the controls: what napari docks, so that a dock taller than the
        window scrolls instead of pushing the other docks off screen."""
        return self.root_native_widget

    @property
    def hidden(self) -> bool:
        """Whether the dock holding the widget is hidden (not merely tabbed behind another)."""
        dock = _dock_of(self.native)
        return dock is not None and dock.isHidden()

    @property
    def run_controls(self) -> list:
        """Run and Cancel side by side, progress bar and status area, for the subclass's layout."""
        return [self._buttons, self._progress, self._status]

    # ---- for subclasses ------------------------------------------------------------

    def _fill_with_last(self) -> None:
        """Let the last control (an expanding text area: a report) take the dock's spare height
        instead of the stretch that keeps the controls at the top."""
        layout = self.native.widget().layout()
        last = layout.itemAt(layout.count() - 1)
        if last is not None and last.spacerItem() is not None:
            layout.removeItem(last)

    def _prepare(self) -> tuple[Callable, tuple]:
        """Read the inputs on the GUI thread: ``(job, args)``; raise ValueError to refuse."""
        raise NotImplementedError

    def _on_result(self, result: Any) -> None:
        """Write the job's result to layers (GUI thread)."""
        raise NotImplementedError

    def _show_plan(self, plan: str) -> None:
        """Show the job's plan line (GUI thread); subclasses with feature controls show it there too."""
        self._status.value = plan

    # ---- running -------------------------------------------------------------------

    def run(self, *_args) -> Optional[FunctionWorker]:
        """Start the job in a worker; returns the worker, or None when the input is refused or the
        job waits for a running background job to stop."""
        if self.worker is not None:
            if self._background:
                self._after_current(self._prepare, background=False)
                self._status.value = "starting when the running update has stopped…"
            else:
                show_info("dinoseg: already running; wait or click Cancel")
            return None
        return self._start(self._prepare, background=False)

    def run_in_background(self, prepare: Callable[[], tuple[Callable, tuple]]) -> Optional[FunctionWorker]:
        """Run ``prepare``'s job as a background job: now when nothing runs; else when the running
        job has stopped (a background one is cancelled; a click's job finishes). Replaces a
        waiting background job, never a waiting click. Returns the worker when it starts now;
        none starts while the dock is closed or hidden."""
        if self._closed or self.hidden:
            return None
        if self.worker is None:
            return self._start(prepare, background=True)
        if self._waiting is None or self._waiting[1]:
            self._after_current(prepare, background=True)
        return None

    def stop_background(self) -> None:
        """Forget a waiting background job and cancel a running one."""
        if self._waiting is not None and self._waiting[1]:
            self._waiting = None
        if self.worker is not None and self._background:
            self.worker.quit()

    def cancel(self, *_args) -> None:
        """Ask the running worker to stop at its next progress step; forget a waiting job."""
        self._waiting = None
        if self.worker is not None:
            self.worker.quit()
            self._status.value = "cancelling…"

    def _after_current(self, prepare: Callable[[], tuple[Callable, tuple]], background: bool) -> None:
        """Start ``prepare``'s job when the running one has stopped, cancelling it if it is a background job."""
        self._waiting = (prepare, background)
        if self._background and not self.worker.abort_requested:
            self.worker.quit()

    def _start(self, prepare: Callable[[], tuple[Callable, tuple]], background: bool) -> Optional[FunctionWorker]:
        try:
            job, args = prepare()
        except (ValueError, TypeError) as err:
            self._refuse(str(err), background)
            return None
        worker = create_worker(
            job, *args, self._progress_callback, self._announce, _start_thread=False,
            _connect={"returned": self._on_returned, "errored": self._on_errored, "finished": self._on_finished},
        )
        self.worker, self._background, self._stop_reason = worker, background, ""
        self._run.enabled, self._cancel.enabled, self._progress.value = background, True, 0
        self._status.value = "starting…"
        self._bar = None  # napari's progress bar: made once the job has run NAPARI_BAR_AFTER seconds
        self._started = self._bar_updated = time.perf_counter()
        self._reported = (0.0, "")
        worker.start()
        return worker

    def _progress_callback(self, done: int, total: int, message: str) -> None:
        """Called in the worker thread: raise to cancel, else forward to the GUI thread (the
        first report, the end, or ``DOCK_EVERY`` s after the last forwarded report)."""
        bar = self._bar
        if self._closed or (self.worker is not None and self.worker.abort_requested) or \
                (bar is not None and bar.is_canceled):
            raise Cancelled()
        now, (last, _) = time.perf_counter(), self._reported
        if last == 0.0 or done >= total or now - last >= DOCK_EVERY:
            self._reported = (now, message)
            self._show_progress(done, total, message)

    @ensure_main_thread
    def _show_progress(self, done: int, total: int, message: str) -> None:
        if self._closed or self._showing:
            return  # napari's bar, made or updated below, may run queued updates: they are dropped
        self._showing = True
        try:
            self._update_progress(done, total, message)
        finally:
            self._showing = False

    def _update_progress(self, done: int, total: int, message: str) -> None:
        left = self.seconds_left(done, total)
        self._progress.max, self._progress.value = total, done
        if message:  # a report without a message (a background preparation's) moves the bar only
            self._status.value = message + (f" (about {_duration(left)} left)" if left is not None else "")
        now = time.perf_counter()
        if self._bar is None and not self._background and self.worker is not None \
                and now - self._started >= NAPARI_BAR_AFTER:
            bar = cancelable_progress(total=total, desc=f"dinoseg: {self._run.text}")
            if self.worker is None:  # its events ran the job's _on_finished meanwhile: nothing to show
                bar.close()
                return
            self._bar = bar
        bar = self._bar  # its events may run queued callbacks, _on_finished among them
        if bar is not None and (now - self._bar_updated >= NAPARI_BAR_EVERY or done >= total):
            self._bar_updated = now
            if bar.total != total:
                bar.total = total
            bar.set_description(f"dinoseg: {message[:48]}")
            bar.update(done - bar.n)

    def seconds_left(self, done: int, total: int) -> Optional[float]:
        """Time left, from the rate of the work done so far (``None`` until 3 % and 2 s are done)."""
        elapsed = time.perf_counter() - self._started
        if total <= 0 or done < 0.03 * total or elapsed < 2.0 or done >= total:
            return None
        return elapsed * (total - done) / done

    @ensure_main_thread
    def _announce(self, plan: str) -> None:
        if not self._closed:
            self._show_plan(plan)

    def _on_returned(self, result: Any) -> None:
        if self._closed:
            return
        messages = list(getattr(result, "messages", []))
        for message in messages:
            if not (self._background and message in self._shown):  # a live update does not repeat itself
                show_warning(f"dinoseg: {message}")
        self._shown = set(messages) if self._background else set()
        self._on_result(result)
        self._progress.value = self._progress.max

    def _on_errored(self, err: BaseException) -> None:
        if self._closed:
            return
        self._progress.value = 0
        if isinstance(err, Cancelled):
            superseded = self._background and self._waiting is not None
            self._status.value = self._stop_reason or (
                "stopped for a newer update" if superseded else "cancelled; nothing was changed")
            if not self._background:
                show_info("dinoseg: cancelled")
        elif isinstance(err, (ValueError, TypeError)):
            self._refuse(str(err), self._background)
        else:
            logger.exception("dinoseg: %s failed", self._run.text, exc_info=err)
            self._fail(f"{type(err).__name__}: {err}")

    def _on_finished(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._closed:
            return
        self.worker, self._background = None, False
        self._run.enabled, self._cancel.enabled = True, False
        if self._waiting is not None:
            prepare, background = self._waiting
            self._waiting = None
            self._start(prepare, background)

    def _on_destroyed(self, *_args) -> None:
        """The dock was closed: stop the worker; its callbacks must not touch deleted widgets."""
        self._closed = True
        self._waiting = None
        if self.worker is not None:
            self.worker.quit()

    def _on_hidden(self) -> None:
        """The dock was hidden (its hide button, the Window menu): stop the running job and forget
        a waiting one, as Cancel does; the dock works again when shown."""
        if self.worker is not None or self._waiting is not None:
            self.cancel()
            self._stop_reason = "stopped: the dock was hidden; nothing was changed"

    def _fail(self, message: str) -> None:
        self._status.value = f"error: {message}"
        show_error(f"dinoseg: {message}")

    def _refuse(self, message: str, background: bool) -> None:
        """A refusal: a notification for a click; the status line alone for a background job
        (strokes of one class, say, are a normal state while painting)."""
        if background:
            self._status.value = f"waiting: {message}"
        else:
            self._fail(message)


class _DockWatcher(QObject):
    """Tells a :class:`WorkerWidget` when napari closes its dock (the dock's ✕ takes the widget
    out of the dock: ``setParent(None)``, no ``destroyed`` while Python holds it) or hides it
    (the hide button, the Window menu; a dock merely tabbed behind another is not hidden)."""

    def __init__(self, widget: "WorkerWidget") -> None:
        super().__init__()
        self._widget = widget
        self._docked = False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
                narrow_menus(obj)
                timer = QTimer(obj)  # a child: never fires for a widget deleted meanwhile
                timer.setSingleShot(True)
                timer.timeout.connect(lambda: share_dock_space(_dock_of(obj)))
                timer.timeout.connect(timer.deleteLater)
                timer.start(SHARE_AFTER_MS)
            elif self._docked:  # taken out of its dock: closed
                self._widget._on_destroyed()
        elif kind == QEvent.Type.Hide and not event.spontaneous():
            dock = _dock_of(obj)
            if dock is not None and dock.isHidden():
                self._widget._on_hidden()
        return False


def share_dock_space(dock: Optional[QDockWidget]) -> None:
    """Share the height of ``dock``'s side of the window among the docks stacked there, in
    proportion to what each needs to show all of its controls (napari gives a new dock the room
    the others need, leaving them a title and a row or two); each then scrolls what it cannot show."""
    window = None if dock is None else dock.parentWidget()
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    docks = [d for d in window.findChildren(QDockWidget) if not d.isHidden() and not d.isFloating()
             and window.dockWidgetArea(d) == area and not window.tabifiedDockWidgets(d)]
    if len(docks) < 2:
        return
    needs = []
    for d in docks:
        inner = d.widget()
        content = inner.widget() if isinstance(inner, QScrollArea) and inner.widget() is not None else inner
        needs.append(max(1, content.sizeHint().height() + d.titleBarWidget().sizeHint().height()
                         if d.titleBarWidget() is not None else content.sizeHint().height()))
    window.resizeDocks(docks, needs, Qt.Orientation.Vertical)


def _dock_of(widget) -> Optional[QDockWidget]:
    """The dock widget holding ``widget``, or ``None``."""
    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"

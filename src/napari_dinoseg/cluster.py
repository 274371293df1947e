"""Apply a saved classifier on a dask.distributed cluster: connect, check, send, watch.

:func:`napari_dinoseg.batch.apply_bundle` hands its jobs here when it is given a scheduler (an
address or a dask ``Client``). Every wait is bounded, and every way the cluster can fail ends with
a message:

- An address where no dask scheduler answers is refused within ``CONNECT_TIMEOUT`` seconds:
  nothing listening, a firewall that drops the connection, a server of another kind (a web
  server, the dashboard's port), a port that accepts and stays silent, a worker's address.
- A scheduler without workers is waited on for ``WORKER_TIMEOUT`` seconds for a first one, then
  refused.
- Paths are sent as this machine's absolute paths (a relative path would be read in each
  worker's own working folder), and every worker is asked, before work starts, whether it sees
  the classifier, the output folder and a sample of the inputs there: a run whose workers do not
  is refused, naming the worker, its host, its working folder and what it lacks (and so is a
  run whose workers cannot import napari-dinoseg).
- Mid-run, a lost scheduler, or no workers (or no answer from the scheduler) for
  ``WORKER_TIMEOUT`` seconds, stops the run with :class:`ClusterLost`: the images whose results
  did not come back are reported as not finished, the outputs finished are kept, and a rerun
  goes on from there.
- An image whose worker died with it (``KilledWorker``) fails with that reason, and one that
  failed on a worker which cannot see its files says so.

Nothing here imports dask until it is used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

#: Seconds to wait for a dask scheduler to answer (connection and handshake).
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a first worker before work starts, and mid-run the longest a run waits
#: while the scheduler has no workers or does not answer.
WORKER_TIMEOUT = 20.0
#: Seconds between looks at the cluster while no result comes back.
WATCH_EVERY = 1.0
#: How many inputs each worker is asked about before work starts (spread over the list).
SAMPLE = 64
_POLL = 0.05
#: Said of the images not reported when the scheduler is lost: a worker may finish one still.
_IN_HAND = "; a worker may still write its output, which a rerun keeps"


class ClusterLost(RuntimeError):
    """The cluster went away mid-run: its scheduler, or every worker for ``WORKER_TIMEOUT`` s.

    ``str(err)`` says what happened and what to do; ``err.unfinished`` is the reason to give each
    image whose result did not come back."""

    def __init__(self, message: str, unfinished: str):
        super().__init__(message)
        self.unfinished = unfinished


def connect(address: str, timeout: Optional[float] = None):
    """A dask ``Client`` of the scheduler at ``address``.

    The scheduler is first asked who it is over a connection of its own, within ``timeout``
    seconds (``CONNECT_TIMEOUT``): dask's own handshake waits for ever on a port that accepts and
    never answers.

    Raises
    ------
    TypeError
        ``address`` is not a string.
    ValueError
        No dask scheduler answers at ``address`` within ``timeout``, saying what answered instead.
    """
    from dask.distributed import Client
    from distributed.comm import CommClosedError

    if not isinstance(address, str):
        raise TypeError(f"scheduler must be a dask Client or an address such as 'tcp://host:8786', got "
                        f"{type(address).__name__}")
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    refused = f"cannot reach a dask scheduler at {address!r} within {timeout:g} s"
    not_dask = ("did not answer as a dask scheduler does (a web server, or the dashboard's port, 8787, instead of "
                "the scheduler's, 8786?); give the address the scheduler prints at start")
    try:
        identity = _ask_identity(address, timeout)
    except asyncio.TimeoutError:  # connected, then silence
        raise ValueError(f"{refused}: something there accepted the connection but {not_dask}") from None
    except CommClosedError as err:  # connected, then closed on us (a refused connection is an OSError)
        raise ValueError(f"{refused}: something there accepted the connection, then closed it ({err}); it "
                         f"{not_dask}") from None
    except OSError as err:  # nothing listening, or a connection dropped: tried until the timeout
        raise ValueError(f"{refused} ({type(err).__name__}: {err}); is it running, and is the address "
                         "right?") from None
    except ValueError as err:  # a malformed address
        raise ValueError(f"{address!r} is not a dask scheduler address ({err}); give one such as "
                         "'tcp://host:8786'") from None
    except Exception as err:  # bytes that are not dask's protocol
        raise ValueError(f"{refused}: something there answered, but not as a dask scheduler "
                         f"({type(err).__name__}: {err}); check the address") from None
    kind = identity.get("type") if isinstance(identity, dict) else type(identity).__name__
    if kind != "Scheduler":
        raise ValueError(f"{address!r} is not a dask scheduler's address: a dask {kind} answered there; give "
                         "the address the scheduler prints at start (dask scheduler)")
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, asyncio.TimeoutError, ValueError) as err:
        raise ValueError(f"{refused} ({type(err).__name__}: {err}); is it running, and is the address "
                         "right?") from None


def _ask_identity(address: str, timeout: float) -> dict:
    """What the dask server at ``address`` says it is, within ``timeout`` s: the connection is
    tried for 0.9 of it (``OSError`` when nothing accepts it), the whole exchange is cut at
    ``timeout`` (``asyncio.TimeoutError``). Runs in a thread of its own, so that a caller inside an
    event loop (a notebook) can call it too."""
    from distributed.comm import connect as open_comm

    async def ask():
        comm = await open_comm(address, timeout=0.9 * timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded():
        return await asyncio.wait_for(ask(), timeout)

    outcome: list = []

    def run():
        try:
            outcome.append(asyncio.run(bounded()))
        except BaseException as err:  # handed to the caller's thread
            outcome.append(err)

    thread = threading.Thread(target=run, name="dinoseg-ask-scheduler", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not outcome:
        raise asyncio.TimeoutError
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def prepare(scheduler, jobs: Sequence[tuple], worker_timeout: Optional[float] = None):
    """A dask ``Client`` ready to run ``jobs``: connected (see :func:`connect`), with a worker
    (waiting up to ``worker_timeout`` s, ``WORKER_TIMEOUT``), and every worker seeing the files.

    ``scheduler`` is a dask ``Client`` (used as it is, never closed here) or an address.
    ``jobs`` are :func:`napari_dinoseg.batch.process_file` argument tuples, starting
    ``(input, bundle, output folder, ...)``; with none, only the connection is checked.

    Raises
    ------
    ValueError
        No scheduler answers, it has no worker, or a worker cannot see the files.
    """
    from dask.distributed import Client

    quiet_lost_connections()
    if isinstance(scheduler, Client):
        if scheduler.status != "running":
            raise ValueError(f"the dask Client given is not connected (its status is {scheduler.status!r}); "
                             "connect it, or give the scheduler's address")
        client = scheduler
    else:
        client = connect(scheduler)
    try:
        if jobs:
            _wait_for_workers(client, WORKER_TIMEOUT if worker_timeout is None else worker_timeout)
            _check_paths(client, jobs)
    except BaseException:
        release(client, scheduler)
        raise
    return client


def _address(client) -> str:
    return client.scheduler.address


def _workers(client) -> dict:
    """``{worker address: threads}``, asked of the scheduler within ``CONNECT_TIMEOUT`` s."""
    return client.nthreads(callback_timeout=CONNECT_TIMEOUT)


def _wait_for_workers(client, timeout: float) -> None:
    address = _address(client)
    deadline = time.monotonic() + timeout
    try:
        while not _workers(client):
            if time.monotonic() >= deadline:
                raise ValueError(f"the dask scheduler at {address} has no workers: none joined within {timeout:g} s; "
                                 f"start some (dask worker {address}) and run again")
            time.sleep(0.2)
    except (OSError, TimeoutError, asyncio.TimeoutError) as err:
        raise ValueError(f"the dask scheduler at {address} stopped answering ({type(err).__name__}: {err})") \
            from None


def _absolute(path) -> str:
    return os.path.abspath(os.fspath(path))


def _check_paths(client, jobs: Sequence[tuple]) -> None:
    """Ask every worker whether it sees the classifier, the output folder (writable) and a sample
    of ``SAMPLE`` inputs at the paths sent; refuse the run, naming what each lacks, when one does
    not or cannot run napari-dinoseg at all."""
    step = -(-len(jobs) // SAMPLE)
    inputs = [_absolute(job[0]) for job in jobs[::step]]
    bundle, out = _absolute(jobs[0][1]), _absolute(jobs[0][2])
    try:
        answers = client.run(_look, bundle, out, inputs, on_error="return", callback_timeout=WORKER_TIMEOUT)
    except (OSError, TimeoutError, asyncio.TimeoutError) as err:
        raise ValueError(f"the dask workers did not say within {WORKER_TIMEOUT:g} s whether they see this run's "
                         f"files ({type(err).__name__}: {err})") from None
    unable, blind = [], []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            unable.append(f"worker {worker} ({type(answer).__name__}: {answer})")
        elif answer["missing"]:
            lacks = answer["missing"]
            shown = ", ".join(lacks[:3]) + (f" and {len(lacks) - 3} more" if len(lacks) > 3 else "")
            blind.append(f"worker {worker} (host {answer['host']}, working folder {answer['cwd']}) cannot see {shown}")
    problems = []
    if unable:
        problems.append("the dask workers cannot run napari-dinoseg: " + _some(unable)
                        + "; install napari-dinoseg in the workers' environment")
    if blind:
        problems.append("the dask workers cannot see this run's files: " + _some(blind) + ". Paths are sent as "
                        "this machine's absolute paths: the workers need the classifier, the inputs and the "
                        "output folder at the same paths, on a file system they share")
    if problems:
        raise ValueError("; and ".join(problems))


def _some(items: list) -> str:
    return "; ".join(items[:3]) + (f"; and {len(items) - 3} more workers" if len(items) > 3 else "")


def _look(bundle: str, out: str, inputs: list) -> dict:
    """On a worker: its host, working folder, and which of the paths it cannot see (the output
    folder: cannot write)."""
    missing = [] if os.path.isfile(bundle) else [bundle]
    if not (os.path.isdir(out) and os.access(out, os.W_OK | os.X_OK)):
        missing.append(f"{out} (the output folder, to write)")
    missing += [path for path in inputs if not (os.path.isfile(path) or os.path.isdir(path))]  # a dir: a zarr store
    return {"host": socket.gethostname(), "cwd": os.getcwd(), "missing": missing}


def _on_worker(run: Callable[..., tuple], path: str, bundle: str, out_dir: str, *rest) -> tuple:
    """``run(path, bundle, out_dir, *rest)`` on a worker; a failure there on a file the worker
    cannot see says so."""
    result = run(path, bundle, out_dir, *rest)
    if result[1] != "failed":
        return result
    unseen = [p for p in (path, bundle) if not (os.path.isfile(p) or os.path.isdir(p))]
    unseen += [] if os.path.isdir(out_dir) else [out_dir]
    if not unseen:
        return result
    where = f"the dask worker on host {socket.gethostname()} (working folder {os.getcwd()}) cannot see"
    return (*result[:2], f"{result[2]} ({where} {', '.join(unseen)})", *result[3:])


def run_jobs(client, jobs: Sequence[tuple], run: Callable[..., tuple],
             worker_timeout: Optional[float] = None) -> Iterator[tuple]:
    """Yield the results of ``run(*job)`` for ``jobs`` as the cluster finishes them, naming each
    input and output as the job did (the paths are sent absolute); cancel the rest when closed.

    Parameters
    ----------
    client
        A dask ``Client`` (from :func:`prepare`).
    jobs : sequence of tuple
        ``(input, bundle, output folder, *rest)``, the arguments of ``run``.
    run
        What a worker does with a job (:func:`napari_dinoseg.batch.process_file`): returns
        ``(input, status, detail, warnings)``, ``detail`` the output's path when ``status`` is
        ``"done"``. Sent to the workers, so a module-level function.
    worker_timeout
        Seconds without workers (or an answer from the scheduler) before the cluster is lost;
        ``None``: ``WORKER_TIMEOUT``.

    Raises
    ------
    ClusterLost
        The scheduler was lost, or had no workers (or did not answer) for ``worker_timeout``
        seconds (``WORKER_TIMEOUT``).
    """
    from concurrent.futures import CancelledError

    from dask.distributed import as_completed

    if not jobs:
        return
    sent = [(_absolute(job[0]), _absolute(job[1]), _absolute(job[2]), *job[3:]) for job in jobs]
    futures = client.map(partial(_on_worker, run), *zip(*sent), pure=False)
    job_of = {future.key: job for future, job in zip(futures, jobs)}
    watch = _Watch(client, WORKER_TIMEOUT if worker_timeout is None else worker_timeout)
    # results fetched in dask's event loop: a result on a worker that died is computed again
    # there, while this loop keeps watching the cluster
    finished = as_completed(futures, loop=client.loop, with_results=True, raise_errors=False)
    try:
        while not finished.is_empty():
            if not finished.has_ready():
                watch.check()
                time.sleep(_POLL)
                continue
            future, result = next(finished)
            if future.cancelled() or isinstance(result, (CancelledError, asyncio.CancelledError)):
                raise watch.lost()
            yield _result(future, result, job_of[future.key])
    finally:
        if client.status == "running":
            client.cancel([future for future in futures if not future.done()])


def _result(future, result, job: tuple) -> tuple:
    """A finished future's ``process_file`` result, with the input and output as the job named
    them; a task that raised (its workers died with it: ``KilledWorker``) is a failed image."""
    if future.status == "error":  # result: (type, exception, traceback)
        err = result[1]
        died = "its dask workers died while segmenting it (out of memory, or a crash): " * (
            type(err).__name__ == "KilledWorker")
        return job[0], "failed", f"{died}{type(err).__name__}: {err}", []
    _, status, detail, warnings = result
    if status == "done":  # the output as a run on this machine names it
        detail = str(Path(job[2]) / Path(detail).name)
    return job[0], status, detail, warnings


class _Watch:
    """Mid-run looks at the cluster: raises :class:`ClusterLost` when the scheduler is gone, or
    has had no workers, or has not answered, for ``timeout`` seconds."""

    def __init__(self, client, timeout: float):
        self.client, self.timeout = client, timeout
        self.address = _address(client)
        self.looked = self.answered = self.staffed = time.monotonic()

    def lost(self) -> ClusterLost:
        return ClusterLost(f"lost the connection to the dask scheduler at {self.address} (it stopped, or the "
                           "network failed); finished outputs are kept, and a rerun goes on from there",
                           f"not finished: the run stopped early (the dask scheduler was lost){_IN_HAND}")

    def check(self) -> None:
        if self.client.status != "running":
            raise self.lost()
        if time.monotonic() - self.looked < WATCH_EVERY:
            return
        try:
            workers = _workers(self.client)
        except (OSError, TimeoutError, asyncio.TimeoutError):
            workers = None
        now = self.looked = time.monotonic()
        if self.client.status != "running":
            raise self.lost()
        if workers is None:
            if now - self.answered >= self.timeout:
                raise ClusterLost(f"the dask scheduler at {self.address} has not answered for {self.timeout:g} s; "
                                  "finished outputs are kept, and a rerun goes on from there",
                                  "not finished: the run stopped early (the dask scheduler stopped answering)"
                                  f"{_IN_HAND}")
            return
        self.answered = now
        if workers:
            self.staffed = now
        elif now - self.staffed >= self.timeout:
            raise ClusterLost(f"the dask scheduler at {self.address} has had no workers for {self.timeout:g} s "
                              "(they stopped or died); start workers and run again: finished outputs are kept, and "
                              "a rerun goes on from there", "not run: the run stopped early (no dask workers)")


def release(client, scheduler) -> None:
    """Close ``client`` when this run opened it (not when it is the ``scheduler`` given),
    without dask's log of a reconnection cut short when the scheduler is gone."""
    if client is None or client is scheduler:
        return
    with _quiet("distributed.client", "distributed.utils", "distributed.core"):
        client.close()


def quiet_lost_connections() -> None:
    """Keep tornado from printing a traceback of dask's client when the scheduler's connection
    breaks mid-run (a request's future failing with ``CommClosedError``, logged by tornado's
    event loop): the run says it itself ("lost the connection to the dask scheduler at ..."). Only
    those records are dropped (:func:`_not_a_lost_connection` on ``tornado.application``); idempotent."""
    logger = logging.getLogger("tornado.application")
    if _not_a_lost_connection not in logger.filters:
        logger.addFilter(_not_a_lost_connection)


def _not_a_lost_connection(record: logging.LogRecord) -> bool:
    """``False`` for a log record of an exception that is a dask connection closed."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and type(exc).__name__ == "CommClosedError"
                and type(exc).__module__.startswith("distributed."))


@contextmanager
def _quiet(*names: str):
    """dask's loggers ``names`` silent (but for critical messages) for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)

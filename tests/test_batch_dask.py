"""``dinoseg apply --scheduler`` against real processes and sockets: nothing hung, nothing lost.

Addresses where no dask scheduler answers (a silent listener, a web server, nothing, a worker),
a scheduler without workers, a scheduler killed mid-run, workers that leave mid-run or die on an
image, workers started in another working folder given relative paths, and workers that cannot
see the files. Schedulers and workers are ``python -m dask`` subprocesses on the loopback, and
the CLI runs in a subprocess of its own, so a hang fails the test (``subprocess`` timeout) instead
of stopping the suite, and the process is seen to exit.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_dinoseg import FeatureConfig, Segmenter, TrainConfig, apply_bundle, batch, cluster
from napari_dinoseg.batch import LABEL_SUFFIX

FAST = FeatureConfig(sigmas=(1, 2), membrane=False)
#: Seconds a CLI run may take before the test calls it hung (the runs here take 3 to 15 s).
HANG = 120
#: The CLI with ``cluster.WORKER_TIMEOUT`` set from its first argument (the rest are dinoseg's).
RUNNER = ("import sys; from napari_dinoseg import cluster; cluster.WORKER_TIMEOUT = float(sys.argv[1]); "
          "from napari_dinoseg.cli import main; sys.exit(main(sys.argv[2:]))")


@pytest.fixture
def bundle(tmp_path, two_textures):
    image, _, scribbles = two_textures
    path = tmp_path / "clf.dinoseg"
    Segmenter(FAST, TrainConfig(classifier="logistic")).fit(image, scribbles).save(path)
    return path


def write_images(folder: Path, image: np.ndarray, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i}.tif" for i in range(n)]
    for i, path in enumerate(paths):
        tifffile.imwrite(path, np.roll(image, 17 * i, axis=1))
    return paths


def dinoseg(args, worker_timeout: float = cluster.WORKER_TIMEOUT, cwd=None, timeout: float = HANG):
    """(exit status, stdout, stderr, seconds) of ``dinoseg ARGS`` in a process of its own."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(worker_timeout), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Dask schedulers and workers started for a test, killed (with their children) at its end;
    those of a test run killed before its end stop by themselves within 10 minutes."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, args, cwd=None, env=None, prefix=()) -> subprocess.Popen:
        process = subprocess.Popen([*prefix, sys.executable, "-m", "dask", *map(str, args)], cwd=cwd,
                                   env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.started.append(process)
        return process

    def scheduler(self, env=None) -> tuple[subprocess.Popen, str]:
        port = free_port()
        process = self.start(["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard",
                              "--idle-timeout", "600"], env=env)
        deadline = time.monotonic() + 60
        while True:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process, f"tcp://127.0.0.1:{port}"
            except OSError:
                assert process.poll() is None, "the dask scheduler did not start"
                assert time.monotonic() < deadline, "the dask scheduler did not listen within 60 s"
                time.sleep(0.1)

    def worker(self, address: str, cwd, *options, prefix=()) -> subprocess.Popen:
        return self.start(["worker", address, "--nthreads", "1", "--memory-limit", "0", "--death-timeout", "30",
                           "--lifetime", "600", *options], cwd=cwd, prefix=prefix)

    def stop(self):
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the worker a nanny started too
            process.wait(timeout=30)


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop()


def wait_for_workers(address: str, n: int = 1, timeout: float = 60) -> list[str]:
    from dask.distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)
        return sorted(client.nthreads())


def slow_worker_preload(folder: Path, seconds: float, die_on: str = "") -> Path:
    """A worker preload that makes each image take ``seconds`` more, and kills the worker's
    process on the input named ``die_on``."""
    path = folder / "dinoseg_preload.py"
    path.write_text(
        "import os, time\n"
        "import napari_dinoseg.batch as batch\n"
        "segment = getattr(batch.process_file, 'segment', batch.process_file)  # dask may import it twice\n"
        "def process_file(path, *args):\n"
        f"    if os.path.basename(path) == {die_on!r}:\n"
        "        os._exit(1)\n"
        f"    time.sleep({seconds})\n"
        "    return segment(path, *args)\n"
        "process_file.segment = segment\n"
        "batch.process_file = process_file\n")
    return path


# ---- addresses where no dask scheduler answers: exit 2 within CONNECT_TIMEOUT ------------------------------


def listener(hang_up: bool):
    """A plain socket that accepts connections and never says a word (or hangs up at once)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            (conn.close() if hang_up else held.append(conn))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def silent_listener():
    yield from listener(hang_up=False)


@pytest.fixture
def hanging_up_listener():
    yield from listener(hang_up=True)


@pytest.fixture
def web_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("server", ["silent_listener", "hanging_up_listener", "web_server"])
def test_an_address_that_does_not_speak_dask_is_refused_in_time(tmp_path, bundle, two_textures, server, request):
    address = request.getfixturevalue(server)
    start = time.monotonic()
    with pytest.raises(ValueError, match="did not answer as a dask scheduler does") as err:
        cluster.connect(address)
    took = time.monotonic() - start
    assert took < cluster.CONNECT_TIMEOUT + 3, f"refused after {took:.1f} s, not within {cluster.CONNECT_TIMEOUT} s"
    assert f"cannot reach a dask scheduler at {address!r} within 5 s" in str(err.value)

    write_images(tmp_path / "in", two_textures[0], 2)
    code, out, err, _ = dinoseg(["apply", bundle, tmp_path / "in", "-o", tmp_path / "out", "--scheduler", address])
    assert code == 2, err
    assert "dinoseg: error: cannot reach a dask scheduler" in err and "did not answer as a dask scheduler" in err
    assert "Traceback" not in err and out == ""
    assert not list((tmp_path / "out").glob(f"*{LABEL_SUFFIX}"))


def test_nothing_listening_and_a_bad_address_are_refused(tmp_path, bundle, two_textures):
    port = free_port()  # closed again: nothing listens there
    with pytest.raises(ValueError, match=f"cannot reach a dask scheduler at 'tcp://127.0.0.1:{port}' within 5 s "
                                         r"\(OSError: .*is it running, and is the address right\?"):
        cluster.connect(f"tcp://127.0.0.1:{port}")
    with pytest.raises(ValueError, match="'tcp://127.0.0.1:notaport' is not a dask scheduler address"):
        cluster.connect("tcp://127.0.0.1:notaport")
    with pytest.raises(TypeError, match="scheduler must be a dask Client or an address"):
        cluster.connect(8786)


# ---- a scheduler without workers: wait WORKER_TIMEOUT for one, then exit 2 ---------------------------------


def test_a_scheduler_without_workers_is_refused_after_the_worker_timeout(tmp_path, bundle, two_textures, processes):
    _, address = processes.scheduler()
    write_images(tmp_path / "in", two_textures[0], 2)
    code, out, err, _ = dinoseg(["apply", bundle, tmp_path / "in", "-o", tmp_path / "out", "--scheduler", address],
                                worker_timeout=1)
    assert code == 2, err
    assert f"dinoseg: error: the dask scheduler at {address} has no workers: none joined within 1 s" in err
    assert f"start some (dask worker {address})" in err and "Traceback" not in err


def test_a_client_of_a_cluster_without_workers_is_refused_and_left_open(tmp_path, bundle, two_textures, monkeypatch):
    from dask.distributed import Client, LocalCluster

    monkeypatch.setattr(cluster, "WORKER_TIMEOUT", 0.5)
    inputs = write_images(tmp_path / "in", two_textures[0], 2)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as local, \
            Client(local, set_as_default=False) as client:
        with pytest.raises(ValueError, match="has no workers: none joined within 0.5 s"):
            apply_bundle(bundle, inputs, tmp_path / "out", scheduler=client)
        assert client.status == "running"  # the caller's client: not closed
        apply_bundle(bundle, inputs, tmp_path / "out")  # here
        summary = apply_bundle(bundle, inputs, tmp_path / "out", scheduler=client)  # nothing left: no worker needed
        assert client.status == "running"
    assert len(summary.skipped) == 2 and not summary.failed and not summary.done


# ---- a scheduler killed mid-run, workers gone or dying mid-run: a summary, exit 1 ------------------------


def test_a_scheduler_killed_mid_run_gives_a_summary_and_exit_1(tmp_path, bundle, two_textures, processes):
    scheduler, address = processes.scheduler()
    processes.worker(address, tmp_path, "--no-nanny", "--preload", slow_worker_preload(tmp_path, 0.5))
    wait_for_workers(address)
    write_images(tmp_path / "in", two_textures[0], 8)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-c", RUNNER, "20", "apply", str(bundle), str(tmp_path / "in"),
                            "-o", str(out), "--scheduler", address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG
        while not list(out.glob(f"*{LABEL_SUFFIX}")):  # the first image done: kill the scheduler
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                pytest.fail(f"no image done: {run.communicate()}")
            time.sleep(0.05)
        scheduler.kill()
        stdout, stderr = run.communicate(timeout=HANG)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 1, stderr
    assert "stopped early: lost the connection to the dask scheduler at " + address in stdout
    counts = stdout.splitlines()[0]  # "done D, skipped 0 (0 already there), failed F"
    done, failed = int(counts.split()[1].rstrip(",")), int(counts.split(", failed ")[1].split(";")[0])
    assert failed >= 1 and done + failed == 8, stdout  # every image accounted for
    assert stdout.count("not finished: the run stopped early (the dask scheduler was lost); a worker may "
                        "still write its output, which a rerun keeps") == failed
    assert "Traceback" not in stderr and "CancelledError" not in stderr + stdout


def test_workers_gone_mid_run_stop_the_run_after_the_worker_timeout(tmp_path, bundle, two_textures, processes):
    _, address = processes.scheduler()
    # img2 kills its worker's process; without a nanny nothing restarts it
    processes.worker(address, tmp_path, "--no-nanny", "--preload", slow_worker_preload(tmp_path, 0.0, "img2.tif"))
    wait_for_workers(address)
    inputs = write_images(tmp_path / "in", two_textures[0], 4)
    code, out, err, _ = dinoseg(["apply", bundle, *inputs, "-o", tmp_path / "out", "--scheduler", address],
                                worker_timeout=2)
    assert code == 1, err
    assert f"stopped early: the dask scheduler at {address} has had no workers for 2 s" in out
    assert f"failed: {inputs[2]}: not run: the run stopped early (no dask workers)" in out
    assert "Traceback" not in err


def test_an_image_that_kills_its_worker_fails_and_the_others_are_done(tmp_path, bundle, two_textures, processes):
    # a task is given up at the first death of its worker, and a worker holds one task at a time
    # (so that no other image dies with it); the nanny starts a new worker for the others
    _, address = processes.scheduler(env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
                                          "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"})
    processes.worker(address, tmp_path, "--nanny", "--preload", slow_worker_preload(tmp_path, 0.0, "img1.tif"))
    wait_for_workers(address)
    inputs = write_images(tmp_path / "in", two_textures[0], 5)
    code, out, err, _ = dinoseg(["apply", bundle, *inputs, "-o", tmp_path / "out", "--scheduler", address])
    assert code == 1, err
    assert out.splitlines()[0] == "done 4, skipped 0 (0 already there), failed 1", out
    assert (f"failed: {inputs[1]}: its dask workers died while segmenting it (out of memory, or a crash): "
            "KilledWorker: ") in out


# ---- paths: relative ones work from workers elsewhere; unseen files are named ------------------------------


def test_relative_paths_reach_workers_started_in_another_folder(tmp_path, bundle, two_textures, processes,
                                                                monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_images(here / "in", two_textures[0], 3)
    os.replace(bundle, here / "clf.dinoseg")
    _, address = processes.scheduler()
    processes.worker(address, elsewhere)
    (worker,) = wait_for_workers(address)
    code, out, err, _ = dinoseg(["apply", "clf.dinoseg", "in", "-o", "out", "--scheduler", address], cwd=here)
    assert code == 0, out + err
    assert out.splitlines()[0] == "done 3, skipped 0 (0 already there), failed 0"
    assert sorted(p.name for p in (here / "out").iterdir() if p.name.endswith(LABEL_SUFFIX)) == \
        [f"img{i}{LABEL_SUFFIX}" for i in range(3)]
    assert not list(elsewhere.rglob(f"*{LABEL_SUFFIX}"))

    # the summary names inputs and outputs as given, as a run on this machine does
    monkeypatch.chdir(here)
    summary = apply_bundle("clf.dinoseg", "in", "out2", scheduler=address)
    assert sorted(summary.done) == [str(Path("out2") / f"img{i}{LABEL_SUFFIX}") for i in range(3)]

    # a worker's address is not the scheduler's
    with pytest.raises(ValueError, match=f"'{worker}' is not a dask scheduler's address: a dask Worker answered"):
        cluster.connect(worker)


def test_workers_that_cannot_see_the_files_are_named_before_work_starts(tmp_path, bundle, two_textures, processes):
    hidden, elsewhere = tmp_path / "hidden", tmp_path / "elsewhere"
    elsewhere.mkdir()
    inputs = write_images(hidden / "in", two_textures[0], 5)
    os.replace(bundle, hidden / "clf.dinoseg")
    # the worker in a mount namespace of its own, an empty file system over the folder of the files
    blind = ["unshare", "--mount", "--propagation", "private",
             "sh", "-c", f"mount -t tmpfs none {hidden} && exec \"$@\"", "sh"]
    probe = subprocess.run([*blind, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here to hide files from a worker: {probe.stderr.decode().strip()}")
    _, address = processes.scheduler()
    processes.worker(address, elsewhere, prefix=blind)
    (worker,) = wait_for_workers(address)
    code, out, err, _ = dinoseg(["apply", hidden / "clf.dinoseg", hidden / "in", "-o", hidden / "out",
                                 "--scheduler", address])
    assert code == 2, out + err
    assert (f"dinoseg: error: the dask workers cannot see this run's files: worker {worker} (host "
            f"{socket.gethostname()}, working folder {elsewhere}) cannot see {hidden / 'clf.dinoseg'}, "
            f"{hidden / 'out'} (the output folder, to write), {inputs[0]} and 4 more") in err
    assert "on a file system they share" in err and out == ""


def test_a_failure_on_a_worker_that_cannot_see_the_file_says_so(tmp_path, bundle, two_textures):
    (tmp_path / "out").mkdir()
    gone = tmp_path / "gone.tif"
    path, status, reason, _ = cluster._on_worker(batch.process_file, str(gone), str(bundle), str(tmp_path / "out"), False)
    assert (path, status) == (str(gone), "failed")
    assert reason.endswith(f"(the dask worker on host {socket.gethostname()} (working folder {os.getcwd()}) "
                           f"cannot see {gone})")
    (image,) = write_images(tmp_path / "in", two_textures[0], 1)
    assert cluster._on_worker(batch.process_file, str(image), str(bundle), str(tmp_path / "out"), False)[1] == "done"


def test_workers_without_napari_dinoseg_are_named_before_work_starts(tmp_path, bundle, two_textures, processes):
    blocker = tmp_path / "no_dinoseg.py"
    blocker.write_text("import sys\nsys.modules['napari_dinoseg'] = None  # as if it were not installed\n")
    _, address = processes.scheduler()
    processes.worker(address, tmp_path, "--no-nanny", "--preload", blocker)
    (worker,) = wait_for_workers(address)
    inputs = write_images(tmp_path / "in", two_textures[0], 2)
    code, out, err, _ = dinoseg(["apply", bundle, *inputs, "-o", tmp_path / "out", "--scheduler", address])
    assert code == 2, out + err
    assert f"dinoseg: error: the dask workers cannot run napari-dinoseg: worker {worker} (" in err
    assert "; install napari-dinoseg in the workers' environment" in err and "Traceback" not in err


def test_tornado_keeps_quiet_about_a_lost_scheduler_connection_only():
    """A request cut short when the scheduler dies is logged by tornado's event loop with a
    traceback; the run says it itself, so that record is dropped, and only that one."""
    import logging

    from distributed.comm.core import CommClosedError

    from napari_dinoseg.cluster import quiet_lost_connections

    quiet_lost_connections()
    quiet_lost_connections()  # idempotent
    logger = logging.getLogger("tornado.application")
    assert logger.filters.count(logger.filters[-1]) == 1

    def record(exc):
        return logger.makeRecord("tornado.application", logging.ERROR, __file__, 1, "Exception in callback",
                                 (), (type(exc), exc, None))

    assert not logger.filter(record(CommClosedError("in <TCP (closed) ConnectionPool.gather>: reset by peer")))
    assert logger.filter(record(ValueError("a real error")))
    assert logger.filter(logger.makeRecord("tornado.application", logging.ERROR, __file__, 1, "no exception", (), None))

"""Run health: runs whose process died, the pool slots they hold, and stopping our runs on a signal.

Dagster keeps a run STARTED, its concurrency slots claimed, until the process running it reports
an end. A process killed outright (``kill -9``, the OOM killer, a lost machine) never reports, so
its run stays STARTED, its ``clickhouse`` slot stays claimed (the next run's warehouse step waits
for it forever) and its ``etl_runs`` rows stay ``running``. In a deployment the daemon's run
monitoring covers part of this (``docker/dagster.yaml``); locally nothing does, so:

- every run ``kingtavo demo`` starts is tagged with the process running it (:func:`process_tags`)
  and every ``etl_runs`` row records the process writing it (pid, host, start time);
- :func:`repair` marks failed the unfinished runs, and closes the ``running`` rows, whose process
  on this host is gone; it frees their slots. ``kingtavo demo`` runs it before launching and
  ``kingtavo status`` prints what it repaired. Processes on other hosts are never judged;
- :class:`RunSupervisor` wraps ``kingtavo demo``'s runs: it reports who holds a slot a step waits
  for (Dagster's own "Step blocked by limit for pool" is a debug event that cannot name the
  holder), repairs a holder that dies meanwhile, and turns SIGTERM/SIGINT into a prompt, recorded
  stop (see the class for why Dagster alone does not stop).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PID_TAG = "kingtavo/pid"
HOST_TAG = "kingtavo/host"
PID_START_TAG = "kingtavo/pid_start"

_PROC = Path("/proc")


# --- process identity ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc, or None where there is no /proc."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host still runs. ``start`` (the start token recorded with
    the pid) tells a reused pid from the original; a zombie (exited, not yet reaped) is dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return not _PROC.joinpath("self").exists()  # no /proc: the pid exists, that is all we know
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    host: str
    start: str | None = None

    def alive(self) -> bool | None:
        """True/False on this host; None for a process on another host (not ours to judge)."""
        return pid_alive(self.pid, self.start) if self.host == socket.gethostname() else None

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}"


def this_process() -> ProcessIdentity:
    # not cached: step processes forked from a parent must not report the parent's pid
    stat = _proc_stat(os.getpid())
    return ProcessIdentity(os.getpid(), socket.gethostname(), stat[1] if stat else None)


def process_tags() -> dict[str, str]:
    """Dagster run tags naming this process, so another process can tell whether the run's runner lives."""
    me = this_process()
    return {PID_TAG: str(me.pid), HOST_TAG: me.host, **({PID_START_TAG: me.start} if me.start else {})}


def identity_from_tags(tags) -> ProcessIdentity | None:
    try:
        return ProcessIdentity(int(tags[PID_TAG]), tags[HOST_TAG], tags.get(PID_START_TAG))
    except (KeyError, ValueError):
        return None


def dead_process_message(process: ProcessIdentity, by: str) -> str:
    return f"{process} exited without finishing; marked failed by {by}"


# --- repair --------------------------------------------------------------------------------------


def close_etl_rows(store, message: str, *, run_ids=(), row_ids=(), process: ProcessIdentity | None = None) -> int:
    """Close ``running`` etl_runs rows of these runs, these row ids or this process as failed."""
    if store is None or not (run_ids or row_ids or process):
        return 0
    with store.transaction() as conn:
        cursor = conn.execute(
            """UPDATE etl_runs SET status = 'failed', finished_at = now(), error_message = %s
               WHERE status = 'running'
                 AND (run_id = ANY(%s) OR id = ANY(%s)
                      OR (pid = %s AND host = %s AND pid_start IS NOT DISTINCT FROM %s))""",
            (message, list(run_ids), list(row_ids), process.pid if process else None,
             process.host if process else None, process.start if process else None),
        )
        return cursor.rowcount


def _slots_of(instance, run_id: str) -> int:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
    return sum(1 for info in infos.values() for slot in info.claimed_slots if slot.run_id == run_id)


def free_slots(instance, run_id: str) -> int:
    """Free every concurrency slot (and queued claim) of a run, as the UI's "free slots" does."""
    held = _slots_of(instance, run_id)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return held


def fail_run(instance, store, run, message: str) -> str:
    """Mark a run whose process is gone failed, free its slots and close its etl_runs rows."""
    instance.report_run_failed(run, message)
    slots = free_slots(instance, run.run_id)
    rows = close_etl_rows(store, message, run_ids=[run.run_id]) if store is not None else 0
    return (f"run {run.run_id} ({run.job_name}, was {run.status.value}): {message}; "
            f"{slots} concurrency slot(s) freed, {rows} etl_runs row(s) closed")


def repair(instance, store, *, by: str) -> list[str]:
    """Mark failed every unfinished run whose recorded process on this host is gone, and close
    every ``running`` etl_runs row whose process on this host is gone (or, for a row without a
    process, whose Dagster run has ended). Returns one line per repair."""
    import dagster as dg

    lines = []
    host = socket.gethostname()
    if instance is not None:
        unfinished = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                      dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
        for run in instance.get_runs(dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
            process = identity_from_tags(run.tags)
            if process is not None and process.alive() is False:
                lines.append(fail_run(instance, store, run, dead_process_message(process, by)))
    if store is not None:
        rows = store.fetch_all(
            "SELECT id, run_id, asset_key, pid, host, pid_start FROM etl_runs WHERE status = 'running' ORDER BY id"
        )
        for row_id, run_id, asset_key, pid, row_host, pid_start in rows:
            message = None
            if pid is not None and row_host == host:
                process = ProcessIdentity(pid, row_host, pid_start)
                if not process.alive():
                    message = dead_process_message(process, by)
            elif pid is None and instance is not None:
                run = instance.get_run_by_id(run_id)
                if run is not None and run.is_finished:
                    message = (f"its Dagster run ended {run.status.value} without closing this row; "
                               f"marked failed by {by}")
            if message and close_etl_rows(store, message, row_ids=[row_id]):
                lines.append(f"etl_runs row {row_id} ({asset_key}, run {run_id}): {message}")
    return lines


def open_local_instance(settings):
    """The Dagster instance ``kingtavo demo`` records runs in ($DAGSTER_HOME, else
    $KINGTAVO_HOME/dagster), or None when there is none yet. Caller closes it."""
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME") or str(settings.home_path / "dagster")
    if not (Path(home) / "dagster.yaml").exists() and not os.environ.get("DAGSTER_HOME"):
        return None
    return dg.DagsterInstance.from_config(home)


def repair_local(store, settings, *, by: str) -> list[str]:
    """:func:`repair` on the local Dagster instance (if there is one yet) and the store."""
    instance = open_local_instance(settings)
    try:
        return repair(instance, store, by=by)
    finally:
        if instance is not None:
            instance.dispose()


# --- pool slots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotHolder:
    pool: str
    limit: int | None
    run_id: str
    step_key: str | None
    run: object  # DagsterRun, or None when the run is not in this instance
    process: ProcessIdentity | None

    def describe(self) -> str:
        if self.run is None:
            state = "a run unknown to this instance"
        else:
            alive = self.process.alive() if self.process else None
            liveness = "running" if alive else "EXITED" if alive is False else "not on this host"
            where = f"{self.process}, {liveness}" if self.process else "process not recorded"
            state = f"{self.run.status.value}, {where}"
        return f"run {self.run_id} step {self.step_key} ({state})"


def slot_holders(instance) -> tuple[list[SlotHolder], list[tuple[str, str, str]]]:
    """Claimed slots of every pool, and the steps waiting for one: ``(pool, run_id, step_key)``."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return [], []
    holders, waiting = [], []
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        for slot in info.claimed_slots:
            run = instance.get_run_by_id(slot.run_id)
            holders.append(SlotHolder(pool, info.limit, slot.run_id, slot.step_key, run,
                                      identity_from_tags(run.tags) if run else None))
        waiting += [(pool, p.run_id, p.step_key) for p in info.pending_steps if p.assigned_timestamp is None]
    return holders, waiting


def release_dead_holders(instance, store, holders: list[SlotHolder], *, by: str) -> list[str]:
    """Free slots held by a run that has ended, or whose process on this host is gone."""
    lines, seen = [], set()
    for holder in holders:
        if holder.run is None or holder.run_id in seen:
            continue
        seen.add(holder.run_id)
        run = instance.get_run_by_id(holder.run_id)
        if run is None:
            continue
        if run.is_finished:
            slots = free_slots(instance, run.run_id)
            lines.append(f"run {run.run_id} ended {run.status.value} but still held {slots} slot(s); freed")
        elif holder.process is not None and holder.process.alive() is False:
            lines.append(fail_run(instance, store, run, dead_process_message(holder.process, by)))
    return lines


# --- supervising our own runs --------------------------------------------------------------------


_received_signal: str | None = None


def received_signal() -> str | None:
    """The termination signal this process received while supervising a run, if any: whatever
    exception a step then dies of (an interrupted query, say), the run was stopped by it."""
    return _received_signal


class RunInterrupted(KeyboardInterrupt):
    """Stops a run on SIGTERM/SIGINT. A KeyboardInterrupt, so Dagster records the step and the run
    as interrupted, and etl_run (which catches BaseException) records its row as failed."""

    reason = "a termination signal"

    def __str__(self) -> str:
        return super().__str__() or f"stopped: the process received {self.reason}"


class RunSupervisor:
    """Context manager around the code that launches runs in this process (``execute_in_process``).

    On entry it repairs runs left by dead processes and prints who holds pool slots. While inside,
    a thread prints which run holds a slot a step has waited for (and repairs a holder that dies),
    and handles SIGTERM/SIGINT.

    Why signals need help: during execution Dagster replaces the SIGTERM/SIGINT handlers with one
    that only sets a flag, acted on when a step's code starts or runs. Its pool wait loop never
    looks at it (and spins without sleeping), so a run waiting for a slot ignores SIGTERM. We learn
    of the signal through ``signal.set_wakeup_fd`` (written whatever Python handler is installed).
    If Dagster has not acted on it within a moment, we raise :class:`RunInterrupted` in the main
    thread, having marked our runs CANCELING so Dagster ends them CANCELED. Outside Dagster our own
    handler raises it at once. On exit the runs of this process are ended, their slots freed and
    their rows closed, and the process exits with 128 + the signal number. If the main thread has
    not got there after ``force_after`` seconds (stuck in a blocking call), the thread does the
    same and exits the process without unwinding.
    """

    POLL_S = 0.2
    INJECT_AFTER_S = 0.5
    WAIT_REPORT_S = 2.0
    WAIT_REPEAT_S = 60.0

    def __init__(self, instance, store, *, by: str, echo: Callable[[str], None] = print, force_after: float = 8.0):
        self.instance, self.store, self.by, self.echo, self.force_after = instance, store, by, echo, force_after
        self.me = this_process()
        self.tags = process_tags()
        self.signum: int | None = None
        self._signaled_at = 0.0
        self._lock = threading.RLock()  # re-entrant: our signal handler may run while the main thread holds it
        self._stopped = False  # runs of this process ended after a signal (once)
        self._closing = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: tuple | None = None
        self._wake_r = self._wake_w = None
        self._errors: set[str] = set()

    # -- entry / exit --

    def __enter__(self) -> RunSupervisor:
        for line in repair(self.instance, self.store, by=self._by()):
            self.echo(f"Repaired: {line}")
        holders, _ = slot_holders(self.instance)
        for holder in holders:
            self.echo(f"Pool '{holder.pool}' (limit {holder.limit}): slot held by {holder.describe()}; "
                      "steps of this run in that pool wait for it")
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._watch, name="kingtavo-run-supervisor", daemon=True)
        self._thread.start()
        if main:  # last: from here on a signal may raise RunInterrupted, which __exit__ handles
            self._saved = (signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False),
                           signal.signal(signal.SIGTERM, self._on_signal),
                           signal.signal(signal.SIGINT, self._on_signal))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._closing = True  # from here on a signal is recorded, not raised
        try:
            if self.signum is not None:
                self._stop_runs(self.instance)
        finally:
            self._done.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
            if self._saved is not None:
                wakeup_fd, term, intr = self._saved
                signal.signal(signal.SIGTERM, term)
                signal.signal(signal.SIGINT, intr)
                signal.set_wakeup_fd(wakeup_fd)
            for sock in (self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
        if self.signum is not None:
            raise SystemExit(128 + self.signum)
        return False

    # -- signals --

    def _by(self) -> str:
        return f"{self.by} (pid {self.me.pid})"

    def _note_signal(self, signum: int) -> bool:
        with self._lock:
            if self.signum is not None:
                return False
            self.signum, self._signaled_at = signum, time.monotonic()
            RunInterrupted.reason = signal.Signals(signum).name
            global _received_signal
            _received_signal = RunInterrupted.reason
        return True

    def _on_signal(self, signum, frame) -> None:
        # Our handler: active whenever Dagster's is not (outside execute_in_process).
        if self._note_signal(signum) and not self._closing:
            raise RunInterrupted()

    def _stop_message(self) -> str:
        return f"{self._by()} received {signal.Signals(self.signum).name}; run stopped"

    def _stop_runs(self, instance) -> None:
        """End the runs of this process: canceled, slots freed, etl_runs rows closed (once)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        import dagster as dg

        message = self._stop_message()
        runs = [r for r in instance.get_runs(dg.RunsFilter(tags={PID_TAG: str(self.me.pid), HOST_TAG: self.me.host}))
                if identity_from_tags(r.tags) == self.me]
        for run in runs:
            if not run.is_finished:
                instance.report_run_canceled(run, message)
            free_slots(instance, run.run_id)
        rows = close_etl_rows(self.store, message, run_ids=[r.run_id for r in runs], process=self.me)
        self.echo(f"\n{message}: {len(runs)} run(s) ended, their slots freed, {rows} etl_runs row(s) closed.")

    def _mark_canceling(self, instance) -> None:
        import dagster as dg

        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                   tags={PID_TAG: str(self.me.pid), HOST_TAG: self.me.host})):
            instance.report_run_canceling(run, self._stop_message())

    @staticmethod
    def _dagster_holds_signal() -> bool:
        try:
            from dagster._utils.interrupts import check_captured_interrupt
        except ImportError:  # moved in another Dagster version: assume it holds the signal
            return True
        return check_captured_interrupt()

    # -- the thread --

    def _watch(self) -> None:
        instance = self._own_instance()
        injected = canceled = False
        next_pool_check, reported = time.monotonic() + self.WAIT_REPORT_S, {}
        try:
            while not self._done.is_set():
                self._wait_for_signal()
                if self.signum is None:
                    if time.monotonic() >= next_pool_check:
                        next_pool_check = time.monotonic() + self.WAIT_REPORT_S
                        self._guarded(self._report_waits, instance, reported)
                    continue
                waited = time.monotonic() - self._signaled_at
                if not canceled:
                    canceled = True
                    self._guarded(self._mark_canceling, instance)
                if not injected and not self._closing and waited > self.INJECT_AFTER_S and self._dagster_holds_signal():
                    injected = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(threading.main_thread().ident), ctypes.py_object(RunInterrupted))
                # the main thread's own cleanup (closing) gets a second period before we cut it short
                if waited > self.force_after * (2 if self._closing else 1) and not self._done.is_set():
                    try:
                        self._guarded(self._stop_runs, instance)
                        self.echo("The run did not stop in time; exiting without unwinding.")
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(128 + self.signum)
        finally:
            if instance is not self.instance:
                instance.dispose()

    def _wait_for_signal(self) -> None:
        if self._wake_r is None:
            self._done.wait(self.POLL_S)
            return
        if not select.select([self._wake_r], [], [], self.POLL_S)[0]:
            return
        try:
            received = self._wake_r.recv(64)
        except BlockingIOError:
            return
        for signum in received:
            if signum in (signal.SIGTERM, signal.SIGINT) and self._note_signal(signum):
                self.echo(f"\nReceived {signal.Signals(signum).name}: stopping the run ...")

    def _guarded(self, action, *args) -> None:
        # this thread must outlive a failed look-up (a locked SQLite file, a dropped connection)
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001
            message = f"run supervisor: {action.__name__} failed: {type(exc).__name__}: {exc}"
            if message not in self._errors:
                self._errors.add(message)
                self.echo(message)

    def _own_instance(self):
        # a separate instance object, so this thread shares no connections with the run
        try:
            import dagster as dg

            return dg.DagsterInstance.from_ref(self.instance.get_ref())
        except Exception:  # noqa: BLE001 - an ephemeral instance has no ref
            return self.instance

    def _report_waits(self, instance, reported: dict) -> None:
        holders, waiting = slot_holders(instance)
        now = time.time()
        for pool, run_id, step_key in waiting:
            waiter = instance.get_run_by_id(run_id)
            if waiter is None or waiter.is_finished:
                continue  # a leftover queue entry, not a step that waits
            pool_holders = [h for h in holders if h.pool == pool]
            repaired = release_dead_holders(instance, self.store, pool_holders, by=self._by())
            for line in repaired:
                self.echo(f"Repaired: {line}")
            if repaired:
                return  # the holders changed; look again on the next round
            state = tuple(h.describe() for h in pool_holders)
            last = reported.get((pool, run_id, step_key))
            if last is None or last[0] != state or now - last[1] > self.WAIT_REPEAT_S:
                reported[(pool, run_id, step_key)] = (state, now)
                held = "; ".join(state) or "no run (being reassigned)"
                limit = pool_holders[0].limit if pool_holders else "?"
                self.echo(f"Waiting: step {step_key} of run {run_id} waits for a slot in pool '{pool}' "
                          f"(limit {limit}), held by {held}")

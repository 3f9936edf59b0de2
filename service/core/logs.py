"""Structured logs: one JSON object per line, carrying the request id of the request being served.

Logging never blocks serving. A log call formats its line in the calling thread (so the line carries
that request's id) and puts it on a bounded in-memory queue without waiting; one daemon thread writes
the queue to stdout. A reader that stops reading (``niff-serve | sleep 1000``) fills the pipe, then the
queue; further lines are dropped and counted, and once the queue has room again a
``log lines dropped`` record with the count takes their place. A stdout that fails (a closed pipe, a
full disk) loses its lines, counted: at most one short line per minute on stderr says how many and why,
never a traceback. At exit, and on SIGTERM, the queue is written out for as long as the writes make
progress; the writer is a daemon thread, so a pipe that nobody reads never keeps the process alive.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.handlers
import os
import queue
import re
import select
import signal
import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone

from niff_contract import ContractError
from niff_serve.core.errors import ConfigurationError

# uvicorn prints the lifespan's exception as a traceback; these are the start-up errors the app words itself.
_STARTUP_ERRORS = tuple(f"{c.__module__}.{c.__qualname__}:" for c in (ContractError, ConfigurationError))
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Visible ASCII only, so a client cannot inject line breaks or control bytes into the logs.
_VALID_REQUEST_ID = re.compile(r"[!-~]{1,128}")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "taskName"}

QUEUE_LINES = 1000  # lines waiting for the writer; about 300 kB of access lines
LOST_REPORT_INTERVAL_S = 60.0  # at most one line on stderr per interval about lines stdout could not take
WRITE_BATCH_LINES = 256  # most lines per write (the writer holds them while the write blocks)
_EXIT_STALL_S = 1.0  # at exit, stop waiting for the writer once it has written nothing for this long
_EXIT_LIMIT_S = 10.0  # and wait this long at most on SIGTERM
PROG = "niff-serve"


def valid_request_id(text: str) -> str | None:
    """A client's request id (HTTP ``X-Request-ID``, gRPC ``x-request-id``) if it is safe to log, else None."""
    return text if _VALID_REQUEST_ID.fullmatch(text) else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()  # the calling thread's context: format before queueing
        if request_id is not None:
            payload["request_id"] = request_id
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _not_an_expected_startup_traceback(record: logging.LogRecord) -> bool:
    """Drop uvicorn's traceback of a start-up error: the app already logged it in one line."""
    message = str(record.msg)
    return not (message.startswith("Traceback") and any(name in message for name in _STARTUP_ERRORS))


@dataclass(frozen=True)
class _Dropped:
    """Queued in place of the lines dropped while the queue was full; written as a ``log lines dropped`` record."""

    count: int


_STOP = object()


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Formats each record in the calling thread and queues the line; a full queue drops it, never waits."""

    def __init__(self, lines: queue.Queue[str | _Dropped | object]) -> None:
        super().__init__(lines)
        self.dropped = 0  # dropped and not yet reported; guarded by the handler's lock (``handle`` holds it)

    def prepare(self, record: logging.LogRecord) -> str:  # type: ignore[override]
        """The finished JSON line: formatting here, in the logging thread, captures its request id."""
        try:
            return self.format(record)
        except Exception as exc:  # a log call whose arguments do not fit its message: log what there is
            payload = {"level": record.levelname.lower(), "logger": record.name, "message": str(record.msg)}
            payload["log_error"] = f"{type(exc).__name__}: {exc}"
            return json.dumps(payload, default=repr)

    def enqueue(self, line: str | _Dropped) -> None:  # type: ignore[override]
        try:
            if self.dropped:  # the lines lost before this one come first, as one record
                self.queue.put_nowait(_Dropped(self.dropped))
                self.dropped = 0
            self.queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def emit(self, record: logging.LogRecord) -> None:
        # No handleError: it would print a traceback to stderr, in the serving thread.
        self.enqueue(self.prepare(record))

    def flush_dropped(self, timeout: float) -> None:
        """Queue the count of lines dropped since the last record (at exit, when no record follows them)."""
        with self.lock:
            if self.dropped:
                try:
                    self.queue.put(_Dropped(self.dropped), timeout=timeout)
                    self.dropped = 0
                except queue.Full:
                    pass


class LogWriter:
    """One daemon thread writing queued lines to a file descriptor; failures are counted, never raised."""

    def __init__(self, lines: queue.Queue[str | _Dropped | object], fd: int, stderr_fd: int | None) -> None:
        self.lines = lines
        self.fd = fd
        self.stderr_fd = stderr_fd
        self.written = 0  # lines written
        self.lost = 0  # lines the descriptor would not take
        self._unreported = 0
        self._last_error = ""
        self._last_report = -LOST_REPORT_INTERVAL_S
        self._thread = threading.Thread(target=self._run, name="niff-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.lines.get()]
            while len(batch) < WRITE_BATCH_LINES:
                try:
                    batch.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            self._write([_line_of(item) for item in batch if item is not _STOP])
            if stop:
                self._report_lost(force=True)
                return

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        data = memoryview(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
        try:
            while data:
                try:
                    data = data[os.write(self.fd, data) :]
                except BlockingIOError:  # a non-blocking descriptor: wait until it takes more
                    select.select([], [self.fd], [], 1.0)
                except InterruptedError:
                    continue
        except OSError as exc:
            lost = bytes(data).count(b"\n")
            self.written += len(lines) - lost
            self.lost += lost
            self._unreported += lost
            self._last_error = str(exc)
            self._report_lost()
        else:
            self.written += len(lines)

    def _report_lost(self, force: bool = False) -> None:
        """One short line on stderr, at most one per interval (and any count left at exit)."""
        now = time.monotonic()
        if not self._unreported or (not force and now - self._last_report < LOST_REPORT_INTERVAL_S):
            return
        self._last_report = now
        message = f"{PROG}: {self._unreported} log lines lost: {self._last_error}\n"
        self._unreported = 0
        if self.stderr_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.stderr_fd, message.encode("ascii", "backslashreplace"))

    def stop(self, handler: DroppingQueueHandler | None = None) -> None:
        """Write out what is queued, then end the thread; gives up once writing stalls (a reader that left
        its pipe full), so a stuck pipe never holds the process."""
        if not self._thread.is_alive():
            return
        if handler is not None:
            handler.flush_dropped(_EXIT_STALL_S)
        try:
            self.lines.put(_STOP, timeout=_EXIT_STALL_S)
        except queue.Full:
            return
        progress = (self.written, self.lost)
        while True:
            self._thread.join(_EXIT_STALL_S)
            if not self._thread.is_alive() or (self.written, self.lost) == progress:
                return
            progress = (self.written, self.lost)


def _line_of(item: str | _Dropped | object) -> str:
    if isinstance(item, _Dropped):
        record = logging.LogRecord(__name__, logging.WARNING, __file__, 0, "log lines dropped", None, None)
        record.dropped = item.count
        record.reason = "the log queue was full: stdout is not being read fast enough"
        return JsonFormatter().format(record)
    assert isinstance(item, str)
    return item


_active: tuple[DroppingQueueHandler, LogWriter] | None = None


def _flush_on_sigterm(handler: DroppingQueueHandler, writer: LogWriter) -> None:
    """Write out the queue before SIGTERM ends the process, which then still ends by SIGTERM.

    uvicorn re-raises the SIGTERM it drained for once it has stopped, and a signal's default action skips
    atexit. Only where SIGTERM has its default action (the supervisor and uvicorn set their own while
    they run, and uvicorn puts this one back before re-raising).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def flush_then_die(signum: int, frame: object) -> None:
        # From another thread, bounded: this one may have been interrupted inside the queue's lock.
        flusher = threading.Thread(target=writer.stop, args=(handler,), daemon=True)
        flusher.start()
        flusher.join(_EXIT_LIMIT_S)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, flush_then_die)


def _descriptor(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def configure_logging(level: str) -> None:
    """Route every logger (uvicorn's too) and Python's warnings through one JSON handler on stdout,
    by way of a bounded queue and a writer thread (see the module's docstring)."""
    global _active
    if _active is None:
        stdout = _descriptor(sys.stdout)
        if stdout is None:
            stdout = os.open(os.devnull, os.O_WRONLY)
        lines: queue.Queue[str | _Dropped | object] = queue.Queue(QUEUE_LINES)
        handler = DroppingQueueHandler(lines)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(_not_an_expected_startup_traceback)
        writer = LogWriter(lines, stdout, _descriptor(sys.stderr))
        atexit.register(writer.stop, handler)
        _flush_on_sigterm(handler, writer)
        _active = handler, writer
    handler = _active[0]
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Warnings (Pillow's DecompressionBombWarning, deprecations) would otherwise go to stderr as plain text.
    logging.captureWarnings(True)

"""One log format for every Ferry process (API, workers, beat): JSON lines in production, text for development.

``FERRY_LOG_FORMAT`` (``json`` | ``text``, default ``text``; the image sets ``json``) and ``FERRY_LOG_LEVEL`` pick
them. ``ferry api`` hands uvicorn ``dict_config(...)`` (applied again in each of its worker processes); Celery
worker and beat call ``configure`` from its ``setup_logging`` signal (``workers/celery_app.py``), so Celery
installs no handlers of its own. Every line, in either format, carries:

- ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, ``role`` (api, worker, beat)
  and ``pid``;
- the context that applies where the line was logged: ``request_id`` (the API's ``x-amzn-RequestId``),
  ``replicator_arn``, ``partition`` (``topic/partition``) and ``worker_id`` (the fleet worker's id);
- ``exception``: the traceback, as one string, when there is one;
- on the API's access lines (``api.access``): ``method``, ``path``, ``status``, ``duration_ms``.

Context comes from a context variable (``bind_log_context`` / ``log_context``), so it follows asyncio tasks: a
task copies the context it was created in. Threads do not inherit it; ``set_process_context`` sets fields every
thread of the process carries (a worker process runs one fleet agent: its id). A call may also pass any of these
names as ``extra=`` (how the engine, which does not import this module, names the partition of a line).

Nothing else from ``extra`` is written: the fields are a fixed list, so an object handed to a log call never
dumps a credential into a log. Passwords in URLs and SigV4 signatures in the message or the traceback are masked.

Why neither python-json-logger nor structlog: python-json-logger's point is writing every ``extra`` attribute of a
record, which is what this module must not do; structlog would mean either rewriting every log call or its
stdlib ``ProcessorFormatter`` on top of this same ``logging`` setup. What is left is one ``json.dumps`` of a fixed
dict in a ``logging.Formatter``, with no dependency to add to every image. The data plane (``workers/engine``)
does not import this module: it logs through plain ``logging``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import logging.config
import os
import re
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, ParamSpec, TypeVar

LogFormat = Literal["json", "text"]
Role = Literal["api", "worker", "beat"]

# Context fields, in the order they are written.
CONTEXT_FIELDS = ("request_id", "replicator_arn", "partition", "worker_id")
# Fields of the API's access lines (api/access_log.py), taken from ``extra``.
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")

_NO_CONTEXT: Mapping[str, object] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar("ferry_log", default=_NO_CONTEXT)
_process_context: dict[str, object] = {}

_P = ParamSpec("_P")
_T = TypeVar("_T")


def bind_log_context(**fields: object) -> None:
    """Add fields to the current context (this asyncio task and the tasks it creates from now on). For the
    start of a task or request that lives as long as the context it sets; else ``log_context``."""
    _context.set({**_context.get(), **_known(fields)})


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """These fields on every line logged inside the block (and by tasks created inside it)."""
    token = _context.set({**_context.get(), **_known(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def in_log_context(
    fields_of: Callable[[Any], Mapping[str, object]],
) -> Callable[[Callable[_P, Coroutine[Any, Any, _T]]], Callable[_P, Coroutine[Any, Any, _T]]]:
    """Decorate an async method: its lines (and those of tasks it creates) carry ``fields_of(self)``."""

    def decorate(method: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
        @functools.wraps(method)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            with log_context(**fields_of(args[0])):
                return await method(*args, **kwargs)

        return wrapper

    return decorate


def set_process_context(**fields: object) -> None:
    """Fields every line of this process carries, from every thread (unless a context sets them otherwise)."""
    _process_context.update(_known(fields))


def current_context() -> dict[str, object]:
    return {**_process_context, **_context.get()}


def _known(fields: Mapping[str, object]) -> dict[str, object]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))} (known: {', '.join(CONTEXT_FIELDS)})")
    return {name: value for name, value in fields.items() if value not in (None, "")}


# ---------------------------------------------------------------------------------------------------- masking

_URL_PASSWORD = re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
_SIGNATURE = re.compile(r"(?P<keep>Signature=)[0-9a-fA-F]{16,}")


def mask_secrets(text: str) -> str:
    """Passwords in URLs (``scheme://user:***@host``) and SigV4 signatures (``Signature=***``) masked."""
    text = _URL_PASSWORD.sub(r"\g<keep>***@", text)
    return _SIGNATURE.sub(r"\g<keep>***", text)


# ---------------------------------------------------------------------------------------------------- formatters


def _value(value: object) -> object:
    """A context or access value as written: numbers and strings as they are, a (topic, partition) pair (an
    aiokafka ``TopicPartition``) as ``topic/partition``, anything else as its ``str``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}/{value[1]}"
    return str(value)


class FerryFormatter(logging.Formatter):
    """Both formats: ``fields`` is the one place a line's content is decided."""

    def __init__(self, role: str, style: LogFormat = "text") -> None:
        super().__init__()
        self.role = role
        self.style_name = style

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            "role": self.role,
            "pid": record.process,
        }
        context = current_context()
        for name in (*CONTEXT_FIELDS, *ACCESS_FIELDS):
            value = getattr(record, name, context.get(name))
            if value is not None and value != "":
                line[name] = _value(value)
        if record.exc_info:
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            line["stack"] = record.stack_info
        return line

    def format(self, record: logging.LogRecord) -> str:
        line = self.fields(record)
        if self.style_name == "json":
            return json.dumps(line, ensure_ascii=False, default=str)
        context = " ".join(f"{name}={line[name]}" for name in CONTEXT_FIELDS if name in line)
        text = f"{line['timestamp']} {line['level']:<7} [{self.role} {line['pid']}] {line['logger']}: {line['message']}"
        if context:
            text += f"  ({context})"
        if "exception" in line:
            text += "\n" + str(line["exception"])
        if "stack" in line:
            text += "\n" + str(line["stack"])
        return text


def formatter(role: str, style: LogFormat = "text") -> FerryFormatter:
    """The formatter factory ``dict_config`` names (``logging.config`` calls it with these keywords)."""
    return FerryFormatter(role, style)


def dict_config(role: Role, style: LogFormat = "text", level: str | int = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` configuration: one handler on stderr, on the root logger, and every logger
    of uvicorn and Celery sent to it (their own handlers removed)."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    routed = {
        name: {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "celery", "celery.task")
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ferry": {"()": "models.logs.formatter", "role": role, "style": style}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ferry", "stream": "ext://sys.stderr"}},
        "loggers": routed,
        "root": {"handlers": ["stderr"], "level": level_name},
    }


_configured = FerryFormatter("api")


def configure(role: Role, style: LogFormat = "text", level: str | int = "INFO") -> None:
    """Configure this process's logging (warnings included) for ``role``."""
    global _configured  # noqa: PLW0603 (what write_from_signal_handler formats with)
    logging.config.dictConfig(dict_config(role, style, level))
    logging.captureWarnings(True)
    _configured = FerryFormatter(role, style)


def write_from_signal_handler(logger: str, message: str, level: int = logging.INFO) -> None:
    """One line in the configured format, written straight to stderr's descriptor without taking logging's
    locks: for what a signal handler says (Celery's shutdown notices), which may interrupt a thread holding one."""
    if level < logging.getLogger().getEffectiveLevel():
        return
    record = logging.LogRecord(logger, level, __file__, 0, message.strip(), None, None)
    with contextlib.suppress(OSError):
        os.write(2, (_configured.format(record) + "\n").encode())

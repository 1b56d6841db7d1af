"""Logging shared by the API and the workers: one JSON object per line on stderr (DDNM_LOG_FORMAT
"json", the default) or plain text lines ("text").

A JSON line holds `ts` (ISO-8601, UTC, milliseconds), `level`, `logger` and `message`, then the
fields a call passes as `extra=` (`log.info("done", extra={"job_id": job_id})`), and `exc` (the
formatted traceback) when the call logs an exception.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
LOG_FORMATS = ("json", "text")
JSON_FORMATTER = "contract.logs.JsonFormatter"  # for dictConfig: "()" takes an import path

# attributes every LogRecord has: what is not among them came from `extra=`
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, None, None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python >= 3.12
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: ts, level, logger, message, the `extra=` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # the four above win over an extra of the same name
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO-8601 in UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes of `record` that its log call added with `extra=`."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format`: "json" or "text"."""
    _check(log_format)
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send the root logger's records, from `level` up, to stderr in `log_format`; warnings
    (`warnings.warn`) go through it too. Replaces the root logger's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn's loggers (its `log_config`): their lines, access
    lines included, on stderr in `log_format` like everything else; other loggers untouched."""
    _check(log_format)
    formatter = {"()": JSON_FORMATTER} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ddnm": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "ddnm",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},  # through "uvicorn"'s handler
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def _check(log_format: str) -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")

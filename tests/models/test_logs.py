"""The log format (models/logs.py) without any service: real records through a real handler, read back as written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from aiokafka import TopicPartition

from models import logs
from models.settings import FerrySettings

ARN = "arn:aws:kafka:us-east-1:000000000000:replicator/orders/7d1c2f3e-0000-4000-8000-000000000001"


class Captured:
    """A logger of its own whose lines go through Ferry's formatter into a buffer."""

    def __init__(self, style: logs.LogFormat) -> None:
        self.buffer = io.StringIO()
        self.logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex[:8]}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        handler = logging.StreamHandler(self.buffer)
        handler.setFormatter(logs.formatter("worker", style))
        self.logger.addHandler(handler)

    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text().splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    yield Captured("json")
    logs._process_context.clear()


def test_a_json_line_has_the_common_fields_and_the_context_that_applies(captured: Captured) -> None:
    with logs.log_context(replicator_arn=ARN):
        captured.logger.warning("%s: source truncated", "orders-3", extra={"partition": TopicPartition("orders", 3)})
    captured.logger.info("outside")
    inside, outside = captured.lines()
    assert inside["message"] == "orders-3: source truncated"
    assert inside["level"] == "WARNING"
    assert inside["logger"] == captured.logger.name
    assert inside["role"] == "worker"
    assert isinstance(inside["pid"], int)
    assert inside["replicator_arn"] == ARN
    assert inside["partition"] == "orders/3"
    stamp = str(inside["timestamp"])
    assert stamp.endswith("Z") and len(stamp.split(".")[1]) == 4, "UTC, milliseconds"
    datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert "replicator_arn" not in outside and "partition" not in outside, "the context ends with its block"


def test_an_exception_is_one_string_with_its_traceback(captured: Captured) -> None:
    try:
        raise RuntimeError("the broker went away")
    except RuntimeError:
        captured.logger.exception("copier crashed")
    (line,) = captured.lines()
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: the broker went away" in line["exception"]


def test_extra_objects_are_never_dumped_and_secrets_in_messages_are_masked(captured: Captured) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    signature = "a" * 64
    captured.logger.error(
        "connecting to postgresql+psycopg://ferry:%s@db:5432/ferry failed; sent Signature=%s",
        secret,
        signature,
        extra={"authorization": f"AWS4-HMAC-SHA256 Signature={signature}", "secret_key": secret, "body": {"k": 1}},
    )
    text = captured.text()
    assert secret not in text and signature not in text
    (line,) = captured.lines()
    assert line["message"] == "connecting to postgresql+psycopg://ferry:***@db:5432/ferry failed; sent Signature=***"
    assert not {"authorization", "secret_key", "body"} & set(line)


def test_the_context_follows_asyncio_tasks_and_the_process_context_every_thread(captured: Captured) -> None:
    async def unit(arn: str) -> None:
        logs.bind_log_context(replicator_arn=arn)

        async def child() -> None:
            captured.logger.info("child of %s", arn)

        await asyncio.create_task(child())

    async def main() -> None:
        await asyncio.gather(unit(ARN), unit(ARN.replace("orders", "payments")))
        captured.logger.info("main")

    logs.set_process_context(worker_id="w-1")
    asyncio.run(main())
    thread = threading.Thread(target=captured.logger.info, args=("from another thread",))
    thread.start()
    thread.join()
    by_message = {str(line["message"]): line for line in captured.lines()}
    assert by_message[f"child of {ARN}"]["replicator_arn"] == ARN
    payments = ARN.replace("orders", "payments")
    assert by_message[f"child of {payments}"]["replicator_arn"] == payments
    assert "replicator_arn" not in by_message["main"], "a task's context stays in the task"
    assert all(line["worker_id"] == "w-1" for line in by_message.values())


def test_only_known_context_fields_are_accepted() -> None:
    with pytest.raises(ValueError, match="not a log context field: password"):
        logs.bind_log_context(password="hunter2")


def test_the_text_format_is_one_readable_line_with_the_context() -> None:
    captured = Captured("text")
    with logs.log_context(request_id="r-1", replicator_arn=ARN):
        captured.logger.info("hello")
    (line,) = captured.text().splitlines()
    assert " INFO    [worker " in line
    assert line.endswith(f"{captured.logger.name}: hello  (request_id=r-1 replicator_arn={ARN})")


def test_the_settings_name_the_format_and_level_in_any_case() -> None:
    base = {"database_url": "postgresql+psycopg://u@h/d", "redis_url": "redis://h"}
    assert FerrySettings(**base).log_format == "text"
    settings = FerrySettings(**base, log_format="JSON", log_level="warning")
    assert (settings.log_format, settings.log_level) == ("json", "WARNING")


def test_dict_config_routes_uvicorn_and_celery_to_the_one_handler() -> None:
    config = logs.dict_config("api", "json", "DEBUG")
    assert config["root"] == {"handlers": ["stderr"], "level": "DEBUG"}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        assert config["loggers"][name] == {"handlers": [], "propagate": True}
    assert config["formatters"]["ferry"] == {"()": "models.logs.formatter", "role": "api", "style": "json"}


def test_a_decorated_method_and_the_tasks_it_starts_carry_its_fields(captured: Captured) -> None:
    class Unit:
        def __init__(self, arn: str) -> None:
            self.arn = arn

        @logs.in_log_context(lambda unit: {"replicator_arn": unit.arn})
        async def start(self) -> asyncio.Task[None]:
            captured.logger.info("starting")
            return asyncio.create_task(self.background())

        async def background(self) -> None:
            captured.logger.info("in the background")

    async def main() -> None:
        await (await Unit(ARN).start())
        captured.logger.info("after")

    asyncio.run(main())
    starting, background, after = captured.lines()
    assert starting["replicator_arn"] == ARN and background["replicator_arn"] == ARN
    assert "replicator_arn" not in after

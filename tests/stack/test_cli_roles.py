"""The ``ferry`` command's role options refuse what cannot run, naming the option, before anything starts."""

from __future__ import annotations

import pytest

from cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["api", "--port", "70000"], "argument --port: 70000 is not between 1 and 65535"),
        (["api", "--port", "http"], "argument --port: 'http' is not a whole number"),
        (["api", "--workers", "0"], "argument --workers: 0 is not between 1 and 256"),
        (["worker", "--concurrency", "-1"], "argument --concurrency: -1 is not between 1 and 256"),
        (["fleet", "autoscale", "--max", "0"], "argument --max: 0 is not between 1 and 1000"),
        (["fleet", "autoscale", "--max", "2", "--interval", "-1"], "argument --interval: -1 is not between 0.1"),
        (["fleet", "autoscale", "--max", "2", "--cooldown", "nan"], "argument --cooldown: nan is not between 0"),
        (["fleet", "autoscale", "--max", "2", "--drain-timeout", "soon"], "'soon' is not a number of seconds"),
    ],
)
def test_bad_role_options_are_refused_by_name(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


def test_autoscale_refuses_a_minimum_above_its_maximum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "autoscale", "--min", "3", "--max", "2"]) == 2
    assert "--min 3 is above --max 2" in capsys.readouterr().err

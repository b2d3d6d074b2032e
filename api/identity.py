"""The one place where the API learns who is calling.

Today every request acts for the account in settings. SigV4 and token authentication (a later issue) replace
``current_caller`` and nothing else: handlers only ever see a ``Caller``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request


@dataclass(frozen=True)
class Caller:
    account_id: str
    region: str


def current_caller(request: Request) -> Caller:
    settings = request.app.state.settings
    return Caller(account_id=settings.aws_account_id, region=settings.aws_region)


CallerDep = Annotated[Caller, Depends(current_caller)]

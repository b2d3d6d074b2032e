"""Alembic environment: the URL comes from Ferry's settings, or from the caller (models/migrate.py, tests).

Every module of ``models`` is imported, so autogenerate (and ``alembic check`` in ``make lint``) sees every table
a model declares: a table added to models/ without a migration fails the check.
"""

from __future__ import annotations

import importlib
import pkgutil
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

import models
from models.base import Base
from models.settings import get_settings

for module in pkgutil.iter_modules(models.__path__, "models."):
    if module.name != "models.migrations" and not module.name.startswith("models.migrations."):
        importlib.import_module(module.name)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url")
    return str(url) if url else get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

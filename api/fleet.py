"""The fleet at a glance (Ferry extension): ``GET /replication/v1/fleet``.

Live workers with their load, units without a worker, how many workers the fleet needs for its current load
(``models/fleet_capacity.py``) and how old the last reconcile pass is. The same numbers are on ``/metrics``
(``ferry_fleet_*``), where KEDA or an HPA reads ``ferry_fleet_desired_workers`` to scale the workers.

The fleet is shared by every account, and nothing here names a replicator, so any signed caller may read it.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.errors import error_responses
from api.identity import CallerDep
from models import fleet_store
from models.fleet_capacity import FleetDemand, fleet_demand
from models.settings import FerrySettings

router = APIRouter(tags=["fleet"])


class FleetWorkerView(BaseModel):
    """A live worker and its load."""

    workerId: str = Field(description="The worker's id (hostname, process id and a random part).")
    hostname: str = Field(description="The host the worker runs on.")
    pid: int = Field(description="The worker's process id on that host.")
    startedAt: datetime = Field(description="When the worker started.")
    heartbeatAgeSeconds: float = Field(description="Seconds since the worker's last heartbeat.")
    units: int = Field(description="Units (partitions and metadata units) whose lease the worker holds.")
    cpuCores: float = Field(description="CPU cores the worker's process used over its last measurement window.")
    bytesPerSecond: float = Field(description="Bytes per second the worker copied from sources to targets.")
    lagBytes: int = Field(description="Bytes its partitions trail their sources by (lag in records times size).")
    draining: bool = Field(description="Being stopped: it is assigned nothing and its units move away.")


class FleetDemandView(BaseModel):
    """How many workers the fleet's load needs (models/fleet_capacity.py), and why."""

    desiredWorkers: int = Field(
        description="Workers the fleet needs for its load with headroom (the autoscaling "
        "signal, ferry_fleet_desired_workers)."
    )
    byThroughput: int = Field(
        description="Workers needed to copy the measured bytes per second and clear the lag in time "
        "(FERRY_FLEET_WORKER_CAPACITY_BYTES_PER_SECOND, FERRY_FLEET_TARGET_UTILISATION, FERRY_FLEET_LAG_CLEAR_SECONDS)."
    )
    byCpu: int = Field(
        description="Workers needed for the CPU cores the workers use, each at the target utilisation of a core."
    )
    bytesPerSecond: float = Field(description="Bytes per second the fleet copies.")
    lagBytes: int = Field(description="Bytes all partitions trail their sources by.")
    cpuCores: float = Field(description="CPU cores the workers use together.")
    reason: str = Field(description="The numbers behind byThroughput and byCpu, in words.")


class FleetView(BaseModel):
    """The worker fleet at a glance."""

    liveWorkers: list[FleetWorkerView] = Field(description="Workers whose heartbeat is recent.")
    units: int = Field(description="Units of work: a metadata unit per replicator and a copy unit per partition.")
    unassignedUnits: int = Field(description="Units the reconcile loop could give to no live worker.")
    unitsWithoutOwner: int = Field(description="Units no worker holds a live lease on right now.")
    demand: FleetDemandView = Field(description="How many workers the load needs.")
    lastReconcileAgeSeconds: float | None = Field(description="Seconds since the last reconcile pass; null: none ran.")
    lastReconcileSeconds: float | None = Field(
        description="How long the last reconcile pass took (reads, plan and writes); passes are serialised, so a slow "
        "one delays every change behind it. Null: no pass recorded it."
    )


async def read_fleet(request: Request) -> tuple[fleet_store.FleetLoad, FleetDemand]:
    settings: FerrySettings = request.app.state.settings
    # A database that does not answer is a 503 ServiceUnavailableException (api/errors.py).
    async with request.app.state.db_engine.connect() as conn:
        load = await fleet_store.fleet_load_async(conn, settings.worker_dead_after_seconds)
    demand = fleet_demand(
        load.workers,
        load.units,
        copied_bytes_per_second=load.copied_bytes_per_second,
        worker_capacity_bytes_per_second=settings.fleet_worker_capacity_bytes_per_second,
        target_utilisation=settings.fleet_target_utilisation,
        lag_clear_seconds=settings.fleet_lag_clear_seconds,
    )
    return load, demand


@router.get(
    "/replication/v1/fleet",
    operation_id="DescribeFleet",
    summary="The worker fleet: live workers, their load, and how many workers it needs (Ferry extension)",
    response_model=FleetView,
    responses=error_responses(401, 403, 500, 503),
)
async def describe_fleet(request: Request, caller: CallerDep) -> FleetView:
    """Live workers with their load (units held, CPU, bytes per second, lag), units without a worker, how many
    workers the fleet needs for its load (the autoscaling signal, also `ferry_fleet_desired_workers` on /metrics)
    and how old the last reconcile pass is. The fleet is shared by every account and nothing here names a
    replicator, so any signed caller may read it.

    Errors: 401 when the signature or key is not valid, 403 when it is refused, 429 when the key's request rate is
    exceeded, 503 when the database does not answer."""
    load, demand = await read_fleet(request)
    return FleetView(
        liveWorkers=[
            FleetWorkerView(
                workerId=w.worker_id,
                hostname=w.hostname,
                pid=w.pid,
                startedAt=w.started_at,
                heartbeatAgeSeconds=round(w.heartbeat_age_seconds, 3),
                units=w.units,
                cpuCores=round(w.cpu_cores, 3),
                bytesPerSecond=round(w.bytes_per_second, 1),
                lagBytes=w.lag_bytes,
                draining=w.draining,
            )
            for w in load.workers
        ],
        units=load.units,
        unassignedUnits=load.unassigned_units,
        unitsWithoutOwner=load.units_without_owner,
        demand=FleetDemandView(
            desiredWorkers=demand.desired_workers,
            byThroughput=demand.by_throughput,
            byCpu=demand.by_cpu,
            bytesPerSecond=round(demand.bytes_per_second, 1),
            lagBytes=demand.lag_bytes,
            cpuCores=round(demand.cpu_cores, 3),
            reason=demand.reason,
        ),
        lastReconcileAgeSeconds=None
        if load.last_reconcile_age_seconds is None
        else round(load.last_reconcile_age_seconds, 3),
        lastReconcileSeconds=None if load.last_reconcile_seconds is None else round(load.last_reconcile_seconds, 3),
    )

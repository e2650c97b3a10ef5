"""The register → connect → metrics → overview flow through a Python client generated from
herd's /openapi.json by openapi-python-client (`.ci/openapi` generates it into a temporary
directory and puts it on PYTHONPATH as `herd_client`).

Environment: HERD_URL (the running herd), HERD_ADMIN_TOKEN (a tenant admin's API token).
Exits non-zero, naming the step, when anything is not as the document promises."""

import os
import sys
import uuid

from herd_client import AuthenticatedClient
from herd_client.api.auth import create_enrollment_token
from herd_client.api.devices import connect_device, register_device
from herd_client.api.monitoring import get_fleet_overview
from herd_client.api.telemetry import report_metrics
from herd_client.models import (
    AutoRegisterDto,
    ConnectDeviceDto,
    ConnectResponse,
    CreatedEnrollmentToken,
    CreateEnrollmentTokenRequest,
    DeviceStatus,
    IngestResponse,
    MetricsBody,
    RegisteredDevice,
    StatsOverview,
)


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"python flow: {what}")


def main() -> None:
    base = os.environ["HERD_URL"]
    admin = AuthenticatedClient(base_url=base, token=os.environ["HERD_ADMIN_TOKEN"], raise_on_unexpected_status=True)
    serial = f"PY-{uuid.uuid4().hex[:12]}"

    created = create_enrollment_token.sync(client=admin, body=CreateEnrollmentTokenRequest(name="python flow", max_uses=1))
    check(isinstance(created, CreatedEnrollmentToken), f"createEnrollmentToken answered {created!r}")
    print("python flow: enrollment token", created.enrollment_token.id)

    enroller = AuthenticatedClient(base_url=base, token=created.secret, raise_on_unexpected_status=True)
    registered = register_device.sync(
        client=enroller, body=AutoRegisterDto(serial_number=serial, model="flow.py", manufacturer="herd CI")
    )
    check(isinstance(registered, RegisteredDevice), f"registerDevice answered {registered!r}")
    device_id = registered.device.id
    check(isinstance(device_id, uuid.UUID), f"device.id is {type(device_id).__name__}, not a UUID (format: uuid)")
    print("python flow: registered device", device_id)

    device = AuthenticatedClient(base_url=base, token=registered.device_token, raise_on_unexpected_status=True)
    # The body is optional: a bare heartbeat first, then one that says what the device runs.
    connected = connect_device.sync(client=device)
    check(isinstance(connected, ConnectResponse), f"connectDevice without a body answered {connected!r}")
    connected = connect_device.sync(client=device, body=ConnectDeviceDto(ip_address="10.0.0.17", app_version="1.0.0"))
    check(isinstance(connected, ConnectResponse), f"connectDevice answered {connected!r}")
    check(connected.device.status == DeviceStatus.ONLINE, f"connected device is {connected.device.status}")
    print("python flow: connected, status", connected.device.status.value)

    ingested = report_metrics.sync(client=device, body=MetricsBody(cpu=12.5, ram=40.0, storage=55.0, temperature=41.0))
    check(isinstance(ingested, IngestResponse), f"reportMetrics answered {ingested!r}")
    check(ingested.accepted == 1, f"reportMetrics accepted {ingested.accepted} samples, not 1")
    print("python flow: metrics accepted", ingested.accepted)

    overview = get_fleet_overview.sync(client=admin)
    check(isinstance(overview, StatsOverview), f"getFleetOverview answered {overview!r}")
    check(overview.active >= 1, f"the overview counts {overview.active} devices online")
    print(f"python flow: overview total={overview.total} active={overview.active} offline={overview.offline}")
    print("python flow: ok")


if __name__ == "__main__":
    main()

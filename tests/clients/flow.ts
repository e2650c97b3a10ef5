// The register → connect → metrics → overview flow through a TypeScript client: types generated
// from herd's /openapi.json by openapi-typescript (`.ci/openapi` writes them to a temporary
// directory as schema.d.ts next to a copy of this file), requests made by openapi-fetch. `tsc`
// type-checks this file against the generated types before it runs.
//
// Environment: HERD_URL (the running herd), HERD_ADMIN_TOKEN (a tenant admin's API token).
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Overview = components["schemas"]["StatsOverview"];

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    console.error(`typescript flow: ${what}`);
    process.exit(1);
  }
}

function client(token: string) {
  return createClient<paths>({ baseUrl: process.env.HERD_URL, headers: { Authorization: `Bearer ${token}` } });
}

async function main(): Promise<void> {
  const admin = client(process.env.HERD_ADMIN_TOKEN ?? "");
  const serial = `TS-${Date.now().toString(36)}`;

  const created = await admin.POST("/enrollment-tokens", { body: { name: "typescript flow", maxUses: 1 } });
  check(created.response.status === 201 && created.data !== undefined, `createEnrollmentToken: ${created.response.status}`);
  console.log("typescript flow: enrollment token", created.data.enrollmentToken.id);

  const registered = await client(created.data.secret).POST("/devices/auto-register", {
    body: { serialNumber: serial, model: "flow.ts", manufacturer: "herd CI" },
  });
  // 201 (a new device), 200 (re-registered) and 202 (a pending claim) share one success type.
  check(registered.response.status === 201 && registered.data !== undefined, `registerDevice: ${registered.response.status}`);
  check("device" in registered.data, "registerDevice answered a pending claim for a new serial number");
  const deviceId: string = registered.data.device.id;
  console.log("typescript flow: registered device", deviceId);

  const device = client(registered.data.deviceToken);
  const connected = await device.POST("/devices/connect", { body: { ipAddress: "10.0.0.18" } });
  check(connected.data !== undefined, `connectDevice: ${connected.response.status}`);
  const status: "online" | "offline" = connected.data.device.status;
  check(status === "online", `connected device is ${status}`);
  console.log("typescript flow: connected, status", status);

  const ingested = await device.POST("/devices/metrics", { body: { cpu: 20, ram: 30, storage: 40 } });
  check(ingested.data !== undefined && ingested.data.accepted === 1, `reportMetrics: ${ingested.response.status}`);
  console.log("typescript flow: metrics accepted", ingested.data.accepted);

  const overview = await admin.GET("/devices/stats/overview");
  check(overview.data !== undefined, `getFleetOverview: ${overview.response.status}`);
  const counts: Overview = overview.data;
  check(counts.active >= 1, `the overview counts ${counts.active} devices online`);
  console.log(`typescript flow: overview total=${counts.total} active=${counts.active} offline=${counts.offline}`);
  console.log("typescript flow: ok");
}

await main();

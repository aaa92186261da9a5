// A second OPC UA client we did not write (node-opcua) against the gateway's server: the same
// steps and the same JSON lines as opcua_client.py (asyncua), judged by the same Rust test.
//
// Usage: node opcua_client.mjs URL GATEWAY_ID CERT_DIR [secure]
// (`secure`: the Basic256Sha256 session alone)

import {
  AttributeIds,
  ClientMonitoredItem,
  ClientSubscription,
  DataType,
  MessageSecurityMode,
  OPCUAClient,
  SecurityPolicy,
  TimestampsToReturn,
  UserTokenType,
} from "node-opcua-client";
import { OPCUACertificateManager } from "node-opcua-certificate-manager";

const [url, gw, certDir, mode] = process.argv.slice(2);
const APP_URI = "urn:edge-gateway-test:node-opcua";

function say(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function client(secure) {
  const options = {
    applicationName: "node-opcua test client",
    applicationUri: APP_URI,
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    requestedSessionTimeout: 10000,
  };
  if (secure) {
    options.securityMode = MessageSecurityMode.SignAndEncrypt;
    options.securityPolicy = SecurityPolicy.Basic256Sha256;
    options.clientCertificateManager = new OPCUACertificateManager({
      rootFolder: certDir,
      automaticallyAcceptUnknownCertificate: true,
    });
  } else {
    options.securityMode = MessageSecurityMode.None;
    options.securityPolicy = SecurityPolicy.None;
  }
  return OPCUAClient.create(options);
}

async function namespace(session) {
  const ns = await session.readNamespaceArray();
  return ns.indexOf(`urn:edge-gateway:${gw}`);
}

async function children(session, nodeId) {
  const r = await session.browse(nodeId);
  return r.references.filter((x) => x.referenceTypeId.toString() !== "ns=0;i=46");
}

async function unit(session, nodeId) {
  const r = await session.browse(nodeId);
  const eu = r.references.find((x) => x.browseName.name === "EngineeringUnits");
  if (!eu) return null;
  const dv = await session.read({ nodeId: eu.nodeId, attributeId: AttributeIds.Value });
  return dv.value.value?.displayName?.text ?? null;
}

async function anonymous() {
  const c = client(false);
  let session;
  try {
    await c.connect(url);
    session = await c.createSession();
  } catch (e) {
    say({ step: "anonymous", ok: false, error: String(e) });
    await c.disconnect();
    return;
  }
  say({ step: "anonymous", ok: true, error: "" });
  try {
    const ns = await namespace(session);
    const top = await children(session, "ns=0;i=85");
    const gateway = top.find((r) => r.browseName.name === gw);
    const devices = (await children(session, gateway.nodeId)).map((r) => r.browseName.name);
    const boiler = (await children(session, gateway.nodeId)).find((r) => r.browseName.name === "boiler");
    const points = (await children(session, boiler.nodeId)).map((r) => r.browseName.name);
    say({ step: "browse", devices: devices.sort(), points: points.sort() });
    for (const pid of ["temperature", "setpoint", "burner", "Online", "temperature_f"]) {
      const nodeId = `ns=${ns};s=boiler.${pid}`;
      const dv = await session.read({ nodeId, attributeId: AttributeIds.Value });
      const dt = await session.read({ nodeId, attributeId: AttributeIds.DataType });
      say({
        step: "read",
        node: pid,
        value: dv.value.value,
        status: dv.statusCode.name,
        type: DataType[dt.value.value.value],
        unit: await unit(session, nodeId),
      });
    }
    const sub = ClientSubscription.create(session, {
      requestedPublishingInterval: 100,
      requestedLifetimeCount: 100,
      requestedMaxKeepAliveCount: 10,
      maxNotificationsPerPublish: 100,
      publishingEnabled: true,
      priority: 1,
    });
    let changes = 0;
    const item = ClientMonitoredItem.create(
      sub,
      { nodeId: `ns=${ns};s=boiler.temperature`, attributeId: AttributeIds.Value },
      { samplingInterval: 100, queueSize: 10, discardOldest: true },
      TimestampsToReturn.Both,
    );
    item.on("changed", () => changes++);
    for (let i = 0; i < 50 && changes < 3; i++) await new Promise((r) => setTimeout(r, 100));
    say({ step: "subscribe", changes });
    await sub.terminate();
    const status = await session.write({
      nodeId: `ns=${ns};s=boiler.setpoint`,
      attributeId: AttributeIds.Value,
      value: { value: { dataType: DataType.Double, value: 12.5 } },
    });
    say({ step: "write", status: status.name });
  } finally {
    await session.close();
    await c.disconnect();
  }
}

async function writes(session, ns, user) {
  // The setpoint (u16 scaled by 0.1, served as Double): right, wrong type, NaN, out of range.
  const tries = [
    ["ok", DataType.Double, 12.5],
    ["wrong_type", DataType.Int32, 12],
    ["nan", DataType.Double, NaN],
    ["out_of_range", DataType.Double, 1e9],
  ];
  for (const [what, dataType, value] of tries) {
    const status = await session.write({
      nodeId: `ns=${ns};s=boiler.setpoint`,
      attributeId: AttributeIds.Value,
      value: { value: { dataType, value } },
    });
    say({ step: "write_as", user, what, status: status.name });
  }
}

async function secure(user, password, step) {
  const c = client(true);
  let session;
  try {
    await c.connect(url);
    session = await c.createSession({ type: UserTokenType.UserName, userName: user, password });
  } catch (e) {
    say({ step, ok: false, user, error: String(e) });
    await c.disconnect();
    return;
  }
  try {
    const ns = await namespace(session);
    const dv = await session.read({
      nodeId: `ns=${ns};s=boiler.temperature`,
      attributeId: AttributeIds.Value,
    });
    say({ step, ok: true, user, error: "", status: dv.statusCode.name });
    if (step === "secure" || step === "viewer") await writes(session, ns, user);
  } finally {
    await session.close();
    await c.disconnect();
  }
}

if (mode === "secure") {
  await secure("admin", "admin", "secure");
} else {
  await anonymous();
  await secure("admin", "admin", "secure");
  await secure("viewer", "viewer", "viewer");
  await secure("admin", "not-the-password", "wrong_password");
}
process.exit(0);

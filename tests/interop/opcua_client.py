"""An OPC UA client we did not write (asyncua) against the gateway's server.

Usage: opcua_client.py URL GATEWAY_ID CERT_DIR [secure|events]
(`secure`: the Basic256Sha256 session alone; `events`: alarms as events, after `ready`)

Prints one JSON line per finding; the Rust test (tests/opcua.rs) judges them:
  {"step": "anonymous", "ok": bool, "error": str}          anonymous session over None
  {"step": "browse", "devices": [...], "points": [...]}    Objects/{gateway}/boiler
  {"step": "read", "node": str, "value": ..., "status": str, "type": str, "unit": str|null}
  {"step": "subscribe", "changes": int}                    data changes seen within 5 s
  {"step": "write", "status": str}                         a write of a read-only point
  {"step": "secure", "ok": bool, "user": str, "error": str} Basic256Sha256 SignAndEncrypt
  {"step": "wrong_password", "ok": bool, "error": str}
"""

import asyncio
import json
import sys
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

APP_URI = "urn:edge-gateway-test:asyncua"


def say(**kw):
    print(json.dumps(kw, default=str), flush=True)


def client_cert(cert_dir: Path):
    """A client certificate and key of our own, made once."""
    cert, key = cert_dir / "client.der", cert_dir / "client.pem"
    if not cert.exists():
        cert_dir.mkdir(parents=True, exist_ok=True)
        k = generate_private_key()
        c = generate_self_signed_app_certificate(
            k,
            "asyncua test client",
            {"countryName": "DE"},
            [x509.UniformResourceIdentifier(APP_URI), x509.DNSName("localhost")],
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        cert.write_bytes(c.public_bytes(serialization.Encoding.DER))
        key.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert, key


async def anonymous(url, gw):
    c = Client(url, timeout=10)
    try:
        await c.connect()
    except Exception as e:  # the server may refuse anonymous sessions
        say(step="anonymous", ok=False, error=repr(e))
        return
    say(step="anonymous", ok=True, error="")
    try:
        ns = await c.get_namespace_index(f"urn:edge-gateway:{gw}")
        objects = c.nodes.objects
        gateway = await objects.get_child([f"{ns}:{gw}"])
        devices = [(await d.read_browse_name()).Name for d in await gateway.get_children()]
        boiler = await gateway.get_child([f"{ns}:boiler"])
        points = [(await p.read_browse_name()).Name for p in await boiler.get_children()]
        say(step="browse", devices=sorted(devices), points=sorted(points))
        for pid in ["temperature", "setpoint", "burner", "Online", "temperature_f"]:
            node = c.get_node(f"ns={ns};s=boiler.{pid}")
            dv = await node.read_data_value(raise_on_bad_status=False)
            dtype = await node.read_data_type_as_variant_type()
            unit = None
            try:
                eu = await node.get_child(["0:EngineeringUnits"])
                unit = (await eu.read_value()).DisplayName.Text
            except Exception:
                pass
            say(
                step="read",
                node=pid,
                value=dv.Value.Value if dv.Value else None,
                status=dv.StatusCode.name,
                type=dtype.name,
                unit=unit,
            )
        changes = []

        class Handler:
            def datachange_notification(self, node, val, data):
                changes.append(val)

        sub = await c.create_subscription(100, Handler())
        await sub.subscribe_data_change(c.get_node(f"ns={ns};s=boiler.temperature"))
        for _ in range(50):
            if len(changes) >= 3:
                break
            await asyncio.sleep(0.1)
        say(step="subscribe", changes=len(changes))
        try:
            await c.get_node(f"ns={ns};s=boiler.setpoint").write_value(
                ua.DataValue(ua.Variant(12.5, ua.VariantType.Double))
            )
            say(step="write", status="Good")
        except ua.UaStatusCodeError as e:
            say(step="write", status=ua.status_codes.get_name_and_doc(e.code)[0])
    finally:
        await c.disconnect()


async def secure(url, cert_dir, user, password, step):
    cert, key = client_cert(cert_dir)
    c = Client(url, timeout=10)
    c.application_uri = APP_URI
    c.set_user(user)
    c.set_password(password)
    try:
        await c.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert),
            str(key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        await c.connect()
    except Exception as e:
        say(step=step, ok=False, user=user, error=repr(e))
        return
    try:
        ns = await c.get_namespace_index(url and "urn:edge-gateway:" + sys.argv[2])
        dv = await c.get_node(f"ns={ns};s=boiler.temperature").read_data_value(
            raise_on_bad_status=False
        )
        say(step=step, ok=True, user=user, error="", status=dv.StatusCode.name)
        if step in ("secure", "viewer"):
            await writes(c, ns, user)
    finally:
        await c.disconnect()


async def writes(c, ns, user):
    """Writes of the setpoint (u16 scaled by 0.1, served as Double): right, wrong type, NaN,
    out of range; each answered with its status code."""
    node = c.get_node(f"ns={ns};s=boiler.setpoint")
    tries = [
        ("ok", ua.Variant(12.5, ua.VariantType.Double)),
        ("wrong_type", ua.Variant(12, ua.VariantType.Int32)),
        ("nan", ua.Variant(float("nan"), ua.VariantType.Double)),
        ("out_of_range", ua.Variant(1e9, ua.VariantType.Double)),
    ]
    for name, v in tries:
        try:
            await node.write_value(ua.DataValue(v))
            status = "Good"
        except ua.UaStatusCodeError as e:
            status = ua.status_codes.get_name_and_doc(e.code)[0]
        say(step="write_as", user=user, what=name, status=status)


async def events(url, gw):
    """Subscribes to events on the Server object and on the boiler's folder, says `ready`, and
    reports each event for 20 s or until 2 have come on each."""
    c = Client(url, timeout=10)
    await c.connect()
    try:
        ns = await c.get_namespace_index(f"urn:edge-gateway:{gw}")
        seen = []

        class Handler:
            def __init__(self, where):
                self.where = where

            def event_notification(self, event):
                seen.append(self.where)
                say(
                    step="event",
                    on=self.where,
                    severity=event.Severity,
                    source=event.SourceName,
                    message=event.Message.Text,
                )

        for where, node in [
            ("server", c.nodes.server),
            ("boiler", c.get_node(f"ns={ns};s=boiler")),
        ]:
            sub = await c.create_subscription(100, Handler(where))
            await sub.subscribe_events(node)
        say(step="ready")
        for _ in range(200):
            if seen.count("server") >= 2 and seen.count("boiler") >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await c.disconnect()


async def main():
    url, gw, cert_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if sys.argv[4:] == ["events"]:
        await events(url, gw)
        return
    if sys.argv[4:] == ["secure"]:
        await secure(url, cert_dir, "admin", "admin", "secure")
        return
    await anonymous(url, gw)
    await secure(url, cert_dir, "admin", "admin", "secure")
    await secure(url, cert_dir, "viewer", "viewer", "viewer")
    await secure(url, cert_dir, "admin", "not-the-password", "wrong_password")


asyncio.run(main())

"""A Sparkplug B host for the interop tests, decoding with pysparkplug (PyPI), code we did not write.

`sparkplug_host.py HOST PORT GROUP NODE [PRIMARY_HOST_ID]`

Prints `ready` once subscribed, then one JSON line per message of the edge node:
{"verb", "device", "seq", "ts", "metrics": [{"name", "alias", "datatype", "value", "historical",
"null", "ts", "props"}]} — DATA metrics carry the names their birth gave their aliases, as a host
resolves them. Properties are read with pysparkplug's own generated protobuf module.

Commands on stdin, one per line:
  online | offline                      publish this host's retained STATE (needs PRIMARY_HOST_ID)
  clear                                 remove the retained STATE
  rebirth                               NCMD Node Control/Rebirth = true
  dcmd DEVICE METRIC DATATYPE VALUE [AGE_MS]
                                        DCMD with one metric by name (DATATYPE as pysparkplug names it),
                                        its timestamp AGE_MS in the past (default 0)
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as sp
from pysparkplug._protobuf import Payload as PbPayload

host, port, group, node = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
primary = sys.argv[5] if len(sys.argv) > 5 else None
out_lock = threading.Lock()
births = {}  # (device or "") -> NBirth/DBirth, to resolve aliases
ready = threading.Event()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def value(v):
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, bytes):
        return v.hex()
    return v


def props_of(raw):
    """Metric properties by metric name (births) or alias, read from the raw protobuf."""
    pb = PbPayload.FromString(raw)
    out = {}
    for m in pb.metrics:
        if not m.HasField("properties"):
            continue
        d = {}
        for k, v in zip(m.properties.keys, m.properties.values):
            field = v.WhichOneof("value")
            d[k] = getattr(v, field) if field else None
        out[m.name if m.HasField("name") else m.alias] = d
    return out


def on_connect(client, userdata, flags, rc):
    client.subscribe(f"spBv1.0/{group}/+/{node}", qos=1)
    client.subscribe(f"spBv1.0/{group}/+/{node}/+", qos=1)


def on_subscribe(client, userdata, mid, granted):
    if mid >= 2:
        ready.set()


def on_message(client, userdata, msg):
    parts = msg.topic.split("/")
    verb = parts[2]
    device = parts[4] if len(parts) > 4 else None
    key = device or ""
    try:
        if verb in ("NBIRTH", "DBIRTH"):
            p = (sp.NBirth if verb == "NBIRTH" else sp.DBirth).decode(msg.payload)
            births[key] = p
        elif verb == "NDEATH":
            p = sp.NDeath.decode(msg.payload)
            m = p.bd_seq_metric
            emit({"verb": verb, "device": None, "bdSeq": m.value, "name": m.name,
                  "datatype": m.datatype.name})
            return
        elif verb == "DDEATH":
            p = sp.DDeath.decode(msg.payload)
            emit({"verb": verb, "device": device, "seq": p.seq, "ts": p.timestamp})
            return
        elif verb in ("NDATA", "DDATA"):
            cls = sp.NData if verb == "NDATA" else sp.DData
            p = cls.decode(msg.payload, birth=births.get(key))
        else:
            return  # commands: our own
    except Exception as e:  # a payload pysparkplug refuses is a finding: report it
        emit({"verb": verb, "device": device, "error": repr(e)})
        return
    props = props_of(msg.payload)
    metrics = []
    for m in p.metrics:
        metrics.append({
            "name": m.name,
            "alias": m.alias,
            "datatype": m.datatype.name,
            "value": value(m.value),
            "null": m.is_null,
            "historical": m.is_historical,
            "ts": m.timestamp,
            "props": props.get(m.name, props.get(m.alias, {})),
        })
    emit({"verb": verb, "device": device, "seq": getattr(p, "seq", None),
          "ts": p.timestamp, "metrics": metrics})


client = mqtt.Client(client_id=f"sparkplug-host-{node}-{time.time_ns()}")
if primary:
    client.will_set(f"spBv1.0/STATE/{primary}",
                    json.dumps({"online": False, "timestamp": 0}), qos=1, retain=True)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port, keepalive=10)
client.loop_start()
ready.wait(10)
emit("ready")

for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    now = sp.get_current_timestamp()
    if words[0] in ("online", "offline"):
        state = sp.State(timestamp=now, online=words[0] == "online")
        client.publish(f"spBv1.0/STATE/{primary}", state.encode(), qos=1, retain=True).wait_for_publish()
    elif words[0] == "clear":
        client.publish(f"spBv1.0/STATE/{primary}", b"", qos=1, retain=True).wait_for_publish()
    elif words[0] == "rebirth":
        metric = sp.Metric(timestamp=now, name="Node Control/Rebirth",
                           datatype=sp.DataType.BOOLEAN, value=True)
        cmd = sp.NCmd(timestamp=now, metrics=(metric,))
        client.publish(f"spBv1.0/{group}/NCMD/{node}", cmd.encode(include_dtypes=True),
                       qos=0).wait_for_publish()
    elif words[0] == "dcmd":
        _, device, name, dtype, raw = words[:5]
        sent = now - (int(words[5]) if len(words) > 5 else 0)
        datatype = sp.DataType[dtype]
        v = {"BOOLEAN": lambda s: s == "true", "FLOAT": float, "DOUBLE": float,
             "STRING": str}.get(dtype, int)(raw)
        metric = sp.Metric(timestamp=sent, name=name, datatype=datatype, value=v)
        cmd = sp.DCmd(timestamp=sent, metrics=(metric,))
        client.publish(f"spBv1.0/{group}/DCMD/{node}/{device}", cmd.encode(include_dtypes=True),
                       qos=0).wait_for_publish()
    emit({"done": words[0]})

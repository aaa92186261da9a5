"""A pymodbus master for the Modbus server tests: `modbus_client.py HOST PORT OPS_JSON`.

OPS_JSON is a list of operations, run in order on one connection:
  {"op": "read", "table": "holding"|"input"|"coil"|"discrete", "unit": U, "address": A, "count": N}
  {"op": "write_register", "unit": U, "address": A, "value": V}
  {"op": "write_registers", "unit": U, "address": A, "values": [..]}
  {"op": "write_coil", "unit": U, "address": A, "value": true}
  {"op": "write_coils", "unit": U, "address": A, "values": [..]}
Prints one JSON line per operation: {"ok": [registers or bits]} (a write: {"ok": []}),
{"exception": CODE}, or {"error": "text"} when no answer came.
"""

import json
import sys

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException


def run(client: ModbusTcpClient, op: dict):
    unit, addr = op["unit"], op["address"]
    kind = op["op"]
    if kind == "read":
        count = op["count"]
        fn = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[op["table"]]
        return fn(addr, count=count, device_id=unit), op["table"], count
    if kind == "write_register":
        return client.write_register(addr, op["value"], device_id=unit), None, 0
    if kind == "write_registers":
        return client.write_registers(addr, op["values"], device_id=unit), None, 0
    if kind == "write_coil":
        return client.write_coil(addr, op["value"], device_id=unit), None, 0
    if kind == "write_coils":
        return client.write_coils(addr, op["values"], device_id=unit), None, 0
    raise ValueError(f"unknown op {kind}")


def main() -> None:
    host, port, ops = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    client = ModbusTcpClient(host, port=port, timeout=3, retries=0)
    if not client.connect():
        print(json.dumps({"error": "cannot connect"}), flush=True)
        return
    for op in ops:
        try:
            rr, table, count = run(client, op)
        except (ModbusException, ValueError) as e:
            print(json.dumps({"error": str(e)}), flush=True)
            continue
        if rr.isError():
            print(json.dumps({"exception": getattr(rr, "exception_code", -1)}), flush=True)
        elif table in ("coil", "discrete"):
            print(json.dumps({"ok": [bool(b) for b in rr.bits[:count]]}), flush=True)
        elif table:
            print(json.dumps({"ok": list(rr.registers)}), flush=True)
        else:
            print(json.dumps({"ok": []}), flush=True)
    client.close()


if __name__ == "__main__":
    main()

"""A pymodbus device for the interop tests: `pymodbus_server.py tcp PORT`, `... rtu DEVICE` or
`... rtu_over_tcp PORT` (RTU frames with CRC on a TCP socket, as a serial server carries them).
A fourth argument `units=N` serves units 1..N instead, each with holding registers 0..119
counting up from 100 × its id (the serial-line bench's slaves); `any` serves unit 1's registers
under every unit id (pymodbus's id 0: a server that answers for any id, as many TCP devices do).
Without it, an id not served answers exception 0B (gateway target failed to respond).

Unit 1 holds one value of every type, in every byte/word order. Big-endian values use
pymodbus's own encoders; the other orders are laid out here with `struct`, independently of the
gateway's codec. Addresses not defined here answer exception 02 (illegal data address).
"""

import asyncio
import struct
import sys

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def regs(data: bytes, byte_order: str, word_order: str) -> list[int]:
    """Big-endian bytes -> registers in the given orders."""
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def raw(address: int, values: list[int]) -> SimData:
    return SimData(address=address, values=values, datatype=DataType.REGISTERS)


ORDERS = [("big", "big"), ("little", "little"), ("little", "big"), ("big", "little")]

holding = [
    # pymodbus's own encoding (big byte, big word order).
    SimData(address=0, values=123.456, datatype=DataType.FLOAT32),
    SimData(address=2, values=-123456, datatype=DataType.INT32),
    SimData(address=4, values=0x0102030405060708, datatype=DataType.UINT64),
    SimData(address=8, values=-2, datatype=DataType.INT16),
    SimData(address=9, values=65000, datatype=DataType.UINT16),
    SimData(address=10, values="HELLO-PLC!", datatype=DataType.STRING),
    SimData(address=15, values=-1.5, datatype=DataType.FLOAT64),
    SimData(address=19, values=-5, datatype=DataType.INT64),
    SimData(address=23, values=0x12345678, datatype=DataType.UINT32),
]
# Every order of f32 123.456 at 30+2k, f64 -1.5 at 40+4k, u32 0x12345678 at 60+2k,
# i64 -5 at 70+4k, for k = 0..3 in the order of ORDERS.
for k, (bo, wo) in enumerate(ORDERS):
    holding.append(raw(30 + 2 * k, regs(struct.pack(">f", 123.456), bo, wo)))
    holding.append(raw(40 + 4 * k, regs(struct.pack(">d", -1.5), bo, wo)))
    holding.append(raw(60 + 2 * k, regs(struct.pack(">I", 0x12345678), bo, wo)))
    holding.append(raw(70 + 4 * k, regs(struct.pack(">q", -5), bo, wo)))
# Registers to write into.
holding.append(raw(100, [0] * 10))

inputs = [SimData(address=0, values=-40.25, datatype=DataType.FLOAT32)]
coils = [SimData(address=0, values=[True, False, True, True, False, False, False, True] * 2, datatype=DataType.BITS)]
discrete = [SimData(address=0, values=[False, True] * 8, datatype=DataType.BITS)]

device = SimDevice(id=1, simdata=(coils, discrete, holding, inputs))


def line_of(n: int) -> list[SimDevice]:
    """Units 1..n, 120 holding registers each."""
    return [
        SimDevice(id=u, simdata=raw(0, [100 * u + r for r in range(120)]))
        for u in range(1, n + 1)
    ]


async def main() -> None:
    kind, where = sys.argv[1], sys.argv[2]
    global device
    if len(sys.argv) > 3 and sys.argv[3].startswith("units="):
        device = line_of(int(sys.argv[3].split("=")[1]))
    elif len(sys.argv) > 3 and sys.argv[3] == "any":
        device = SimDevice(id=0, simdata=(coils, discrete, holding, inputs))
    if kind == "tcp":
        server = ModbusTcpServer(device, address=("127.0.0.1", int(where)))
    elif kind == "rtu_over_tcp":
        server = ModbusTcpServer(device, address=("127.0.0.1", int(where)), framer=FramerType.RTU)
    else:
        server = ModbusSerialServer(device, port=where, baudrate=19200)
    # Listen first, then say so: the test waits for this line, not for a guessed time. A TCP
    # server on port 0 reports the port the kernel gave it.
    await server.serve_forever(background=True)
    if kind != "rtu":
        where = server.transport.sockets[0].getsockname()[1]
    print("serving", kind, where, flush=True)
    await server.serving


asyncio.run(main())

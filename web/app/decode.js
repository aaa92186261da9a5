// Register decoding in every type and byte/word order, for the register inspector: the same
// rules as the gateway's codec (byte order inside a register, word order across registers).

export const ORDERS = [
  { name: "ABCD", byteOrder: "big", wordOrder: "big" },
  { name: "BADC", byteOrder: "little", wordOrder: "big" },
  { name: "CDAB", byteOrder: "big", wordOrder: "little" },
  { name: "DCBA", byteOrder: "little", wordOrder: "little" },
];

export const TYPES = [
  { type: "u16", regs: 1 },
  { type: "i16", regs: 1 },
  { type: "u32", regs: 2 },
  { type: "i32", regs: 2 },
  { type: "f32", regs: 2 },
  { type: "u64", regs: 4 },
  { type: "i64", regs: 4 },
  { type: "f64", regs: 4 },
];

/** The bytes of `regs` (16-bit values), most significant first, under the given orders. */
export function bytesOf(regs, byteOrder, wordOrder) {
  const words = wordOrder === "little" ? [...regs].reverse() : regs;
  const out = new Uint8Array(words.length * 2);
  words.forEach((w, i) => {
    const hi = (w >> 8) & 0xff,
      lo = w & 0xff;
    out[2 * i] = byteOrder === "little" ? lo : hi;
    out[2 * i + 1] = byteOrder === "little" ? hi : lo;
  });
  return out;
}

/** One value of `type` from the first registers of `regs`, or null when too few. */
export function decode(regs, type, byteOrder, wordOrder) {
  const t = TYPES.find((x) => x.type === type);
  if (!t || regs.length < t.regs) return null;
  const v = new DataView(bytesOf(regs.slice(0, t.regs), byteOrder, wordOrder).buffer);
  switch (type) {
    case "u16":
      return v.getUint16(0);
    case "i16":
      return v.getInt16(0);
    case "u32":
      return v.getUint32(0);
    case "i32":
      return v.getInt32(0);
    case "f32":
      return v.getFloat32(0);
    case "u64":
      return v.getBigUint64(0);
    case "i64":
      return v.getBigInt64(0);
    case "f64":
      return v.getFloat64(0);
  }
  return null;
}

/** The registers as text (two bytes each), printable ASCII only. */
export function ascii(regs, byteOrder) {
  return Array.from(bytesOf(regs, byteOrder, "big"))
    .map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : "·"))
    .join("");
}

/** A decoded value for display: floats to 7 significant digits, NaN and infinities named. */
export function show(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "bigint") return v.toString();
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "+inf" : "-inf";
  // Integers in full (a u32 counter is 1123478000, not 1.123478e+9); only fractions that are
  // very large or very small in e-notation.
  if (Number.isInteger(v) && Math.abs(v) < 1e21) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e9 || a < 1e-4)) return v.toExponential(6);
  return Number(v.toPrecision(7)).toString();
}

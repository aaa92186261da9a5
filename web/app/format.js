// Values and times as a person reads them: the browser's locale, dates only when not today.

/** What a quality says next to a value (good says nothing). */
export const QUALITY_TEXT = { good: "", bad: "BAD", stale: "STALE" };

/** A value for a person: digits grouped by the browser's locale (1,234,600,000), decimals by
 * magnitude. */
export function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "ON" : "OFF";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString();
    const a = Math.abs(v);
    const d = a >= 1000 ? 0 : a >= 100 ? 1 : 2;
    return v.toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d });
  }
  return String(v);
}

/** How long ago, for a person: "12 s ago", "5 min ago", else the date and time. */
export function fmtAgo(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return fmtTime(ts);
}

export function fmtTime(ts) {
  if (!ts) return "never";
  const d = new Date(ts);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** A logged time: always with its date (an event log spans days). */
export function fmtStamp(ts) {
  if (!ts) return "never";
  return new Date(ts).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

/** An event's kind for a person. An acknowledgement is an `info` event that keeps its alarm's
 * type (so upstream can match it): it reads as what it is. */
export function eventKind(e) {
  if (e.state === "info" && /^acknowledged by /.test(e.message || "")) return "acknowledgement";
  return e.type.replace(/_/g, " ");
}

// Live updates: the devices' values as snapshots and telemetry pushes bring them, events as
// they arrive, and what was missed (a deviceSeq that jumps, a reconnect) read again.

/** `env`: { conn, S, scans, session, alarms }. */
export function liveUpdates(env) {
  const { conn, S } = env;
  let recovering = false;

  function applyDevices(devices) {
    const changed = [];
    for (const d of devices) {
      let l = S.live.get(d.id);
      if (!l) {
        l = { points: new Map() };
        S.live.set(d.id, l);
      }
      l.type = d.type;
      l.online = d.online;
      l.lastSeen = d.lastSeen;
      for (const p of d.points) l.points.set(p.id, { value: p.value, quality: p.quality, unit: p.unit, ts: p.ts });
      changed.push(d.id);
    }
    env.alarms.updateCounts();
    if (S.view) S.view.update("devices", changed);
  }

  /** Whether a snapshot's devices and their points differ from the structure drawn. */
  function structureChanged(devices) {
    if (!S.desc || devices.length !== S.desc.size) return true;
    return devices.some((d) => {
      const known = S.desc.get(d.id);
      if (!known || known.points.length !== d.points.length) return true;
      const ids = new Set(known.points.map((p) => p.id));
      return d.points.some((p) => !ids.has(p.id));
    });
  }

  function onPush(service, data) {
    if (window.__edgeDrop?.(service, data)) {
      window.__edgeDropped++;
      return;
    }
    if (service === "push.session") {
      // Logged out elsewhere, expired, or the user changed in the config: back to the login.
      S.token = null;
      sessionStorage.removeItem("edge.token");
      const why = {
        logout: "You were logged out.",
        expired: "Your session expired.",
        "user changed": "Your user was changed (role or password): log in again.",
      };
      env.session.showLogin(why[data.reason] || "Your account was changed; log in again.");
      return;
    }
    if (!S.loggedIn) return;
    if (service === "push.snapshot") {
      // A reload keeps this socket open; a snapshot of other devices or points says the config
      // changed (a reload by someone else): everything is read again, as after a login.
      if (structureChanged(data.devices)) {
        env.session.afterLogin({ user: S.user, role: S.role }, true);
      } else applyDevices(data.devices);
    } else if (service === "push.telemetry") {
      const l = S.live.get(data.deviceId);
      if (!l) return;
      for (const [pid, x] of Object.entries(data.points)) {
        const p = l.points.get(pid) || { unit: "" };
        p.value = x.v;
        p.quality = x.q;
        p.ts = data.ts;
        l.points.set(pid, p);
      }
      if (S.view) S.view.update("telemetry", data);
    } else if (service === "push.event") {
      onEvent(data);
    } else if (service === "push.events") {
      for (const e of data.events) onEvent(e);
    } else if (service === "push.scan") {
      if (env.scans.listener) env.scans.listener(data);
    }
  }

  /** One event, pushed or recovered: a deviceSeq that jumps means pushes were lost. */
  function onEvent(data) {
    if (S.seen.has(data.id)) return;
    S.seen.add(data.id);
    if (S.seen.size > 2000) S.seen.delete(S.seen.values().next().value);
    const last = S.devSeq.get(data.deviceId);
    if (last == null || data.deviceSeq > last) S.devSeq.set(data.deviceId, data.deviceSeq);
    if (S.lastEventTs == null || data.ts > S.lastEventTs) S.lastEventTs = data.ts;
    if (last != null && data.deviceSeq > last + 1) recoverMissed();
    if (data.type === "device_online" || data.type === "device_offline") {
      const l = S.live.get(data.deviceId);
      if (l) l.online = data.type === "device_online";
      env.alarms.updateCounts();
      if (S.view) S.view.update("devices", [data.deviceId]);
    }
    if (data.state === "active" || data.state === "cleared") env.alarms.refresh();
    if (S.view) S.view.update("event", data);
  }

  /** After a gap or a reconnect: the events since the newest one seen (an emergency among them
   * gets its banner and tone), and the active alarms. */
  async function recoverMissed() {
    if (recovering) return;
    recovering = true;
    try {
      const since = S.lastEventTs;
      const [alarms, missed] = await Promise.all([
        conn.call("alarms.active"),
        since ? conn.call("events.query", { since, limit: 1000 }) : { events: [] },
      ]);
      for (const e of missed.events.slice().reverse()) {
        if (S.seen.has(e.id)) continue;
        if (e.priority === "emergency" && e.state === "active" && !S.alerted.has(e.id)) {
          S.alerted.add(e.id);
          env.alarms.cue(e);
        }
        onEvent(e);
      }
      env.alarms.set(alarms.alarms, true, alarms.shelved);
    } catch {
      /* the next gap or reconnect tries again */
    } finally {
      recovering = false;
    }
  }

  return { applyDevices, onPush, recoverMissed };
}

// Runs livekit-client's ConnectionCheck one check at a time and records, per check, its status,
// its logs, how long it took and the ICE candidate pairs its peer connections selected.
// Driven by tests/support/connection_check.py: it calls window.__lkRun(url, token, options) and
// waits for window.__lkResults.done.

// Wrapped before livekit-client is loaded: the checks create their Rooms (and so their peer
// connections) internally, so this is the only way to see which candidate pair they used.
const NativePC = window.RTCPeerConnection;
const tracked = [];
let current = null; // the name of the check running now

class TrackedPC extends NativePC {
  constructor(...args) {
    super(...args);
    const config = args[0] || {};
    const entry = {
      check: current,
      index: tracked.length,
      created_ms: Math.round(performance.now()),
      ice_transport_policy: config.iceTransportPolicy || 'all',
      ice_servers: (config.iceServers || []).flatMap((s) => [].concat(s.urls || [])),
      states: [],
      pairs: [], // every distinct selected pair, in order (a protocol switch restarts ICE)
      pc: this,
    };
    tracked.push(entry);
    const note = () => {
      entry.states.push(`${this.iceConnectionState}/${this.connectionState}`);
      if (this.connectionState === 'connected') sample(entry);
    };
    this.addEventListener('iceconnectionstatechange', note);
    this.addEventListener('connectionstatechange', note);
  }
}
window.RTCPeerConnection = TrackedPC;

function describeCandidate(c) {
  if (!c) return null;
  return {
    type: c.candidateType,
    protocol: c.protocol,
    address: c.address ?? c.ip ?? null,
    port: c.port,
    relay_protocol: c.relayProtocol ?? null, // local relay: how the browser reached TURN
    tcp_type: c.tcpType ?? null,
    url: c.url ?? null,
  };
}

async function sample(entry) {
  const pc = entry.pc;
  if (pc.signalingState === 'closed') return;
  // The SDK sets its ICE servers after construction (from the join response).
  const conf = pc.getConfiguration();
  entry.ice_transport_policy = conf.iceTransportPolicy || entry.ice_transport_policy;
  entry.ice_servers = (conf.iceServers || []).flatMap((s) => [].concat(s.urls || []));
  let report;
  try {
    report = await pc.getStats();
  } catch {
    return; // closed in between
  }
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      pair = byId.get(s.selectedCandidatePairId) || pair;
    }
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s;
    });
  }
  if (!pair) return;
  const local = describeCandidate(byId.get(pair.localCandidateId));
  const remote = describeCandidate(byId.get(pair.remoteCandidateId));
  const key = JSON.stringify([local, remote]);
  const last = entry.pairs[entry.pairs.length - 1];
  const figures = {
    state: pair.state,
    nominated: !!pair.nominated,
    rtt_ms: pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null,
    bytes_sent: pair.bytesSent ?? null,
    bytes_received: pair.bytesReceived ?? null,
  };
  if (last && last.key === key) {
    Object.assign(last, figures);
  } else {
    entry.pairs.push({ key, local, remote, at_ms: Math.round(performance.now()), ...figures });
  }
}

const poller = setInterval(() => {
  for (const entry of tracked) sample(entry);
}, 250);

const lk = await import('./node_modules/livekit-client/dist/livekit-client.esm.mjs');
const STATUS = Object.fromEntries(
  Object.entries(lk.CheckStatus).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

// The SDK's own warnings and errors, by check: the checks' logs say what failed, these often why.
const sdkLogs = [];
lk.setLogLevel('warn');
lk.setLogExtension((level, msg, context) => {
  if (level < lk.LogLevel.warn || sdkLogs.length >= 400) return;
  let text = String(msg);
  if (context && context.error) text += ` (${context.error})`;
  else if (context && context.reason !== undefined) text += ` (reason ${context.reason})`;
  sdkLogs.push({ check: current, level: level >= lk.LogLevel.error ? 'error' : 'warning', message: text });
});

function pairsOf(name) {
  return tracked
    .filter((e) => e.check === name)
    .map((e) => ({
      index: e.index,
      ice_transport_policy: e.ice_transport_policy,
      ice_servers: e.ice_servers,
      states: e.states,
      pairs: e.pairs.map(({ key, ...rest }) => rest),
    }));
}

const CHECKS = [
  ['websocket', 'checkWebsocket'],
  ['webrtc', 'checkWebRTC'],
  ['turn', 'checkTURN'],
  ['reconnect', 'checkReconnect'],
  ['publishAudio', 'checkPublishAudio'],
  ['publishVideo', 'checkPublishVideo'],
  ['connectionProtocol', 'checkConnectionProtocol'],
  ['cloudRegion', 'checkCloudRegion'],
];

window.__lkResults = null;
window.__lkRun = (url, token, options) => {
  const opts = options || {};
  const results = {
    livekit_client: lk.version,
    user_agent: navigator.userAgent,
    url,
    checks: [],
    sdk_logs: sdkLogs,
    done: false,
  };
  window.__lkResults = results;
  const only = opts.checks || CHECKS.map(([name]) => name);
  const perCheckMs = opts.perCheckTimeoutMs || 60000;
  (async () => {
    const cc = new lk.ConnectionCheck(url, token);
    const started = performance.now();
    for (const [name, method] of CHECKS) {
      if (!only.includes(name)) continue;
      const host = new URL(url).hostname;
      if (name === 'cloudRegion' && !/\.livekit\.(cloud|run)$/.test(host)) {
        // As LiveKit's own connection test page does: regions exist on LiveKit Cloud only.
        results.checks.push({ name, check: 'CloudRegionCheck', status: 'NOT_RUN', reason: 'not LiveKit Cloud', logs: [], duration_ms: 0, peer_connections: [] });
        continue;
      }
      current = name;
      const t0 = performance.now();
      let info = null;
      let thrown = null;
      let timer;
      try {
        // Bounded: a check whose Room never settles must not hold up the others forever.
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`harness: no result within ${perCheckMs} ms`)), perCheckMs);
        });
        info = await Promise.race([cc[method](), timeout]);
      } catch (e) {
        thrown = String((e && e.message) || e);
      } finally {
        clearTimeout(timer);
      }
      const duration = performance.now() - t0;
      for (const e of tracked.filter((x) => x.check === name)) await sample(e);
      const entry = {
        name,
        check: info ? info.name : null,
        status: info ? STATUS[info.status] : 'HARNESS_ERROR',
        description: info ? info.description : null,
        logs: info ? info.logs.map((l) => ({ level: l.level, message: l.message })) : [],
        duration_ms: Math.round(duration),
        peer_connections: pairsOf(name),
      };
      if (thrown) entry.error = thrown;
      if (info && info.data) entry.data = info.data;
      results.checks.push(entry);
      current = null;
    }
    results.total_ms = Math.round(performance.now() - started);
    results.success = cc.isSuccess();
    clearInterval(poller);
    results.done = true;
  })().catch((e) => {
    results.fatal = String((e && e.stack) || e);
    results.done = true;
  });
};
window.__lkReady = true;

// The agent softphone. It speaks the AgentSession protocol as JSON over /agent/ws (each message an
// AgentSessionRequest or AgentSessionEvent in protobuf's canonical JSON) and takes calls' audio over WebRTC: the page
// makes the offer, sends it in accept {webrtc {offerSdp}}, and applies connected.webrtcAnswerSdp.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const PRESENCE = {
    AGENT_PRESENCE_AVAILABLE: "Available",
    AGENT_PRESENCE_AWAY: "Away",
    AGENT_PRESENCE_OFFLINE: "Offline",
    AGENT_PRESENCE_BUSY: "On a call",
    AGENT_PRESENCE_WRAP_UP: "Wrapping up",
  };
  const PERMISSION = {
    PERMISSION_STATE_NONE: "No permission",
    PERMISSION_STATE_REQUESTED: "Requested",
    PERMISSION_STATE_TEMPORARY: "Granted (temporary)",
    PERMISSION_STATE_PERMANENT: "Granted (permanent)",
    PERMISSION_STATE_DECLINED: "Declined",
    PERMISSION_STATE_EXPIRED: "Expired",
    PERMISSION_STATE_REVOKED: "Revoked",
  };

  const state = {
    socket: null,
    agentId: "",
    token: "",
    presence: "",
    offers: new Map(), // offerId → offer event, with when it arrived
    accepting: "", // the offer an accept is on its way for
    call: null, // {callId, customer, business, queue, connectedAt}
    pc: null,
    localStream: null,
    muted: false,
    remoteLevel: 0,
    peakLevel: 0,
    remoteHz: 0,
    levelTimer: 0,
  };

  // --- helpers ------------------------------------------------------------------------------------------------------

  const seconds = (duration) => (duration ? parseFloat(duration) : 0); // JSON Durations are "12.5s"
  const friendly = (table, name) => table[name] || (name || "").replace(/^[A-Z]+_[A-Z]+_/, "").toLowerCase();
  const localTime = (timestamp) => (timestamp ? new Date(timestamp).toLocaleString() : "—");
  const clock = (total) => {
    const s = Math.max(0, Math.floor(total));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  };

  function log(text) {
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    $("log").prepend(item);
    while ($("log").children.length > 50) $("log").lastElementChild.remove();
  }

  function send(request) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(request));
  }

  // --- the session ----------------------------------------------------------------------------------------------------

  function signIn(agentId, token) {
    const url = new URL("/agent/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    state.socket = socket;
    state.agentId = agentId;
    state.token = token;
    $("connection").textContent = "Connecting…";
    socket.addEventListener("open", () => {
      const login = { login: { agentId } };
      if (token) login.token = token; // beside login, never in the URL
      socket.send(JSON.stringify(login));
    });
    socket.addEventListener("message", (message) => {
      try {
        handle(JSON.parse(message.data));
      } catch (error) {
        log(`could not show an event: ${error}`);
      }
    });
    socket.addEventListener("close", () => {
      if (state.socket !== socket) return;
      state.socket = null;
      endMedia();
      state.offers.clear();
      state.call = null;
      state.presence = "";
      $("connection").textContent = "Signed out";
      render();
    });
  }

  const HANDLERS = {
    loggedIn({ agent }) {
      $("connection").textContent = `Signed in as ${agent.agentId}`;
      $("agent-name").textContent = agent.name || agent.agentId;
      state.presence = agent.presence || "AGENT_PRESENCE_OFFLINE";
      log(`signed in as ${agent.agentId}`);
      if (agent.callId && state.presence === "AGENT_PRESENCE_BUSY" && !state.call) {
        // Signed in again during a call (the page was reloaded): the call is still the agent's to hang up.
        state.call = { callId: agent.callId, customer: "", business: "", queue: "", connectedAt: performance.now() };
        $("call-media").textContent = "On this call since before this page was opened; no audio here.";
        log(`on call ${agent.callId}`);
      }
    },
    presence({ state: presence, why }) {
      state.presence = presence;
      $("presence-why").textContent = why ? `(${friendly({}, why).replace(/_/g, " ")})` : "";
      log(`presence: ${friendly(PRESENCE, presence)}`);
    },
    offer(offer) {
      state.offers.set(offer.offerId, { ...offer, arrivedAt: performance.now() });
      log(`call offered from ${offer.customerNumber} (queue ${offer.queueId})`);
      $("customer-number").value ||= offer.customerNumber;
      $("business-number").value ||= offer.businessNumber;
    },
    offerWithdrawn({ offerId, why }) {
      state.offers.delete(offerId);
      if (state.accepting === offerId) endMedia();
      log(`offer withdrawn: ${friendly({}, why).replace(/_/g, " ")}`);
    },
    async connected({ callId, webrtcAnswerSdp }) {
      const offer = [...state.offers.values()].find((o) => o.callId === callId);
      state.offers.delete(offer ? offer.offerId : "");
      state.accepting = "";
      state.call = {
        callId,
        customer: offer ? offer.customerNumber : "",
        business: offer ? offer.businessNumber : "",
        queue: offer ? offer.queueId : "",
        connectedAt: performance.now(),
      };
      if (offer) {
        $("customer-number").value = offer.customerNumber;
        $("business-number").value = offer.businessNumber;
      }
      if (webrtcAnswerSdp && state.pc) {
        await state.pc.setRemoteDescription({ type: "answer", sdp: webrtcAnswerSdp });
        $("call-media").textContent = "Audio: connecting…";
      } else {
        $("call-media").textContent = "Connected; the service sent no browser audio for this call.";
      }
      log(`connected to ${state.call.customer || callId}`);
    },
    callEnded({ callId, outcome }) {
      if (state.call && state.call.callId === callId) state.call = null;
      endMedia();
      log(`call ended (${friendly({}, outcome).replace(/_/g, " ") || "ended"})`);
    },
    error({ code, message }) {
      if (state.accepting) {
        endMedia(); // a refused accept leaves no half-open audio behind
        state.accepting = "";
      }
      log(`refused: ${code}: ${message}`);
      if (code === "unauthenticated" || code === "unknown_agent" || code === "invalid_argument") {
        if (!state.presence) $("connection").textContent = `Not signed in: ${message}`;
      }
      if (code === "session_replaced") $("connection").textContent = "Signed in elsewhere: this page is signed out";
    },
  };

  async function handle(event) {
    const [kind] = Object.keys(event);
    const handler = HANDLERS[kind];
    if (handler) await handler(event[kind]);
    render();
  }

  // --- audio ------------------------------------------------------------------------------------------------------------

  async function prepareMedia() {
    endMedia();
    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    state.localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    for (const track of state.localStream.getAudioTracks()) {
      track.enabled = !state.muted;
      pc.addTrack(track, state.localStream);
    }
    pc.addEventListener("track", (event) => listen(event.streams[0] || new MediaStream([event.track])));
    pc.addEventListener("connectionstatechange", () => {
      if (pc === state.pc && state.call) $("call-media").textContent = `Audio: ${pc.connectionState}`;
    });
    await pc.setLocalDescription(await pc.createOffer());
    // The service does not trickle: hand over the offer with every candidate gathered.
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
        setTimeout(resolve, 5000);
      });
    }
    return pc.localDescription.sdp;
  }

  function listen(remote) {
    // Chromium renders a remote stream into Web Audio only while a media element plays it too.
    const audio = $("remote-audio") || Object.assign(document.createElement("audio"), { id: "remote-audio" });
    audio.autoplay = true;
    audio.srcObject = remote;
    document.body.append(audio);
    audio.play().catch(() => {});
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    analyser.fftSize = 8192; // about 6 Hz a bin at 48 kHz
    context.createMediaStreamSource(remote).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const spectrum = new Float32Array(analyser.frequencyBinCount);
    clearInterval(state.levelTimer);
    state.levelTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      state.remoteLevel = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
      state.peakLevel = Math.max(state.peakLevel, state.remoteLevel);
      $("remote-level").value = state.remoteLevel;
      if (state.remoteLevel > 0.02) {
        // The loudest frequency while the customer is audible: what the page hears, for a test or a support check.
        analyser.getFloatFrequencyData(spectrum);
        let loudest = 1;
        for (let bin = 1; bin < spectrum.length; bin++) if (spectrum[bin] > spectrum[loudest]) loudest = bin;
        state.remoteHz = (loudest * context.sampleRate) / analyser.fftSize;
      }
    }, 50);
  }

  function endMedia() {
    clearInterval(state.levelTimer);
    state.remoteLevel = 0;
    $("remote-level").value = 0;
    if (state.pc) state.pc.close();
    state.pc = null;
    if (state.localStream) for (const track of state.localStream.getTracks()) track.stop();
    state.localStream = null;
    const audio = $("remote-audio");
    if (audio) audio.remove();
  }

  async function accept(offerId) {
    state.accepting = offerId;
    render();
    try {
      const offerSdp = await prepareMedia();
      if (state.accepting !== offerId) return; // withdrawn meanwhile
      send({ accept: { offerId, webrtc: { offerSdp } } });
    } catch (error) {
      state.accepting = "";
      endMedia();
      log(`cannot take the call's audio: ${error}`);
      render();
    }
  }

  function decline(offerId) {
    // A decline passes the call on and is not answered with a withdrawal: the offer goes from the page at once.
    send({ decline: { offerId } });
    state.offers.delete(offerId);
    log("offer declined");
    render();
  }

  // --- the customer panel (the gRPC API's calls as JSON: /agent/api/{method}) --------------------------------------------

  async function api(method, body) {
    const headers = { "Content-Type": "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(`/agent/api/${method}`, { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await response.json();
    if (!response.ok) throw new Error(`${answer.code}: ${answer.message}`);
    return answer;
  }

  function pair() {
    return { businessNumber: $("business-number").value.trim(), userNumber: $("customer-number").value.trim() };
  }

  function showPermission(permission) {
    $("customer-summary").hidden = false;
    $("customer-state").textContent = friendly(PERMISSION, permission.state);
    $("customer-state").dataset.state = permission.state || "";
    $("customer-expires").textContent = localTime(permission.expiresAt);
    $("customer-window").textContent = localTime(permission.serviceWindowExpiresAt);
    const body = $("customer-actions").querySelector("tbody");
    body.replaceChildren();
    for (const action of permission.actions || []) {
      const row = body.insertRow();
      row.dataset.action = action.action;
      const limits = (action.limits || [])
        .map((l) => Object.entries(l).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "))
        .join("; ");
      for (const text of [
        friendly({}, action.action).replace(/_/g, " "),
        action.allowed ? "yes" : "no",
        action.allowed ? "" : action.detail || friendly({}, action.reason),
        localTime(action.nextAllowedAt),
        limits,
      ]) row.insertCell().textContent = text;
      if (action.nextAllowedAt) row.cells[3].dataset.utc = action.nextAllowedAt;
    }
    $("customer-actions").hidden = false;
    const allowed = (name) => (permission.actions || []).some((a) => a.action === name && a.allowed);
    $("request-permission").disabled = !allowed("ACTION_SEND_PERMISSION_REQUEST");
    $("call-back").disabled = !allowed("ACTION_START_CALL") || !!state.call;
  }

  async function lookUp() {
    $("customer-message").textContent = "Looking up…";
    try {
      showPermission(await api("GetPermission", pair()));
      $("customer-message").textContent = "";
    } catch (error) {
      $("customer-message").textContent = String(error.message || error);
    }
  }

  async function requestPermission() {
    try {
      const key = `page-${Date.now()}-${Math.random().toString(36).slice(2)}`;
      const sent = await api("RequestPermission", { ...pair(), idempotencyKey: key });
      showPermission(sent.permission);
      $("customer-message").textContent = "Permission requested.";
    } catch (error) {
      $("customer-message").textContent = String(error.message || error);
    }
  }

  async function callBack() {
    // An agent-initiated call: the page's WebRTC offer goes in the agent route, the answer comes back in the call.
    try {
      const offerSdp = await prepareMedia();
      const call = await api("StartCall", { ...pair(), route: { agent: { agentId: state.agentId, offerSdp } } });
      state.call = {
        callId: call.callId,
        customer: call.userNumber || pair().userNumber,
        business: call.businessNumber || pair().businessNumber,
        queue: "",
        connectedAt: performance.now(),
      };
      if (call.webrtcAnswerSdp && state.pc) await state.pc.setRemoteDescription({ type: "answer", sdp: call.webrtcAnswerSdp });
      $("call-media").textContent = "Calling…";
      $("customer-message").textContent = `Calling ${state.call.customer}…`;
      log(`calling ${state.call.customer}`);
    } catch (error) {
      endMedia();
      $("customer-message").textContent = String(error.message || error);
    }
    render();
  }

  // --- what the page shows ----------------------------------------------------------------------------------------------

  function offerItem(offer) {
    const item = document.createElement("li");
    item.className = "offer";
    item.dataset.offerId = offer.offerId;
    item.dataset.callId = offer.callId;
    const title = document.createElement("h3");
    title.textContent = `Call from ${offer.customerNumber}`;
    const facts = document.createElement("p");
    const permission = offer.permission ? friendly(PERMISSION, offer.permission.state) : "unknown";
    facts.append(`Queue ${offer.queueId} · waited `, Object.assign(document.createElement("span"), { className: "waited" }));
    facts.append(` · permission: ${permission}`);
    const ring = Object.assign(document.createElement("progress"), { className: "ring", max: seconds(offer.expiresIn) || 1 });
    ring.setAttribute("aria-label", "Time left to answer");
    const left = Object.assign(document.createElement("span"), { className: "left" });
    const buttons = document.createElement("div");
    buttons.className = "actions";
    const yes = Object.assign(document.createElement("button"), { type: "button", className: "accept", textContent: "Accept" });
    const no = Object.assign(document.createElement("button"), { type: "button", className: "decline", textContent: "Decline" });
    yes.setAttribute("aria-label", `Accept the call from ${offer.customerNumber}`);
    no.setAttribute("aria-label", `Decline the call from ${offer.customerNumber}`);
    yes.addEventListener("click", () => accept(offer.offerId));
    no.addEventListener("click", () => decline(offer.offerId));
    buttons.append(yes, no);
    item.append(title, facts, ring, left, buttons);
    return item;
  }

  function tick() {
    const now = performance.now();
    for (const item of $("offers").children) {
      const offer = state.offers.get(item.dataset.offerId);
      if (!offer) continue;
      const elapsed = (now - offer.arrivedAt) / 1000;
      const remaining = Math.max(0, seconds(offer.expiresIn) - elapsed);
      item.querySelector(".waited").textContent = clock(seconds(offer.waited) + elapsed);
      item.querySelector(".ring").value = remaining;
      item.querySelector(".left").textContent = ` ${Math.ceil(remaining)} s to answer`;
    }
    if (state.call) $("call-duration").textContent = clock((now - state.call.connectedAt) / 1000);
  }

  function render() {
    const signedIn = !!state.presence;
    $("sign-in-panel").hidden = signedIn;
    for (const id of ["agent-panel", "offers-panel", "customer-panel"]) $(id).hidden = !signedIn;
    $("presence").textContent = signedIn ? friendly(PRESENCE, state.presence) : "—";
    $("presence").dataset.state = state.presence;
    for (const radio of document.querySelectorAll("input[name=presence]")) {
      radio.checked = radio.value === state.presence;
    }
    const shown = new Set();
    for (const item of [...$("offers").children]) {
      if (state.offers.has(item.dataset.offerId)) shown.add(item.dataset.offerId);
      else item.remove();
    }
    for (const offer of state.offers.values()) if (!shown.has(offer.offerId)) $("offers").append(offerItem(offer));
    for (const button of $("offers").querySelectorAll("button")) button.disabled = !!state.accepting || !!state.call;
    $("no-offers").hidden = state.offers.size > 0;
    $("call-panel").hidden = !state.call;
    if (state.call) {
      $("call-customer").textContent = state.call.customer || state.call.callId;
      $("call-queue").textContent = state.call.queue || "—";
      $("call-panel").dataset.callId = state.call.callId;
    }
    $("mute").setAttribute("aria-pressed", String(state.muted));
    $("mute").textContent = state.muted ? "Unmute" : "Mute";
    $("wrap-up-panel").hidden = state.presence !== "AGENT_PRESENCE_WRAP_UP";
    tick();
  }

  // --- wiring -------------------------------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("agent-id").value.trim(), $("token").value);
    });
    $("sign-out").addEventListener("click", () => state.socket && state.socket.close());
    for (const radio of document.querySelectorAll("input[name=presence]")) {
      radio.addEventListener("change", () => send({ setPresence: { presence: radio.value } }));
    }
    $("mute").addEventListener("click", () => {
      state.muted = !state.muted;
      if (state.localStream) for (const track of state.localStream.getAudioTracks()) track.enabled = !state.muted;
      render();
    });
    $("hang-up").addEventListener("click", () => state.call && send({ hangUp: { callId: state.call.callId } }));
    $("end-wrap-up").addEventListener("click", () => send({ endWrapUp: {} }));
    $("lookup").addEventListener("submit", (event) => {
      event.preventDefault();
      lookUp();
    });
    $("request-permission").addEventListener("click", requestPermission);
    $("call-back").addEventListener("click", callBack);
    setInterval(tick, 250);
    render();
  });

  // What a test (or a curious agent in the console) can read: the call's audio as the page measures it.
  window.agentPage = {
    async stats() {
      const out = {
        remoteLevel: state.remoteLevel,
        peakLevel: state.peakLevel,
        remoteHz: state.remoteHz,
        presence: state.presence,
      };
      if (!state.pc) return out;
      out.connectionState = state.pc.connectionState;
      (await state.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") out.packetsReceived = s.packetsReceived;
        if (s.type === "outbound-rtp" && s.kind === "audio") out.packetsSent = s.packetsSent;
      });
      return out;
    },
  };
})();

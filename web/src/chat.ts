// The chat client: one centrifuge-js connection (WebSocket first, HTTP streaming and SSE as
// fallbacks, reconnection and recovery by the SDK), a subscription per room plus the user's
// own channel, the REST API for pages of data, and the outbox of pending messages.

import { Centrifuge, Subscription, UnauthorizedError } from 'centrifuge';
import type { PublicationContext, SubscribedContext } from 'centrifuge';
import * as rest from './api';
import { ApiError } from './api';
import {
  getState,
  me,
  patchMessages,
  patchRoom,
  setState,
  upsertMessages,
} from './store';
import type { Markers, Message, Notification, Pending, Room, RoomEvent, SearchHit, UserEvent } from './types';

const PAGE = 50;

let client: Centrifuge | null = null;
const subs = new Map<number, Subscription>();
let userSub: Subscription | null = null;
let reconnectedTimer: ReturnType<typeof setTimeout> | undefined;

/** A readable error from an RPC rejection, a REST error or anything thrown. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e && typeof e === 'object' && 'message' in e) {
    const code = (e as { code?: number }).code;
    if (code !== undefined && code < 100) return 'No connection to the server right now. Try again in a moment.';
    return String((e as { message: unknown }).message);
  }
  return String(e);
}

/** Whether an RPC error means "never going to work" rather than "try again later". */
function permanent(e: unknown): boolean {
  if (!e || typeof e !== 'object') return false;
  const { code, temporary } = e as { code?: number; temporary?: boolean };
  return typeof code === 'number' && code >= 100 && code !== 111 && code !== 109 && !temporary;
}

function endpoints() {
  const ws = new URL('/connection/websocket', location.href);
  ws.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return [
    { transport: 'websocket' as const, endpoint: ws.href },
    { transport: 'http_stream' as const, endpoint: '/connection/http_stream' },
    { transport: 'sse' as const, endpoint: '/connection/sse' },
  ];
}

// ---------------------------------------------------------------- connection

export function start() {
  stop();
  const session = getState().session;
  if (!session) return;
  loadPending();
  const c = new Centrifuge(endpoints(), {
    emulationEndpoint: '/emulation',
    // The access token is the connection token; a fresh one for each (re)connect, and the
    // SDK asks again before it expires.
    getToken: async () => {
      try {
        return await rest.accessToken();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) throw new UnauthorizedError(e.message);
        throw e;
      }
    },
  });
  client = c;
  // For the browser tests and for debugging from the console: the live client.
  (window as unknown as { hubbub?: unknown }).hubbub = { client: c, subscriptions: subs };
  c.on('connecting', () => {
    const s = getState();
    setState({ conn: s.everConnected ? 'offline' : 'connecting' });
  });
  c.on('connected', (ctx) => {
    refreshedToken = false;
    reauthTries = 0;
    const s = getState();
    clearTimeout(reconnectedTimer);
    if (s.everConnected && s.conn !== 'connected') {
      setState({ conn: 'reconnected', transport: ctx.transport });
      reconnectedTimer = setTimeout(() => {
        if (getState().conn === 'reconnected') setState({ conn: 'connected' });
      }, 4000);
    } else {
      setState({ conn: 'connected', transport: ctx.transport, everConnected: true });
    }
    const wasConnected = s.everConnected;
    setState({ everConnected: true });
    flushOutbox();
    markAllDelivered();
    // Presence and receipts are not replayed by recovery: read them again.
    if (wasConnected) void loadRooms();
  });
  c.on('disconnected', (ctx) => {
    setState({ conn: 'offline' });
    if (!rest.currentSession()) {
      // Refreshing was refused (getToken threw): log in again.
      endSession();
    } else if (AUTH_FAILURES.includes(ctx.code)) {
      void reauthenticate(c);
    }
  });

  userSub = c.newSubscription(`user#${session.user.id}`);
  userSub.on('publication', (ctx) => onUserEvent(ctx.data as UserEvent));
  userSub.on('subscribed', (ctx) => {
    // Notifications and unread counts may have changed while we were away.
    if (!ctx.recovered) {
      void loadRooms();
      void loadNotifications();
    }
  });
  userSub.subscribe();
  c.connect();
  void loadRooms();
  void loadNotifications();
}

/** Disconnect codes meaning the server refused the connection token (3500 invalid, for
 * example signed with a secret the server no longer has; 3005 expired). */
const AUTH_FAILURES = [3500, 3005];
/** Whether the token of the current attempt is fresh from a refresh since the last connect. */
let refreshedToken = false;
let reauthTries = 0;
let reauthTimer: ReturnType<typeof setTimeout> | undefined;

/** The server refused the connection token, but we may hold a valid refresh token (a restart
 * with a new secret refuses every access token, never the refresh tokens it stores): get a
 * fresh access token and connect again. The session ends ("You are logged out") only when
 * the refresh token is refused, or a token fresh from a refresh is refused as well. */
async function reauthenticate(c: Centrifuge) {
  if (refreshedToken) {
    endSession();
    return;
  }
  try {
    await rest.refresh();
  } catch (e) {
    if (client !== c) return;
    if (!rest.currentSession() || (e instanceof ApiError && e.status === 401)) {
      endSession();
      return;
    }
    // The server cannot be reached right now: try again later, backing off as the SDK does.
    reauthTries += 1;
    const delay = Math.min(30_000, 500 * 2 ** Math.min(reauthTries, 6));
    reauthTimer = setTimeout(() => {
      if (client === c) void reauthenticate(c);
    }, delay);
    return;
  }
  if (client !== c) return;
  refreshedToken = true;
  c.setToken(''); // the next attempt asks getToken, which now has the fresh token
  c.connect();
}

export function stop() {
  clearTimeout(reconnectedTimer);
  clearTimeout(reauthTimer);
  refreshedToken = false;
  reauthTries = 0;
  if (client) {
    client.removeAllListeners();
    client.disconnect();
  }
  client = null;
  subs.clear();
  userSub = null;
}

function endSession() {
  stop();
  rest.sessionEnded();
}

export async function logout() {
  stop();
  await rest.logout();
}

function connected(): boolean {
  return client !== null && client.state === 'connected';
}

async function rpc<T>(method: string, data: unknown): Promise<T> {
  if (!client) throw new ApiError(0, 'network', 'Not connected.');
  const res = await client.rpc(method, data);
  return res.data as T;
}

// ---------------------------------------------------------------- rooms

let roomsLoading: Promise<void> | null = null;
let roomsAgain = false;

/** Loads the room list (again) and subscribes to every room. Calls overlapping one run coalesce. */
export function loadRooms(): Promise<void> {
  if (roomsLoading) {
    roomsAgain = true;
    return roomsLoading;
  }
  roomsLoading = (async () => {
    do {
      roomsAgain = false;
      try {
        const list = await rest.api<Room[]>('GET', '/api/rooms');
        setState((s) => {
          const rooms: Record<number, Room> = {};
          for (const r of list) rooms[r.id] = mergeRoom(s.rooms[r.id], r);
          const typing = { ...s.typing };
          const gone = Object.keys(s.rooms)
            .map(Number)
            .filter((id) => !rooms[id]);
          for (const id of gone) delete typing[id];
          // The open room stays open even if it is not listed: the page says why (probeRoom).
          return { rooms, roomsLoaded: true, roomsError: undefined, typing };
        });
        syncSubscriptions();
        markAllDelivered();
      } catch (e) {
        setState({ roomsError: errorText(e), roomsLoaded: true });
      }
    } while (roomsAgain);
  })().finally(() => {
    roomsLoading = null;
  });
  return roomsLoading;
}

/** A fresh summary over the one we have: markers only move forward (a receipt may have arrived
 * while the request was on its way). */
function mergeRoom(old: Room | undefined, fresh: Room): Room {
  if (!old) return fresh;
  return {
    ...fresh,
    last_seq: Math.max(old.last_seq, fresh.last_seq),
    last_message:
      old.last_message && (!fresh.last_message || old.last_message.seq > fresh.last_message.seq)
        ? old.last_message
        : fresh.last_message,
    members: fresh.members.map((m) => {
      const o = old.members.find((x) => x.id === m.id);
      return o ? { ...m, delivered_seq: Math.max(o.delivered_seq, m.delivered_seq), read_seq: Math.max(o.read_seq, m.read_seq) } : m;
    }),
  };
}

/** One room's summary again (members, markers, unread). */
async function loadRoom(id: number) {
  try {
    const room = await rest.api<Room>('GET', `/api/rooms/${id}`);
    setState((s) => ({ rooms: { ...s.rooms, [id]: mergeRoom(s.rooms[id], room) } }));
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 404)) removeRoom(id);
  }
}

const probing = new Set<number>();

/** A room opened by address that is not in the list: join its view if we are a member (say,
 * just invited), else keep the server's reason to show. */
export async function probeRoom(id: number) {
  if (probing.has(id)) return;
  probing.add(id);
  try {
    const room = await rest.api<Room>('GET', `/api/rooms/${id}`);
    setState((s) => ({ rooms: { ...s.rooms, [id]: room }, roomProblem: null }));
    syncSubscriptions();
  } catch (e) {
    setState({ roomProblem: { room: id, message: errorText(e) } });
  } finally {
    probing.delete(id);
  }
}

function removeRoom(id: number) {
  const sub = subs.get(id);
  if (sub && client) {
    sub.removeAllListeners();
    client.removeSubscription(sub);
  }
  subs.delete(id);
  setState((s) => {
    const rooms = { ...s.rooms };
    delete rooms[id];
    return { rooms, activeRoom: s.activeRoom === id ? null : s.activeRoom };
  });
}

function syncSubscriptions() {
  const c = client;
  if (!c) return;
  const rooms = getState().rooms;
  for (const [id, sub] of subs) {
    if (!rooms[id]) {
      sub.removeAllListeners();
      c.removeSubscription(sub);
      subs.delete(id);
    }
  }
  for (const room of Object.values(rooms)) {
    if (subs.has(room.id)) continue;
    const existing = c.getSubscription(room.channel);
    const sub = existing ?? c.newSubscription(room.channel, { recoverable: true, positioned: true });
    const id = room.id;
    sub.on('publication', (ctx) => onRoomEvent(id, ctx));
    sub.on('subscribed', (ctx) => onRoomSubscribed(id, ctx));
    sub.on('unsubscribed', (ctx) => {
      // Refused for good (no longer a member): the room list tells what is left.
      if (ctx.code >= 100) void loadRooms();
    });
    subs.set(id, sub);
    sub.subscribe();
  }
}

function onRoomSubscribed(id: number, ctx: SubscribedContext) {
  if (ctx.recovered) return; // The SDK delivers exactly what was missed, in order.
  // First subscription, or the position could not be recovered: load the room's state from
  // REST. Everything published from now on arrives on the subscription, so nothing falls
  // between the two.
  void loadRoom(id);
  const m = getState().messages[id];
  if (m && (m.loaded || m.list.length > 0)) void loadLatest(id, true);
}

function onRoomEvent(roomId: number, ctx: PublicationContext) {
  const ev = ctx.data as RoomEvent;
  const myId = me();
  switch (ev.type) {
    case 'message': {
      const msg = ev.message;
      const s = getState();
      patchMessages(roomId, (m) => ({ list: upsertMessages(m.list, [msg]) }));
      patchRoom(roomId, (r) => ({
        last_message: msg,
        last_seq: Math.max(r.last_seq, ctx.offset ?? msg.seq),
      }));
      if (msg.sender_id === myId) {
        dropPending(msg.client_msg_id);
      } else {
        const typing = s.typing[roomId];
        if (typing && typing[msg.sender_id]) {
          const t = { ...typing };
          delete t[msg.sender_id];
          setState((st) => ({ typing: { ...st.typing, [roomId]: t } }));
        }
        queueMark(roomId, { delivered: msg.seq });
      }
      break;
    }
    case 'edit':
    case 'delete':
    case 'reaction': {
      const msg = ev.message;
      patchMessages(roomId, (m) =>
        m.list.some((x) => x.seq === msg.seq) ? { list: upsertMessages(m.list, [msg]) } : {},
      );
      patchRoom(roomId, (r) => ({
        last_message: r.last_message && r.last_message.seq === msg.seq ? msg : r.last_message,
        last_seq: Math.max(r.last_seq, ctx.offset ?? 0),
      }));
      setState((s) => {
        const key = `${roomId}:${msg.seq}`;
        return key in s.quotes ? { quotes: { ...s.quotes, [key]: msg } } : {};
      });
      break;
    }
    case 'room_updated': {
      if (!ev.member_ids.includes(myId)) {
        removeRoom(roomId);
        break;
      }
      const room = getState().rooms[roomId];
      patchRoom(roomId, (r) => ({
        name: ev.room.name,
        last_seq: Math.max(r.last_seq, ctx.offset ?? 0),
      }));
      const known = room ? room.members.map((m) => m.id).sort().join(',') : '';
      if (known !== [...ev.member_ids].sort().join(',')) void loadRoom(roomId);
      break;
    }
    case 'typing': {
      if (ev.user_id === myId) break;
      const until = Date.now() + (ev.expires_ms || 5000);
      setState((s) => ({
        typing: { ...s.typing, [roomId]: { ...(s.typing[roomId] ?? {}), [ev.user_id]: { username: ev.username, until } } },
      }));
      scheduleTypingSweep();
      break;
    }
    case 'receipt':
      applyMarkers(roomId, ev.user_id, ev.delivered_seq, ev.read_seq);
      break;
    case 'presence':
      setState((s) => {
        const rooms = { ...s.rooms };
        for (const r of Object.values(rooms)) {
          if (r.members.some((m) => m.id === ev.user_id)) {
            rooms[r.id] = {
              ...r,
              members: r.members.map((m) =>
                m.id === ev.user_id ? { ...m, online: ev.online, last_seen: ev.last_seen } : m,
              ),
            };
          }
        }
        return { rooms };
      });
      break;
  }
}

function applyMarkers(roomId: number, userId: number, delivered: number, read: number) {
  patchRoom(roomId, (r) => ({
    members: r.members.map((m) =>
      m.id === userId
        ? { ...m, delivered_seq: Math.max(m.delivered_seq, delivered), read_seq: Math.max(m.read_seq, read) }
        : m,
    ),
  }));
}

let typingSweep: ReturnType<typeof setTimeout> | undefined;
function scheduleTypingSweep() {
  clearTimeout(typingSweep);
  const s = getState();
  let next = Infinity;
  const now = Date.now();
  let changed = false;
  const typing: typeof s.typing = {};
  for (const [room, people] of Object.entries(s.typing)) {
    const keep: Record<number, { username: string; until: number }> = {};
    for (const [uid, t] of Object.entries(people)) {
      if (t.until > now) {
        keep[Number(uid)] = t;
        next = Math.min(next, t.until);
      } else changed = true;
    }
    typing[Number(room)] = keep;
  }
  if (changed) setState({ typing });
  if (next !== Infinity) typingSweep = setTimeout(scheduleTypingSweep, next - now + 20);
}

function onUserEvent(ev: UserEvent) {
  const s = getState();
  switch (ev.type) {
    case 'message': {
      const room = s.rooms[ev.room_id];
      if (!room) {
        void loadRooms(); // A new conversation, e.g. someone opened a DM with us.
        break;
      }
      const mine = room.members.find((m) => m.id === me());
      // Counted before we read it (the notice can overtake our own read marker).
      if (mine && ev.seq <= mine.read_seq) break;
      patchRoom(ev.room_id, () => ({ unread: ev.unread }));
      break;
    }
    case 'unread':
      patchRoom(ev.room_id, () => ({ unread: ev.unread }));
      break;
    case 'notification': {
      const n = ev.notification;
      setState((st) => ({
        notifications: [n, ...st.notifications.filter((x) => x.id !== n.id)],
      }));
      if (n.kind === 'invite' || (n.room_id !== null && !s.rooms[n.room_id])) void loadRooms();
      break;
    }
  }
}

// ---------------------------------------------------------------- markers

const markQueue = new Map<number, { delivered?: number; read?: number }>();
let markTimer: ReturnType<typeof setTimeout> | undefined;

function queueMark(roomId: number, m: { delivered?: number; read?: number }) {
  const cur = markQueue.get(roomId) ?? {};
  if (m.delivered !== undefined) cur.delivered = Math.max(cur.delivered ?? 0, m.delivered);
  if (m.read !== undefined) {
    cur.read = Math.max(cur.read ?? 0, m.read);
    cur.delivered = Math.max(cur.delivered ?? 0, m.read);
  }
  markQueue.set(roomId, cur);
  clearTimeout(markTimer);
  markTimer = setTimeout(flushMarks, 150);
}

async function flushMarks() {
  if (!connected()) return; // Marked again after the reconnect.
  const batch = [...markQueue.entries()];
  markQueue.clear();
  for (const [roomId, m] of batch) {
    const room = getState().rooms[roomId];
    const mine = room?.members.find((x) => x.id === me());
    if (!room || !mine) continue;
    const req: { room_id: number; delivered_seq?: number; read_seq?: number } = { room_id: roomId };
    if (m.delivered !== undefined && m.delivered > mine.delivered_seq) req.delivered_seq = m.delivered;
    if (m.read !== undefined && m.read > mine.read_seq) req.read_seq = m.read;
    if (req.delivered_seq === undefined && req.read_seq === undefined) continue;
    try {
      const res = await rpc<Markers>('chat.mark', req);
      applyMarkers(roomId, res.user_id, res.delivered_seq, res.read_seq);
      if (req.read_seq !== undefined) patchRoom(roomId, () => ({ unread: 0 }));
    } catch {
      // Not fatal: the next event or reconnect marks again.
    }
  }
}

/** Everything the room list says exists has reached this device. */
function markAllDelivered() {
  const s = getState();
  for (const room of Object.values(s.rooms)) {
    const mine = room.members.find((m) => m.id === me());
    if (mine && mine.delivered_seq < room.last_seq) queueMark(room.id, { delivered: room.last_seq });
  }
}

/** The user has seen the room up to its latest event. */
export function markRead(roomId: number) {
  const room = getState().rooms[roomId];
  const mine = room?.members.find((m) => m.id === me());
  if (!room || !mine) return;
  if (mine.read_seq < room.last_seq || room.unread > 0) queueMark(roomId, { read: room.last_seq });
}

// ---------------------------------------------------------------- messages

const latest = new Map<number, Promise<void>>();

/** The newest page of a room's messages; `replace` drops what was loaded (after lost recovery). */
export function loadLatest(roomId: number, replace = false): Promise<void> {
  const running = latest.get(roomId);
  if (running && !replace) return running;
  const p = fetchLatest(roomId, replace).finally(() => {
    if (latest.get(roomId) === p) latest.delete(roomId);
  });
  latest.set(roomId, p);
  return p;
}

async function fetchLatest(roomId: number, replace: boolean) {
  patchMessages(roomId, () => ({ loading: true, error: undefined }));
  try {
    const page = await rest.api<Message[]>('GET', `/api/rooms/${roomId}/messages?limit=${PAGE}`);
    patchMessages(roomId, (m) => {
      // A reload after lost recovery replaces the list; otherwise what arrived live stays.
      const newest = page.length ? page[page.length - 1].seq : 0;
      const base = replace ? m.list.filter((x) => x.seq > newest) : m.list;
      const list = upsertMessages(base, page);
      const oldestLoaded = m.loaded && !replace ? m.hasMore : page.length === PAGE;
      return { list, loaded: true, loading: false, hasMore: oldestLoaded };
    });
  } catch (e) {
    patchMessages(roomId, () => ({ loading: false, error: errorText(e) }));
  }
}

const older = new Map<number, Promise<void>>();

/** The page of messages before the oldest one shown. */
export function loadOlder(roomId: number): Promise<void> {
  const running = older.get(roomId);
  if (running) return running;
  const m = getState().messages[roomId];
  if (!m || !m.hasMore || m.list.length === 0) return Promise.resolve();
  const before = m.list[0].seq;
  patchMessages(roomId, () => ({ loading: true, error: undefined }));
  const p = rest
    .api<Message[]>('GET', `/api/rooms/${roomId}/messages?before=${before}&limit=${PAGE}`)
    .then((page) => {
      patchMessages(roomId, (cur) => ({
        list: upsertMessages(cur.list, page),
        hasMore: page.length === PAGE,
        loading: false,
      }));
    })
    .catch((e) => patchMessages(roomId, () => ({ loading: false, error: errorText(e) })))
    .finally(() => older.delete(roomId));
  older.set(roomId, p);
  return p;
}

export async function openRoom(roomId: number | null, focusSeq?: number) {
  setState({
    activeRoom: roomId,
    panel: null,
    editing: null,
    focusSeq: roomId !== null && focusSeq !== undefined ? { room: roomId, seq: focusSeq } : null,
  });
  const path = roomId === null ? '/' : `/rooms/${roomId}`;
  if (location.pathname !== path) history.pushState(null, '', path);
  if (roomId === null) return;
  const m = getState().messages[roomId];
  if (!m || !m.loaded) await loadLatest(roomId);
  if (focusSeq !== undefined) {
    // Page back until the message is there (search hits and notifications can be old).
    for (let i = 0; i < 40; i++) {
      const cur = getState().messages[roomId];
      if (!cur || cur.list.length === 0 || cur.list[0].seq <= focusSeq || !cur.hasMore) break;
      await loadOlder(roomId);
    }
    setState({ focusSeq: { room: roomId, seq: focusSeq } });
  }
}

/** The message a reply quotes, from what is loaded or else from the server. */
export async function loadQuote(roomId: number, seq: number) {
  const key = `${roomId}:${seq}`;
  if (key in getState().quotes) return;
  setState((s) => ({ quotes: { ...s.quotes, [key]: null } }));
  try {
    const page = await rest.api<Message[]>('GET', `/api/rooms/${roomId}/messages?before=${seq + 1}&limit=1`);
    const msg = page.find((m) => m.seq === seq);
    if (msg) setState((s) => ({ quotes: { ...s.quotes, [key]: msg } }));
  } catch {
    // The quote stays a placeholder.
  }
}

// ---------------------------------------------------------------- outbox

function pendingKey(): string {
  return `hubbub.pending.${me()}`;
}

function loadPending() {
  let list: Pending[] = [];
  try {
    list = JSON.parse(localStorage.getItem(pendingKey()) ?? '[]') as Pending[];
  } catch {
    list = [];
  }
  // Whatever was in flight when the page closed is simply pending again.
  setState({ pending: list.map((p) => (p.state === 'sending' ? { ...p, state: 'pending' } : p)) });
}

function savePending(list: Pending[]) {
  setState({ pending: list });
  try {
    if (list.length) localStorage.setItem(pendingKey(), JSON.stringify(list));
    else localStorage.removeItem(pendingKey());
  } catch {
    // Kept in memory.
  }
}

function updatePending(id: string, patch: Partial<Pending>) {
  savePending(getState().pending.map((p) => (p.client_msg_id === id ? { ...p, ...patch } : p)));
}

function dropPending(id: string) {
  const list = getState().pending;
  if (list.some((p) => p.client_msg_id === id)) savePending(list.filter((p) => p.client_msg_id !== id));
}

function newId(): string {
  if (typeof crypto !== 'undefined' && 'randomUUID' in crypto) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/** Queues a message; it is sent now if connected, or as soon as the connection is back. */
export function send(roomId: number, text: string, replyTo: number | null) {
  const p: Pending = {
    client_msg_id: newId(),
    room_id: roomId,
    text,
    reply_to: replyTo,
    created_at: Date.now(),
    state: 'pending',
  };
  savePending([...getState().pending, p]);
  flushOutbox();
}

let flushing = false;
let flushAgain = false;
let retryTimer: ReturnType<typeof setTimeout> | undefined;

/** Sends pending messages in the order written, one at a time, each with its client_msg_id: a
 * retry after a lost answer returns the original message instead of a second copy. */
export async function flushOutbox() {
  if (flushing) {
    flushAgain = true;
    return;
  }
  flushing = true;
  try {
    do {
      flushAgain = false;
      for (const p of getState().pending) {
        if (!connected()) return;
        const cur = getState().pending.find((x) => x.client_msg_id === p.client_msg_id);
        if (!cur || cur.state === 'failed') continue;
        updatePending(p.client_msg_id, { state: 'sending' });
        try {
          const msg = await rpc<Message>('chat.send', {
            room_id: p.room_id,
            text: p.text,
            client_msg_id: p.client_msg_id,
            ...(p.reply_to !== null ? { reply_to: p.reply_to } : {}),
          });
          patchMessages(p.room_id, (m) => ({ list: upsertMessages(m.list, [msg]) }));
          patchRoom(p.room_id, (r) => ({
            last_message: r.last_message && r.last_message.seq > msg.seq ? r.last_message : msg,
            last_seq: Math.max(r.last_seq, msg.seq),
          }));
          dropPending(p.client_msg_id);
        } catch (e) {
          if (permanent(e)) {
            updatePending(p.client_msg_id, { state: 'failed', error: errorText(e) });
          } else {
            updatePending(p.client_msg_id, { state: 'pending' });
            // Lost connection or a timeout: the next 'connected' flushes; retry anyway soon.
            clearTimeout(retryTimer);
            retryTimer = setTimeout(flushOutbox, 3000);
            return;
          }
        }
      }
    } while (flushAgain);
  } finally {
    flushing = false;
  }
}

export function discardPending(id: string) {
  dropPending(id);
}

export function retryPending(id: string) {
  updatePending(id, { state: 'pending', error: undefined });
  flushOutbox();
}

// ---------------------------------------------------------------- message actions

async function call<T>(method: string, data: Record<string, unknown>, restCall: () => Promise<T>): Promise<T> {
  // Over the real-time connection when it is up; else REST (which still works when only the
  // streaming transports are down).
  return connected() ? rpc<T>(method, data) : restCall();
}

export async function edit(roomId: number, seq: number, text: string) {
  const msg = await call<Message>('chat.edit', { room_id: roomId, seq, text }, () =>
    rest.api('PATCH', `/api/rooms/${roomId}/messages/${seq}`, { text }),
  );
  patchMessages(roomId, (m) => ({ list: upsertMessages(m.list, [msg]) }));
}

export async function remove(roomId: number, seq: number) {
  const msg = await call<Message>('chat.delete', { room_id: roomId, seq }, () =>
    rest.api('DELETE', `/api/rooms/${roomId}/messages/${seq}`),
  );
  patchMessages(roomId, (m) => ({ list: upsertMessages(m.list, [msg]) }));
}

export async function react(roomId: number, seq: number, emoji: string, add: boolean) {
  const msg = await call<Message>('chat.react', { room_id: roomId, seq, emoji, add }, () =>
    add
      ? rest.api('POST', `/api/rooms/${roomId}/messages/${seq}/reactions`, { emoji })
      : rest.api('DELETE', `/api/rooms/${roomId}/messages/${seq}/reactions/${encodeURIComponent(emoji)}`),
  );
  patchMessages(roomId, (m) => ({ list: upsertMessages(m.list, [msg]) }));
}

const lastTyping = new Map<number, number>();
const trailingTyping = new Map<number, ReturnType<typeof setTimeout>>();
/** The server forwards one typing event per user and room every 2 s and drops the rest. */
const TYPING_EVERY = 2100;

/** Tells the room we are typing: at once, or, within the server's throttle interval, as soon as
 * it allows, if `still()` says the person is still typing then. */
export function typing(roomId: number, still: () => boolean) {
  if (!connected()) return;
  const now = Date.now();
  const wait = (lastTyping.get(roomId) ?? 0) + TYPING_EVERY - now;
  if (wait <= 0) {
    lastTyping.set(roomId, now);
    rpc('chat.typing', { room_id: roomId }).catch(() => lastTyping.delete(roomId));
    return;
  }
  if (trailingTyping.has(roomId)) return;
  trailingTyping.set(
    roomId,
    setTimeout(() => {
      trailingTyping.delete(roomId);
      if (still()) typing(roomId, still);
    }, wait),
  );
}

// ---------------------------------------------------------------- rooms: create, invite, DM

export async function createRoom(name: string): Promise<Room> {
  const room = await rest.api<Room>('POST', '/api/rooms', { name });
  setState((s) => ({ rooms: { ...s.rooms, [room.id]: room } }));
  syncSubscriptions();
  return room;
}

export async function invite(roomId: number, username: string): Promise<Room> {
  const room = await rest.api<Room>('POST', `/api/rooms/${roomId}/members`, { username });
  setState((s) => ({ rooms: { ...s.rooms, [room.id]: room } }));
  return room;
}

export async function openDm(username: string): Promise<Room> {
  const room = await rest.api<Room>('POST', '/api/dms', { username });
  setState((s) => ({ rooms: { ...s.rooms, [room.id]: room } }));
  syncSubscriptions();
  return room;
}

export async function leaveRoom(roomId: number) {
  await rest.api('DELETE', `/api/rooms/${roomId}/members/me`);
  removeRoom(roomId);
  history.pushState(null, '', '/');
}

// ---------------------------------------------------------------- search, notifications

export function search(q: string): Promise<SearchHit[]> {
  return rest.api<SearchHit[]>('GET', `/api/search?q=${encodeURIComponent(q)}&limit=30`);
}

export async function loadNotifications() {
  try {
    const list = await rest.api<Notification[]>('GET', '/api/notifications?limit=50');
    setState({ notifications: list, notificationsLoaded: true });
  } catch {
    setState({ notificationsLoaded: true });
  }
}

export async function readNotifications(ids: number[]) {
  setState((s) => ({
    notifications: s.notifications.map((n) => (ids.length === 0 || ids.includes(n.id) ? { ...n, read: true } : n)),
  }));
  try {
    await rest.api('POST', '/api/notifications/read', { ids });
  } catch {
    // Shown read here; the server catches up on the next load.
  }
}

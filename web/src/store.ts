// The application state: one immutable object, replaced on every change; components read it
// with useStore() and re-render when it changes.

import { useEffect, useState } from 'preact/hooks';
import type { Message, Notification, Pending, Room, StoredSession } from './types';

export type Conn = 'connecting' | 'connected' | 'offline' | 'reconnected';

export interface RoomMessages {
  /** Oldest first, by seq. */
  list: Message[];
  /** Older messages exist on the server. */
  hasMore: boolean;
  loading: boolean;
  loaded: boolean;
  error?: string;
}

export interface Typist {
  username: string;
  until: number;
}

export type Panel = null | 'notifications' | 'newRoom' | 'newDm' | 'invite' | 'account';

export interface State {
  session: StoredSession | null;
  conn: Conn;
  /** The transport in use: websocket, http_stream or sse. */
  transport: string;
  /** True once the first connection succeeded (so a later loss is "offline", not "connecting"). */
  everConnected: boolean;
  roomsLoaded: boolean;
  roomsError?: string;
  rooms: Record<number, Room>;
  messages: Record<number, RoomMessages>;
  pending: Pending[];
  typing: Record<number, Record<number, Typist>>;
  activeRoom: number | null;
  /** A message to scroll to and highlight (from search or a notification). */
  focusSeq: { room: number; seq: number } | null;
  notifications: Notification[];
  notificationsLoaded: boolean;
  panel: Panel;
  search: string;
  replyTo: Record<number, number | null>;
  editing: { room: number; seq: number } | null;
  drafts: Record<number, string>;
  /** Messages quoted by replies but not loaded, by "room:seq" (null while loading). */
  quotes: Record<string, Message | null>;
  /** Why the room in the address cannot be shown (the server's words). */
  roomProblem: { room: number; message: string } | null;
}

export const initial = (session: StoredSession | null): State => ({
  session,
  conn: 'connecting',
  transport: '',
  everConnected: false,
  roomsLoaded: false,
  rooms: {},
  messages: {},
  pending: [],
  typing: {},
  activeRoom: null,
  focusSeq: null,
  notifications: [],
  notificationsLoaded: false,
  panel: null,
  search: '',
  replyTo: {},
  editing: null,
  drafts: {},
  quotes: {},
  roomProblem: null,
});

let state: State = initial(null);
const subscribers = new Set<() => void>();
let scheduled = false;

export function getState(): State {
  return state;
}

/** Applies a change; subscribers hear of it once per microtask, however many changes. */
export function setState(update: Partial<State> | ((s: State) => Partial<State>)) {
  const patch = typeof update === 'function' ? update(state) : update;
  state = { ...state, ...patch };
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      subscribers.forEach((s) => s());
    });
  }
}

export function useStore(): State {
  const [, setTick] = useState(0);
  useEffect(() => {
    const s = () => setTick((t) => t + 1);
    subscribers.add(s);
    return () => {
      subscribers.delete(s);
    };
  }, []);
  return state;
}

// ---- helpers over the state ----

export function me(): number {
  return state.session?.user.id ?? 0;
}

export function roomTitle(room: Room, myId: number): string {
  if (room.kind === 'dm') {
    const other = room.members.find((m) => m.id !== myId);
    return other ? other.username : room.name || 'Direct message';
  }
  return room.name;
}

/** Inserts or replaces messages by seq, keeping the list ordered. */
export function upsertMessages(list: Message[], incoming: Message[]): Message[] {
  if (incoming.length === 0) return list;
  const bySeq = new Map<number, Message>();
  for (const m of list) bySeq.set(m.seq, m);
  for (const m of incoming) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

export function patchRoom(id: number, patch: (r: Room) => Partial<Room>) {
  setState((s) => {
    const room = s.rooms[id];
    if (!room) return {};
    return { rooms: { ...s.rooms, [id]: { ...room, ...patch(room) } } };
  });
}

export function patchMessages(id: number, patch: (m: RoomMessages) => Partial<RoomMessages>) {
  setState((s) => {
    const cur = s.messages[id] ?? { list: [], hasMore: true, loading: false, loaded: false };
    return { messages: { ...s.messages, [id]: { ...cur, ...patch(cur) } } };
  });
}

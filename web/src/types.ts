// Shapes of the chat's REST answers and channel events (docs/CHAT.md, /api/openapi.json).

export interface User {
  id: number;
  username: string;
  created_at: number;
  last_seen: number | null;
}

export interface Session {
  user: User;
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

/** The session as kept in localStorage: the expiry as a local timestamp. */
export interface StoredSession {
  user: User;
  access_token: string;
  refresh_token: string;
  /** Local ms when the access token expires. */
  expires_at: number;
  /** Lifetime of an access token, ms. */
  ttl: number;
}

export type Role = 'owner' | 'admin' | 'member';

export interface Member {
  id: number;
  username: string;
  role: Role;
  online: boolean;
  last_seen: number | null;
  delivered_seq: number;
  read_seq: number;
}

export interface Reaction {
  emoji: string;
  user_ids: number[];
}

export interface Message {
  room_id: number;
  seq: number;
  sender_id: number;
  sender: string;
  text: string;
  client_msg_id: string;
  reply_to: number | null;
  created_at: number;
  edited_at: number | null;
  deleted: boolean;
  reactions: Reaction[];
}

export interface Room {
  id: number;
  kind: 'group' | 'dm';
  name: string;
  channel: string;
  last_seq: number;
  role: Role;
  last_message: Message | null;
  unread: number;
  members: Member[];
}

export interface Markers {
  room_id: number;
  user_id: number;
  delivered_seq: number;
  read_seq: number;
}

export interface Notification {
  id: number;
  user_id: number;
  kind: string;
  room_id: number | null;
  seq: number | null;
  payload: Record<string, unknown>;
  read: boolean;
  created_at: number;
}

export interface SearchHit {
  room_id: number;
  room_name: string;
  seq: number;
  sender: string;
  snippet: string;
  created_at: number;
}

/** A message written here and not yet acknowledged by the server. */
export interface Pending {
  client_msg_id: string;
  room_id: number;
  text: string;
  reply_to: number | null;
  created_at: number;
  /** pending: waiting for a connection; sending: the RPC is in flight; failed: the server refused it. */
  state: 'pending' | 'sending' | 'failed';
  error?: string;
}

/** Events on `room:{id}`. */
export type RoomEvent =
  | { type: 'message' | 'edit' | 'delete' | 'reaction'; message: Message }
  | { type: 'room_updated'; room: { id: number; name: string; kind: string; last_seq: number }; member_ids: number[] }
  | { type: 'typing'; user_id: number; username: string; expires_ms: number }
  | { type: 'receipt'; user_id: number; delivered_seq: number; read_seq: number }
  | { type: 'presence'; user_id: number; online: boolean; last_seen: number };

/** Events on `user#{id}`. */
export type UserEvent =
  | { type: 'message'; room_id: number; seq: number; from: string; preview: string; unread: number }
  | { type: 'unread'; room_id: number; unread: number }
  | { type: 'notification'; notification: Notification };

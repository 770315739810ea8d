// The REST client and the session: access token (the connection JWT too) and the rotating
// refresh token, kept in localStorage and refreshed once for every tab at a time.

import type { Session, StoredSession } from './types';

const SESSION_KEY = 'hubbub.session';

/** An error answered by the server: `message` is written for people. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

let session: StoredSession | null = load();
const listeners = new Set<(s: StoredSession | null) => void>();

function load(): StoredSession | null {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    return raw ? (JSON.parse(raw) as StoredSession) : null;
  } catch {
    return null;
  }
}

function store(s: StoredSession | null) {
  session = s;
  try {
    if (s) localStorage.setItem(SESSION_KEY, JSON.stringify(s));
    else localStorage.removeItem(SESSION_KEY);
  } catch {
    // Private mode or a full storage: the session lives in memory only.
  }
  listeners.forEach((l) => l(s));
}

// Another tab logged out or refreshed the tokens.
if (typeof window !== 'undefined') {
  window.addEventListener('storage', (e) => {
    if (e.key !== SESSION_KEY) return;
    const next = load();
    if (!next || !session || next.user.id !== session.user.id) {
      session = next;
      listeners.forEach((l) => l(next));
    } else {
      session = next;
    }
  });
}

export function currentSession(): StoredSession | null {
  return session;
}

export function onSession(l: (s: StoredSession | null) => void): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

function adopt(s: Session): StoredSession {
  const stored: StoredSession = {
    user: s.user,
    access_token: s.access_token,
    refresh_token: s.refresh_token,
    expires_at: Date.now() + s.expires_in * 1000,
    ttl: s.expires_in * 1000,
  };
  store(stored);
  return stored;
}

async function readError(res: Response): Promise<ApiError> {
  let code = 'internal';
  let message = `The server answered ${res.status}.`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? message);
    }
  } catch {
    // Not JSON: keep the generic text.
  }
  return new ApiError(res.status, code, message);
}

async function post<T>(path: string, body: unknown, token?: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection and try again.');
  }
  if (!res.ok) throw await readError(res);
  return res.status === 204 ? (undefined as T) : ((await res.json()) as T);
}

export async function signup(username: string, password: string): Promise<StoredSession> {
  return adopt(await post<Session>('/api/auth/signup', { username, password }));
}

export async function login(username: string, password: string): Promise<StoredSession> {
  return adopt(await post<Session>('/api/auth/login', { username, password }));
}

export async function logout(): Promise<void> {
  const s = session;
  store(null);
  if (s) {
    try {
      await post('/api/auth/logout', { refresh_token: s.refresh_token });
    } catch {
      // The tokens are forgotten here either way.
    }
  }
}

/** Ends the session here because the server no longer accepts it. */
export function sessionEnded() {
  store(null);
}

let refreshing: Promise<StoredSession> | null = null;

async function doRefresh(used: string): Promise<StoredSession> {
  // Another tab may have rotated the token meanwhile: use its result, never present a used one
  // (that would revoke the whole family and log every tab out).
  const latest = load();
  if (latest && latest.refresh_token !== used) {
    session = latest;
    return latest;
  }
  try {
    return adopt(await post<Session>('/api/auth/refresh', { refresh_token: used }));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) store(null);
    throw e;
  }
}

/** Rotates the tokens: one refresh at a time in this tab, and across tabs where Web Locks exist. */
export function refresh(): Promise<StoredSession> {
  if (!session) return Promise.reject(new ApiError(401, 'unauthorized', 'Log in first.'));
  if (refreshing) return refreshing;
  const used = session.refresh_token;
  const locks = (navigator as Navigator & { locks?: LockManager }).locks;
  const run: Promise<StoredSession> = locks
    ? (locks.request('hubbub-refresh', () => doRefresh(used)) as unknown as Promise<StoredSession>)
    : doRefresh(used);
  const p = run.finally(() => {
    refreshing = null;
  });
  refreshing = p;
  return p;
}

/** An access token valid for a while more: a minute, or a quarter of its lifetime if shorter. */
export async function accessToken(): Promise<string> {
  if (!session) throw new ApiError(401, 'unauthorized', 'Log in first.');
  const margin = Math.min(60_000, (session.ttl || 900_000) / 4);
  if (session.expires_at - Date.now() > margin) return session.access_token;
  return (await refresh()).access_token;
}

/** A call of the chat's REST API with the access token, refreshed when needed. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const token = await accessToken();
    let res: Response;
    try {
      res = await fetch(path, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch {
      throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection and try again.');
    }
    if (res.status === 401 && attempt === 0) {
      // Expired early (a clock jump, a restarted server): refresh once and retry.
      await refresh();
      continue;
    }
    if (!res.ok) {
      const err = await readError(res);
      if (res.status === 401) store(null);
      throw err;
    }
    return res.status === 204 ? (undefined as T) : ((await res.json()) as T);
  }
}

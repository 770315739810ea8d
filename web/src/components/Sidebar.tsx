import { useEffect, useRef, useState } from 'preact/hooks';
import * as chat from '../chat';
import { roomTitle, setState, type State } from '../store';
import type { Room, SearchHit } from '../types';
import { shortWhen } from '../util';
import { capitalize } from './Auth';
import { Avatar } from './common';
import { Icon } from './Icon';

function lastActivity(r: Room): number {
  return r.last_message ? r.last_message.created_at : 0;
}

/** A room's presence: a DM's other person, or anyone else online in a group. */
export function roomOnline(room: Room, myId: number): boolean {
  return room.members.some((m) => m.id !== myId && m.online);
}

export function Sidebar({ s }: { s: State }) {
  const myId = s.session!.user.id;
  const unreadNotes = s.notifications.filter((n) => !n.read).length;
  const online = s.conn === 'connected' || s.conn === 'reconnected';
  const rooms = Object.values(s.rooms).sort((a, b) => lastActivity(b) - lastActivity(a) || b.id - a.id);
  const status = online ? 'Online' : s.everConnected ? 'Offline' : 'Connecting…';

  return (
    <aside class="sidebar" aria-label="Conversations">
      <header class="side-head">
        <button
          type="button"
          class="me"
          aria-label={`Your account: ${s.session!.user.username}, ${status.toLowerCase()}`}
          onClick={() => setState({ panel: 'account' })}
        >
          <Avatar name={s.session!.user.username} online={online} size={36} />
          <span class="me-text">
            <span class="me-name">{s.session!.user.username}</span>
            <span class={online ? 'me-status on' : 'me-status'} data-testid="my-presence">
              {status}
            </span>
          </span>
        </button>
        <button
          type="button"
          class="icon-btn badge-host"
          aria-label={unreadNotes ? `Notifications, ${unreadNotes} unread` : 'Notifications'}
          onClick={() => setState({ panel: 'notifications' })}
        >
          <Icon name="bell" />
          {unreadNotes > 0 && (
            <span class="badge small" aria-hidden="true">
              {unreadNotes}
            </span>
          )}
        </button>
      </header>
      <SearchBox s={s} />
      {s.search ? (
        <SearchResults q={s.search} s={s} />
      ) : (
        <>
          <div class="side-actions">
            <button type="button" class="btn small" onClick={() => setState({ panel: 'newRoom' })}>
              <Icon name="plus" size={18} /> New room
            </button>
            <button type="button" class="btn small" onClick={() => setState({ panel: 'newDm' })}>
              <Icon name="chat" size={18} /> Direct message
            </button>
          </div>
          <nav class="rooms" aria-label="Rooms">
            {s.roomsError && (
              <p class="error pad" role="alert">
                {s.roomsError}{' '}
                <button type="button" class="link" onClick={() => void chat.loadRooms()}>
                  Try again
                </button>
              </p>
            )}
            {s.roomsLoaded && rooms.length === 0 && !s.roomsError && (
              <p class="empty">No conversations yet. Create a room or send someone a direct message.</p>
            )}
            {!s.roomsLoaded && <p class="empty">Loading conversations…</p>}
            <ul>
              {rooms.map((r) => (
                <RoomItem key={r.id} room={r} myId={myId} active={s.activeRoom === r.id} s={s} />
              ))}
            </ul>
          </nav>
        </>
      )}
    </aside>
  );
}

function RoomItem({ room, myId, active, s }: { room: Room; myId: number; active: boolean; s: State }) {
  const title = roomTitle(room, myId);
  const last = room.last_message;
  // Presence is only known while we are connected ourselves.
  const live = s.conn === 'connected' || s.conn === 'reconnected';
  const online = live && roomOnline(room, myId);
  const typing = Object.values(s.typing[room.id] ?? {});
  const mine = s.pending.filter((p) => p.room_id === room.id);
  const failed = mine.filter((p) => p.state === 'failed').length;
  const waiting = mine.length - failed;
  // The open room's badge is cleared as soon as its messages are marked read.
  const unread = active && document.visibilityState === 'visible' ? 0 : room.unread;
  let preview = 'No messages yet';
  if (typing.length) preview = `${typing[0].username} is typing…`;
  else if (last) {
    const who = last.sender_id === myId ? 'You' : room.kind === 'group' ? last.sender : '';
    const text = last.deleted ? 'Message deleted' : last.text;
    preview = who ? `${who}: ${text}` : text;
  }
  const presenceText = !live ? '' : room.kind === 'dm' ? (online ? 'online' : 'offline') : online ? 'someone online' : '';
  return (
    <li>
      <a
        href={`/rooms/${room.id}`}
        class={active ? 'room active' : 'room'}
        aria-current={active ? 'page' : undefined}
        data-room={room.id}
        onClick={(e) => {
          e.preventDefault();
          void chat.openRoom(room.id);
        }}
      >
        <Avatar name={title} online={live && (room.kind === 'dm' || online) ? online : null} />
        <span class="room-main">
          <span class="room-top">
            <span class="room-name">{title}</span>
            {last && <span class="room-time">{shortWhen(last.created_at)}</span>}
          </span>
          <span class="room-bottom">
            <span class={typing.length ? 'room-preview typing-text' : 'room-preview'}>
              {failed > 0 ? `${failed} not sent · ` : ''}
              {waiting > 0 ? `${waiting} waiting to send · ` : ''}
              {preview}
            </span>
            {unread > 0 && (
              <span class="badge" data-testid="unread">
                {unread > 99 ? '99+' : unread}
                <span class="sr-only"> unread</span>
              </span>
            )}
          </span>
          {presenceText && <span class="sr-only">, {presenceText}</span>}
        </span>
      </a>
    </li>
  );
}

function SearchBox({ s }: { s: State }) {
  const [value, setValue] = useState(s.search);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => setValue(s.search), [s.search]);
  return (
    <form
      class="side-search"
      role="search"
      onSubmit={(e) => {
        e.preventDefault();
        clearTimeout(timer.current);
        setState({ search: value.trim() });
      }}
    >
      <Icon name="search" size={18} />
      <input
        type="search"
        aria-label="Search messages"
        placeholder="Search messages"
        value={value}
        onInput={(e) => {
          const v = (e.target as HTMLInputElement).value;
          setValue(v);
          clearTimeout(timer.current);
          timer.current = setTimeout(() => setState({ search: v.trim() }), 350);
        }}
        onKeyDown={(e) => {
          if (e.key === 'Escape' && value) {
            e.preventDefault();
            setValue('');
            setState({ search: '' });
          }
        }}
      />
    </form>
  );
}

/** A search snippet: the server wraps matches in [ and ]. */
function Snippet({ text }: { text: string }) {
  const parts = text.split(/(\[[^\]]*\])/g);
  return (
    <>
      {parts.map((p, i) =>
        p.startsWith('[') && p.endsWith(']') ? <mark key={i}>{p.slice(1, -1)}</mark> : <span key={i}>{p}</span>,
      )}
    </>
  );
}

function SearchResults({ q, s }: { q: string; s: State }) {
  const [hits, setHits] = useState<SearchHit[] | null>(null);
  const [error, setError] = useState('');
  useEffect(() => {
    let live = true;
    setHits(null);
    setError('');
    chat
      .search(q)
      .then((h) => live && setHits(h))
      .catch((e) => live && setError(capitalize(chat.errorText(e))));
    return () => {
      live = false;
    };
  }, [q]);
  const myId = s.session!.user.id;
  return (
    <section class="results" aria-label={`Search results for ${q}`}>
      <div class="results-head">
        <h2>Results for “{q}”</h2>
        <button type="button" class="link" onClick={() => setState({ search: '' })}>
          Clear
        </button>
      </div>
      {error && (
        <p class="error pad" role="alert">
          {error}
        </p>
      )}
      {hits === null && !error && (
        <p class="empty" role="status">
          Searching…
        </p>
      )}
      {hits && hits.length === 0 && (
        <p class="empty" role="status">
          Nothing found.
        </p>
      )}
      {hits && hits.length > 0 && (
        <ul role="list">
          {hits.map((h) => {
            const room = s.rooms[h.room_id];
            const name = room ? roomTitle(room, myId) : h.room_name || 'Direct message';
            return (
              <li key={`${h.room_id}:${h.seq}`}>
                <a
                  href={`/rooms/${h.room_id}`}
                  class="hit"
                  onClick={(e) => {
                    e.preventDefault();
                    void chat.openRoom(h.room_id, h.seq);
                  }}
                >
                  <span class="hit-top">
                    <span class="hit-room">{name}</span>
                    <span class="room-time">{shortWhen(h.created_at)}</span>
                  </span>
                  <span class="hit-text">
                    <strong>{h.sender}:</strong> <Snippet text={h.snippet} />
                  </span>
                </a>
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

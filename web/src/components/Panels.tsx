import { useState } from 'preact/hooks';
import * as chat from '../chat';
import { setState, type State } from '../store';
import type { Notification, Room } from '../types';
import { shortWhen } from '../util';
import { capitalize } from './Auth';
import { Dialog, Field } from './common';

const close = () => setState({ panel: null });

function usernames(text: string): string[] {
  return text
    .split(/[\s,;]+/)
    .map((u) => u.replace(/^@/, '').trim())
    .filter(Boolean);
}

export function NewRoomDialog() {
  const [name, setName] = useState('');
  const [people, setPeople] = useState('');
  const [room, setRoom] = useState<Room | null>(null);
  const [errors, setErrors] = useState<{ name?: string; people?: string }>({});
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    setErrors({});
    setBusy(true);
    let created = room;
    try {
      if (!created) {
        try {
          created = await chat.createRoom(name);
          setRoom(created);
        } catch (err) {
          setErrors({ name: capitalize(chat.errorText(err)) });
          return;
        }
      }
      const failed: string[] = [];
      const messages: string[] = [];
      for (const u of usernames(people)) {
        try {
          await chat.invite(created.id, u);
        } catch (err) {
          failed.push(u);
          messages.push(capitalize(chat.errorText(err)));
        }
      }
      if (failed.length) {
        setPeople(failed.join(', '));
        setErrors({ people: `${messages.join('. ')}. The room is created; fix the names or leave this empty.` });
        return;
      }
      void chat.openRoom(created.id);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Dialog title={room ? `Invite people to ${room.name}` : 'New room'} onClose={close}>
      <form onSubmit={submit} noValidate>
        {!room && <Field id="room-name" label="Room name" value={name} onInput={setName} error={errors.name} autoFocus />}
        <Field
          id="room-invite"
          label="Invite people (optional)"
          hint="Usernames, separated by commas or spaces"
          value={people}
          onInput={setPeople}
          error={errors.people}
          autoFocus={!!room}
        />
        <div class="dialog-actions">
          <button type="button" class="btn" onClick={room ? () => void chat.openRoom(room.id) : close}>
            {room ? 'Skip' : 'Cancel'}
          </button>
          <button type="submit" class="btn primary" disabled={busy}>
            {room ? 'Invite' : 'Create room'}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

export function InviteDialog({ room }: { room: Room }) {
  const [username, setUsername] = useState('');
  const [error, setError] = useState('');
  const [done, setDone] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <Dialog title={`Invite to ${room.name}`} onClose={close}>
      <form
        noValidate
        onSubmit={async (e) => {
          e.preventDefault();
          setError('');
          setDone('');
          const names = usernames(username);
          if (!names.length) {
            setError('Write the username of the person to invite.');
            return;
          }
          setBusy(true);
          const failed: string[] = [];
          const msgs: string[] = [];
          for (const u of names) {
            try {
              await chat.invite(room.id, u);
            } catch (err) {
              failed.push(u);
              msgs.push(capitalize(chat.errorText(err)));
            }
          }
          setBusy(false);
          const ok = names.filter((n) => !failed.includes(n));
          if (ok.length) setDone(`${ok.join(', ')} ${ok.length === 1 ? 'is' : 'are'} now in the room.`);
          if (failed.length) {
            setUsername(failed.join(', '));
            setError(msgs.join('. '));
          } else setUsername('');
        }}
      >
        <Field id="invite-username" label="Username to invite" value={username} onInput={setUsername} error={error} autoFocus />
        {done && (
          <p class="success" role="status">
            {done}
          </p>
        )}
        <div class="dialog-actions">
          <button type="button" class="btn" onClick={close}>
            Done
          </button>
          <button type="submit" class="btn primary" disabled={busy}>
            Invite
          </button>
        </div>
      </form>
    </Dialog>
  );
}

export function NewDmDialog() {
  const [username, setUsername] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <Dialog title="Direct message" onClose={close}>
      <form
        noValidate
        onSubmit={async (e) => {
          e.preventDefault();
          setError('');
          const name = username.trim().replace(/^@/, '');
          if (!name) {
            setError('Write the username of the person to talk to.');
            return;
          }
          setBusy(true);
          try {
            const room = await chat.openDm(name);
            void chat.openRoom(room.id);
          } catch (err) {
            setError(capitalize(chat.errorText(err)));
          } finally {
            setBusy(false);
          }
        }}
      >
        <Field id="dm-username" label="Their username" value={username} onInput={setUsername} error={error} autoFocus />
        <div class="dialog-actions">
          <button type="button" class="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" class="btn primary" disabled={busy}>
            Start conversation
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function describe(n: Notification, s: State): { title: string; body: string } {
  const p = n.payload as Record<string, string | undefined>;
  const roomName = n.room_id !== null ? s.rooms[n.room_id]?.name || p.room_name || 'a room' : '';
  if (n.kind === 'invite') return { title: `${p.by ?? 'Someone'} added you to ${p.room_name ?? roomName}`, body: '' };
  if (n.kind === 'mention')
    return { title: `${p.from ?? 'Someone'} mentioned you${roomName ? ` in ${roomName}` : ''}`, body: p.preview ?? '' };
  return { title: p.from ? `${p.from}` : n.kind, body: p.preview ?? '' };
}

export function NotificationsPanel({ s }: { s: State }) {
  const unread = s.notifications.filter((n) => !n.read);
  return (
    <Dialog title="Notifications" onClose={close} wide>
      <div class="notes-actions">
        <p class="muted small" role="status">
          {unread.length ? `${unread.length} unread` : 'All caught up'}
        </p>
        <button type="button" class="btn small" disabled={!unread.length} onClick={() => void chat.readNotifications([])}>
          Mark all as read
        </button>
      </div>
      {!s.notificationsLoaded && <p class="empty">Loading…</p>}
      {s.notificationsLoaded && s.notifications.length === 0 && (
        <p class="empty">Nothing yet. Mentions (@you) and invitations show up here.</p>
      )}
      <ul class="notes">
        {s.notifications.map((n) => {
          const d = describe(n, s);
          return (
            <li key={n.id}>
              <button
                type="button"
                class={n.read ? 'note' : 'note unread'}
                onClick={() => {
                  if (!n.read) void chat.readNotifications([n.id]);
                  if (n.room_id !== null && s.rooms[n.room_id]) void chat.openRoom(n.room_id, n.seq ?? undefined);
                  else close();
                }}
              >
                <span class="note-title">
                  {!n.read && <span class="sr-only">Unread: </span>}
                  {d.title}
                </span>
                {d.body && <span class="note-body">{d.body}</span>}
                <span class="room-time">{shortWhen(n.created_at)}</span>
              </button>
            </li>
          );
        })}
      </ul>
    </Dialog>
  );
}

export function AccountPanel({ s }: { s: State }) {
  const online = s.conn === 'connected' || s.conn === 'reconnected';
  const names: Record<string, string> = { websocket: 'WebSocket', http_stream: 'HTTP streaming', sse: 'Server-sent events' };
  return (
    <Dialog title="Your account" onClose={close}>
      <p>
        Logged in as <strong>{s.session!.user.username}</strong>.
      </p>
      <p data-testid="connection-detail">
        {online
          ? `Online: connected over ${names[s.transport] ?? s.transport}.`
          : s.everConnected
            ? 'Offline: reconnecting. What you write is kept and sent when the connection is back.'
            : 'Connecting…'}
      </p>
      {s.pending.length > 0 && <p>{s.pending.length} message(s) waiting to be sent.</p>}
      <div class="dialog-actions">
        <button type="button" class="btn" onClick={close}>
          Close
        </button>
        <button type="button" class="btn danger" onClick={() => void chat.logout()}>
          Log out
        </button>
      </div>
    </Dialog>
  );
}

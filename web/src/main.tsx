import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import * as rest from './api';
import * as chat from './chat';
import { Auth, capitalize } from './components/Auth';
import { Conversation } from './components/Conversation';
import { Icon } from './components/Icon';
import { AccountPanel, InviteDialog, NewDmDialog, NewRoomDialog, NotificationsPanel } from './components/Panels';
import { Sidebar } from './components/Sidebar';
import { getState, initial, setState, useStore, type State } from './store';
import './styles.css';

function roomFromPath(): number | null {
  const m = /^\/rooms\/(\d+)\/?$/.exec(location.pathname);
  return m ? Number(m[1]) : null;
}

function Banner({ s }: { s: State }) {
  let text = '';
  let kind = '';
  if (s.conn === 'connecting' && !s.everConnected) {
    text = 'Connecting…';
    kind = 'info';
  } else if (s.conn === 'offline' || (s.conn === 'connecting' && s.everConnected)) {
    text = 'You are offline. Reconnecting… Messages you write will be sent when the connection is back.';
    kind = 'warn';
  } else if (s.conn === 'reconnected') {
    text = 'Reconnected.';
    kind = 'ok';
  }
  return (
    <div class="banner-host" role="status" aria-live="polite">
      {text && (
        <p class={`banner ${kind}`} data-testid="connection-banner" data-state={s.conn}>
          {text}
        </p>
      )}
    </div>
  );
}

function Chat() {
  const s = useStore();
  const room = s.activeRoom !== null ? s.rooms[s.activeRoom] : undefined;
  useEffect(() => {
    if (s.activeRoom !== null && !room && s.roomsLoaded && s.roomProblem?.room !== s.activeRoom) {
      void chat.probeRoom(s.activeRoom);
    }
  }, [s.activeRoom, !!room, s.roomsLoaded]);
  useEffect(() => {
    const title = s.session ? 'Hubbub' : 'Hubbub: log in';
    const unread = Object.values(s.rooms).reduce((n, r) => n + r.unread, 0);
    document.title = unread ? `(${unread}) ${title}` : title;
  });
  return (
    <div class={s.activeRoom !== null ? 'app has-room' : 'app'} data-transport={s.transport} data-conn={s.conn}>
      <a class="skip" href="#composer">
        Skip to the message box
      </a>
      <Banner s={s} />
      <Sidebar s={s} />
      <main class="main" aria-label={room ? undefined : 'No conversation open'}>
        {room ? (
          <Conversation s={s} room={room} />
        ) : (
          <div class="placeholder">
            <Icon name="chat" size={48} />
            {s.activeRoom !== null && s.roomProblem?.room === s.activeRoom ? (
              <>
                <p class="error" role="alert">
                  {capitalize(s.roomProblem.message)}
                </p>
                <button type="button" class="btn" onClick={() => void chat.openRoom(null)}>
                  Back to conversations
                </button>
              </>
            ) : (
              <p>{s.activeRoom !== null && s.roomsLoaded ? 'Opening the conversation…' : 'Pick a conversation, or start a new one.'}</p>
            )}
          </div>
        )}
      </main>
      {s.panel === 'newRoom' && <NewRoomDialog />}
      {s.panel === 'newDm' && <NewDmDialog />}
      {s.panel === 'invite' && room && <InviteDialog room={room} />}
      {s.panel === 'notifications' && <NotificationsPanel s={s} />}
      {s.panel === 'account' && <AccountPanel s={s} />}
    </div>
  );
}

function App() {
  const [session, setSession] = useState(rest.currentSession());
  const [notice, setNotice] = useState('');
  useEffect(
    () =>
      rest.onSession((next) => {
        const prev = getState().session;
        if (!next && prev) setNotice('You are logged out. Log in again to continue.');
        if (next) setNotice('');
        if (next?.user.id !== prev?.user.id) {
          chat.stop();
          setState(initial(next));
          if (next) {
            setState({ activeRoom: roomFromPath() });
            chat.start();
          }
        } else {
          setState({ session: next });
        }
        setSession(next);
      }),
    [],
  );
  useEffect(() => {
    const onPop = () => void chat.openRoom(roomFromPath());
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, []);
  if (!session) return <Auth notice={notice} />;
  return <Chat />;
}

// Start: with a stored session the chat connects at once.
const stored = rest.currentSession();
setState(initial(stored));
if (stored) {
  setState({ activeRoom: roomFromPath() });
  chat.start();
}
render(<App />, document.getElementById('app')!);

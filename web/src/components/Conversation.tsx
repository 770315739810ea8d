import { Component, createRef } from 'preact';
import type { ComponentChildren } from 'preact';
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import * as chat from '../chat';
import { roomTitle, setState, type RoomMessages, type State } from '../store';
import type { Message, Pending, Room } from '../types';
import { dayKey, dayLabel, lastSeen } from '../util';
import { capitalize } from './Auth';
import { Avatar } from './common';
import { Icon } from './Icon';
import { MessageItem, PendingItem, QUICK_REACTIONS, type Tick } from './MessageItem';

function tickFor(msg: Message, room: Room, myId: number): Tick {
  const others = room.members.filter((m) => m.id !== myId);
  if (others.length === 0) return 'sent';
  if (others.every((m) => m.read_seq >= msg.seq)) return 'seen';
  if (others.every((m) => m.delivered_seq >= msg.seq)) return 'delivered';
  return 'sent';
}

function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

export function Conversation({ s, room }: { s: State; room: Room }) {
  const myId = s.session!.user.id;
  const title = roomTitle(room, myId);
  const others = room.members.filter((m) => m.id !== myId);
  const live = s.conn === 'connected' || s.conn === 'reconnected';
  const onlineCount = live ? others.filter((m) => m.online).length : 0;
  let subtitle: string;
  if (room.kind === 'dm') {
    const other = others[0];
    subtitle = !other ? '' : !live ? 'waiting for the connection' : other.online ? 'online' : lastSeen(other.last_seen);
  } else {
    subtitle = `${room.members.length} member${room.members.length === 1 ? '' : 's'}${
      onlineCount ? `, ${onlineCount} online` : ''
    }`;
  }
  const canInvite = room.kind === 'group' && room.role !== 'member';
  const typists = Object.values(s.typing[room.id] ?? {}).map((t) => t.username);
  const msgs = s.messages[room.id] ?? { list: [], hasMore: true, loading: false, loaded: false };
  const pending = s.pending.filter((p) => p.room_id === room.id);

  return (
    <section class="conv" aria-labelledby="conv-title">
      <header class="conv-head">
        <button type="button" class="icon-btn back" aria-label="Back to conversations" onClick={() => void chat.openRoom(null)}>
          <Icon name="back" />
        </button>
        <Avatar name={title} online={room.kind === 'dm' && live ? others[0]?.online ?? false : null} size={36} />
        <div class="conv-title">
          <h2 id="conv-title">{title}</h2>
          <p class="muted small" data-testid="room-subtitle">
            {subtitle}
          </p>
        </div>
        {canInvite && (
          <button type="button" class="btn small" onClick={() => setState({ panel: 'invite' })}>
            <Icon name="invite" size={18} /> <span class="label">Invite</span>
          </button>
        )}
        {room.kind === 'group' && <RoomMenu room={room} />}
      </header>
      <MessageList
        key={room.id}
        room={room}
        msgs={msgs}
        pending={pending}
        myId={myId}
        focusSeq={s.focusSeq && s.focusSeq.room === room.id ? s.focusSeq.seq : null}
        quotes={s.quotes}
        editingSeq={s.editing && s.editing.room === room.id ? s.editing.seq : null}
      />
      <p class="typing" aria-live="polite" data-testid="typing">
        {typingText(typists)}
      </p>
      <Composer key={room.id} s={s} room={room} />
    </section>
  );
}

function RoomMenu({ room }: { room: Room }) {
  const [open, setOpen] = useState(false);
  const [error, setError] = useState('');
  return (
    <div class="menu-host">
      <button
        type="button"
        class="icon-btn"
        aria-label="Room options"
        aria-haspopup="menu"
        aria-expanded={open}
        onClick={() => setOpen(!open)}
      >
        <Icon name="more" />
      </button>
      {open && (
        <Popover onClose={() => setOpen(false)} label="Room options" align="right">
          <button
            type="button"
            role="menuitem"
            class="menu-item danger"
            onClick={async () => {
              try {
                await chat.leaveRoom(room.id);
              } catch (e) {
                setError(capitalize(chat.errorText(e)));
              }
            }}
          >
            Leave room
          </button>
          {error && (
            <p class="error menu-error" role="alert">
              {error}
            </p>
          )}
        </Popover>
      )}
    </div>
  );
}

/** A small menu that closes on Escape or a click outside, and takes the focus when it opens. */
function Popover({
  onClose,
  label,
  children,
  align,
}: {
  onClose: () => void;
  label: string;
  children: ComponentChildren;
  align?: 'left' | 'right';
}) {
  const ref = useRef<HTMLDivElement>(null);
  // Opens upwards when there is no room below (the last messages, the bottom of the screen).
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const box = el.getBoundingClientRect();
    const limit = el.closest('.messages')?.getBoundingClientRect().bottom ?? window.innerHeight;
    if (box.bottom > limit - 4) el.classList.add('up');
  }, []);
  useEffect(() => {
    const el = ref.current;
    const first = el?.querySelector<HTMLElement>('button');
    first?.focus();
    const onDown = (e: MouseEvent) => {
      const host = el?.parentElement;
      if (host && !host.contains(e.target as Node)) onClose();
    };
    document.addEventListener('mousedown', onDown);
    return () => document.removeEventListener('mousedown', onDown);
  }, []);
  return (
    <div
      ref={ref}
      class={`popover ${align ?? 'left'}`}
      role="menu"
      aria-label={label}
      onKeyDown={(e) => {
        if (e.key === 'Escape') {
          e.preventDefault();
          e.stopPropagation();
          const opener = ref.current?.parentElement?.querySelector<HTMLElement>('[aria-haspopup]');
          onClose();
          opener?.focus();
        } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
          e.preventDefault();
          const items = [...(ref.current?.querySelectorAll<HTMLElement>('button') ?? [])];
          const i = items.indexOf(document.activeElement as HTMLElement);
          const next = items[(i + (e.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length];
          next?.focus();
        }
      }}
    >
      {children}
    </div>
  );
}

function MessageMenu({ msg, mine, myId, onClose }: { msg: Message; mine: boolean; myId: number; onClose: () => void }) {
  const [confirm, setConfirm] = useState(false);
  const [error, setError] = useState('');
  const act = async (f: () => Promise<void>) => {
    setError('');
    try {
      await f();
      onClose();
    } catch (e) {
      setError(capitalize(chat.errorText(e)));
    }
  };
  return (
    <Popover onClose={onClose} label="Message actions" align={mine ? 'right' : 'left'}>
      <div class="emoji-row" role="group" aria-label="React">
        {QUICK_REACTIONS.map((emoji) => {
          const had = msg.reactions.some((r) => r.emoji === emoji && r.user_ids.includes(myId));
          return (
            <button
              type="button"
              role="menuitem"
              key={emoji}
              class={had ? 'emoji on' : 'emoji'}
              aria-label={had ? `Remove reaction ${emoji}` : `React with ${emoji}`}
              onClick={() => act(() => chat.react(msg.room_id, msg.seq, emoji, !had))}
            >
              {emoji}
            </button>
          );
        })}
      </div>
      <button
        type="button"
        role="menuitem"
        class="menu-item"
        onClick={() => {
          setState((s) => ({ replyTo: { ...s.replyTo, [msg.room_id]: msg.seq }, editing: null }));
          onClose();
          document.getElementById('composer')?.focus();
        }}
      >
        <Icon name="reply" size={18} /> Reply
      </button>
      {mine && (
        <button
          type="button"
          role="menuitem"
          class="menu-item"
          onClick={() => {
            setState((s) => ({
              editing: { room: msg.room_id, seq: msg.seq },
              replyTo: { ...s.replyTo, [msg.room_id]: null },
            }));
            onClose();
          }}
        >
          Edit
        </button>
      )}
      {mine &&
        (confirm ? (
          <div class="confirm">
            <p>Delete this message for everyone?</p>
            <div class="row">
              <button type="button" role="menuitem" class="btn small danger" onClick={() => act(() => chat.remove(msg.room_id, msg.seq))}>
                Delete
              </button>
              <button type="button" role="menuitem" class="btn small" onClick={() => setConfirm(false)}>
                Cancel
              </button>
            </div>
          </div>
        ) : (
          <button type="button" role="menuitem" class="menu-item danger" onClick={() => setConfirm(true)}>
            Delete
          </button>
        ))}
      {error && (
        <p class="error menu-error" role="alert">
          {error}
        </p>
      )}
    </Popover>
  );
}

interface ListProps {
  room: Room;
  msgs: RoomMessages;
  pending: Pending[];
  myId: number;
  focusSeq: number | null;
  quotes: State['quotes'];
  editingSeq: number | null;
}

interface ListState {
  menu: number | null;
  highlight: number | null;
  /** The first unread message when the room was opened (for the "New messages" line). */
  firstUnread: number | null;
  showJump: boolean;
  reactError: string;
}

function firstSeq(p: ListProps): number | null {
  return p.msgs.list.length ? p.msgs.list[0].seq : null;
}

interface Snapshot {
  scrollHeight: number;
  scrollTop: number;
  atBottom: boolean;
  firstSeq: number | null;
}

/** The scrolling list of messages. Keeps the view still when older pages are added above, and
 * follows new messages only when already at the bottom (no jump while reading history). */
class MessageList extends Component<ListProps, ListState> {
  scroller = createRef<HTMLDivElement>();
  atBottom = true;
  resize?: ResizeObserver;
  onVisible = () => this.maybeMarkRead();

  constructor(props: ListProps) {
    super(props);
    const mine = props.room.members.find((m) => m.id === props.myId);
    this.state = {
      menu: null,
      highlight: null,
      firstUnread: props.room.unread > 0 && mine ? mine.read_seq + 1 : null,
      showJump: false,
      reactError: '',
    };
  }

  componentDidMount() {
    const m = this.props.msgs;
    if (!m.loaded) void chat.loadLatest(this.props.room.id);
    this.toBottom();
    const el = this.scroller.current!;
    // The list's box changes when the composer grows or the window resizes: stay at the bottom.
    this.resize = new ResizeObserver(() => {
      if (this.atBottom) this.toBottom();
    });
    this.resize.observe(el);
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('focus', this.onVisible);
    this.afterRender();
  }

  componentWillUnmount() {
    this.resize?.disconnect();
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('focus', this.onVisible);
  }

  // Called with the new props already in this.props and the DOM not yet updated.
  getSnapshotBeforeUpdate(prev: ListProps): Snapshot {
    const el = this.scroller.current!;
    return {
      scrollHeight: el.scrollHeight,
      scrollTop: el.scrollTop,
      atBottom: this.atBottom,
      firstSeq: firstSeq(prev),
    };
  }

  componentDidUpdate(_p: ListProps, _s: ListState, snap: Snapshot) {
    const el = this.scroller.current!;
    const first = firstSeq(this.props);
    if (snap.firstSeq !== null && first !== null && first < snap.firstSeq && !snap.atBottom) {
      // Older messages were added above: keep what the reader sees where it was.
      el.scrollTop = snap.scrollTop + (el.scrollHeight - snap.scrollHeight);
    } else if (snap.atBottom) {
      this.toBottom();
    }
    this.afterRender();
  }

  afterRender() {
    const { focusSeq, room } = this.props;
    if (focusSeq !== null && this.state.highlight !== focusSeq) {
      const target = document.getElementById(`msg-${room.id}-${focusSeq}`);
      if (target) {
        target.scrollIntoView({ block: 'center' });
        this.atBottom = false;
        this.setState({ highlight: focusSeq });
        setTimeout(() => {
          setState({ focusSeq: null });
          this.setState({ highlight: null });
        }, 2500);
      }
    }
    // Quotes of replies to messages not loaded.
    const loaded = new Set(this.props.msgs.list.map((m) => m.seq));
    for (const m of this.props.msgs.list) {
      if (m.reply_to !== null && !loaded.has(m.reply_to) && !(`${room.id}:${m.reply_to}` in this.props.quotes)) {
        void chat.loadQuote(room.id, m.reply_to);
      }
    }
    this.fillViewport();
    this.maybeMarkRead();
  }

  /** Loads older pages while the list does not fill its box (nothing to scroll yet). */
  fillViewport() {
    const el = this.scroller.current;
    const m = this.props.msgs;
    if (el && m.loaded && m.hasMore && !m.loading && el.scrollHeight <= el.clientHeight + 50) {
      void chat.loadOlder(this.props.room.id);
    }
  }

  maybeMarkRead() {
    if (this.atBottom && document.visibilityState === 'visible') chat.markRead(this.props.room.id);
  }

  toBottom() {
    const el = this.scroller.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    this.atBottom = true;
    if (this.state.showJump) this.setState({ showJump: false });
  }

  onScroll = () => {
    const el = this.scroller.current!;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    this.atBottom = atBottom;
    if (atBottom === this.state.showJump) this.setState({ showJump: !atBottom });
    if (atBottom) this.maybeMarkRead();
    const m = this.props.msgs;
    if (el.scrollTop < 400 && m.hasMore && !m.loading && m.loaded) void chat.loadOlder(this.props.room.id);
  };

  onMenu = (seq: number | null) => this.setState({ menu: seq });
  onReact = (seq: number, emoji: string, add: boolean) => {
    chat.react(this.props.room.id, seq, emoji, add).catch((e) => this.setState({ reactError: capitalize(chat.errorText(e)) }));
  };
  onJump = (seq: number) => void chat.openRoom(this.props.room.id, seq);
  renderMenu = (msg: Message) => (
    <MessageMenu msg={msg} mine={msg.sender_id === this.props.myId} myId={this.props.myId} onClose={() => this.setState({ menu: null })} />
  );

  render() {
    const { room, msgs, pending, myId, quotes } = this.props;
    const { menu, highlight, firstUnread, showJump } = this.state;
    const byId = new Map(msgs.list.map((m) => [m.seq, m]));
    const items: ComponentChildren[] = [];
    let prev: Message | null = null;
    let prevDay = '';
    let unreadShown = false;
    for (const m of msgs.list) {
      const day = dayKey(m.created_at);
      if (day !== prevDay) {
        items.push(
          <div class="day" role="separator" key={`d${day}`} aria-label={dayLabel(m.created_at)}>
            <span>{dayLabel(m.created_at)}</span>
          </div>,
        );
        prevDay = day;
        prev = null;
      }
      if (!unreadShown && firstUnread !== null && m.seq >= firstUnread && m.sender_id !== myId) {
        items.push(
          <div class="unread-line" role="separator" key="unread" aria-label="New messages">
            <span>New messages</span>
          </div>,
        );
        unreadShown = true;
        prev = null;
      }
      const head = !prev || prev.sender_id !== m.sender_id || m.created_at - prev.created_at > 5 * 60_000;
      const mine = m.sender_id === myId;
      items.push(
        <MessageItem
          key={m.seq}
          msg={m}
          myId={myId}
          mine={mine}
          head={head}
          group={room.kind === 'group'}
          tick={mine ? tickFor(m, room, myId) : null}
          quote={m.reply_to !== null ? byId.get(m.reply_to) ?? quotes[`${room.id}:${m.reply_to}`] : undefined}
          highlight={highlight === m.seq || this.props.editingSeq === m.seq}
          menuOpen={menu === m.seq}
          onMenu={this.onMenu}
          onReact={this.onReact}
          onJump={this.onJump}
          renderMenu={this.renderMenu}
        />,
      );
      prev = m;
    }
    // Sent but not yet acknowledged, in the order written; hidden once the stored copy is here.
    const stored = new Set(msgs.list.filter((m) => m.sender_id === myId).map((m) => m.client_msg_id));
    for (const p of pending) {
      if (stored.has(p.client_msg_id)) continue;
      items.push(
        <PendingItem
          key={p.client_msg_id}
          p={p}
          onRetry={() => chat.retryPending(p.client_msg_id)}
          onDiscard={() => chat.discardPending(p.client_msg_id)}
          onEdit={() => {
            setState((s) => ({ drafts: { ...s.drafts, [room.id]: p.text } }));
            chat.discardPending(p.client_msg_id);
            document.getElementById('composer')?.focus();
          }}
        />,
      );
    }
    return (
      <div class="messages-wrap">
        <div class="messages" ref={this.scroller} onScroll={this.onScroll} role="log" aria-label="Messages" tabIndex={0}>
          <div class="history-edge">
            {msgs.loaded && !msgs.hasMore && (
              <p class="muted small">This is the beginning of {room.kind === 'dm' ? 'your conversation' : `“${room.name}”`}.</p>
            )}
            {msgs.error && (
              <p class="error" role="alert">
                {capitalize(msgs.error)}{' '}
                <button type="button" class="link" onClick={() => void (msgs.loaded ? chat.loadOlder(room.id) : chat.loadLatest(room.id))}>
                  Try again
                </button>
              </p>
            )}
          </div>
          {items}
        </div>
        {msgs.loading && (
          <p class="loading-older" role="status">
            Loading messages…
          </p>
        )}
        {this.state.reactError && (
          <p class="error floating" role="alert" onClick={() => this.setState({ reactError: '' })}>
            {this.state.reactError}
          </p>
        )}
        {showJump && (
          <button type="button" class="jump" aria-label="Jump to the latest message" onClick={() => this.toBottom()}>
            <Icon name="down" />
          </button>
        )}
      </div>
    );
  }
}

function Composer({ s, room }: { s: State; room: Room }) {
  const editing = s.editing && s.editing.room === room.id ? s.editing : null;
  const editMsg = editing ? s.messages[room.id]?.list.find((m) => m.seq === editing.seq) ?? null : null;
  const replySeq = s.replyTo[room.id] ?? null;
  const replyMsg = replySeq !== null ? s.messages[room.id]?.list.find((m) => m.seq === replySeq) ?? null : null;
  const [text, setText] = useState(s.drafts[room.id] ?? '');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const ref = useRef<HTMLTextAreaElement>(null);

  // Editing starts: the message's text in the box (before the next paint).
  useLayoutEffect(() => {
    if (editMsg) {
      setText(editMsg.text);
      setError('');
      ref.current?.focus();
    }
  }, [editing?.seq]);
  // A failed message taken back for editing.
  useEffect(() => {
    const d = s.drafts[room.id];
    if (d !== undefined && d !== text && !editing) setText(d);
  }, [s.drafts[room.id]]);
  useEffect(() => {
    grow();
  }, [text]);
  useEffect(() => {
    if (matchMedia('(pointer: fine)').matches) ref.current?.focus();
  }, []);

  function grow() {
    const el = ref.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, 160)}px`;
  }

  function saveDraft(v: string) {
    setState((st) => ({ drafts: { ...st.drafts, [room.id]: v } }));
  }

  function cancel() {
    setState((st) => ({ editing: null, replyTo: { ...st.replyTo, [room.id]: null } }));
    if (editing) setText(s.drafts[room.id] ?? '');
    setError('');
  }

  async function submit() {
    const value = text;
    if (!value.trim()) return;
    setError('');
    if (editing) {
      setBusy(true);
      try {
        await chat.edit(room.id, editing.seq, value);
        setState({ editing: null });
        setText(s.drafts[room.id] ?? '');
      } catch (e) {
        setError(capitalize(chat.errorText(e)));
      } finally {
        setBusy(false);
      }
      return;
    }
    chat.send(room.id, value, replySeq);
    setText('');
    saveDraft('');
    setState((st) => ({ replyTo: { ...st.replyTo, [room.id]: null } }));
  }

  const offline = s.conn === 'offline';
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        void submit();
      }}
    >
      {(editing || replySeq !== null) && (
        <div class="composer-context">
          <span class="ctx-text">
            {editing ? (
              <strong>Editing your message</strong>
            ) : (
              <>
                <strong>Replying to {replyMsg ? (replyMsg.sender_id === s.session!.user.id ? 'yourself' : replyMsg.sender) : 'a message'}</strong>
                {replyMsg && <span class="ctx-quote">{replyMsg.text}</span>}
              </>
            )}
          </span>
          <button type="button" class="icon-btn" aria-label={editing ? 'Cancel editing' : 'Cancel reply'} onClick={cancel}>
            <Icon name="close" size={18} />
          </button>
        </div>
      )}
      <div class="composer-row">
        <textarea
          id="composer"
          ref={ref}
          rows={1}
          aria-label="Message"
          placeholder={`Message ${roomTitle(room, s.session!.user.id)}${offline ? ' (offline)' : ''}`}
          value={text}
          aria-invalid={error ? 'true' : undefined}
          aria-describedby={error ? 'composer-error' : 'composer-hint'}
          onInput={(e) => {
            const v = (e.target as HTMLTextAreaElement).value;
            setText(v);
            if (!editing) saveDraft(v);
            if (error) setError('');
            if (v.trim() && !editing) chat.typing(room.id, () => !!ref.current?.value.trim());
          }}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              void submit();
            } else if (e.key === 'Escape' && (editing || replySeq !== null)) {
              e.preventDefault();
              cancel();
            }
          }}
        />
        <button type="submit" class="send" aria-label={editing ? 'Save' : 'Send'} disabled={busy}>
          <Icon name="send" />
        </button>
      </div>
      {error ? (
        <p id="composer-error" class="error" role="alert">
          {error}
        </p>
      ) : (
        <p id="composer-hint" class="sr-only">
          Enter sends, Shift+Enter starts a new line.
        </p>
      )}
    </form>
  );
}

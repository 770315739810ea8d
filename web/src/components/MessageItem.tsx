import { Component } from 'preact';
import type * as preact from 'preact';
import type { Message, Pending } from '../types';
import { fullTime, time } from '../util';
import { Avatar } from './common';
import { Icon } from './Icon';

export type Tick = 'pending' | 'sending' | 'failed' | 'sent' | 'delivered' | 'seen';

export const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

const tickText: Record<Tick, string> = {
  pending: 'Pending',
  sending: 'Sending',
  failed: 'Not sent',
  sent: 'Sent',
  delivered: 'Delivered',
  seen: 'Seen',
};

export function TickMark({ status }: { status: Tick }) {
  const glyph =
    status === 'sent' ? '✓' : status === 'delivered' || status === 'seen' ? '✓✓' : status === 'failed' ? '!' : '🕓';
  return (
    <span class={`tick ${status}`} data-status={status} title={tickText[status]}>
      <span aria-hidden="true">{glyph}</span>
      <span class="sr-only">{tickText[status]}</span>
    </span>
  );
}

export interface ItemProps {
  msg: Message;
  myId: number;
  mine: boolean;
  /** First of a run of messages by the same sender: show name and avatar. */
  head: boolean;
  group: boolean;
  tick: Tick | null;
  quote: Message | null | undefined;
  highlight: boolean;
  menuOpen: boolean;
  onMenu: (seq: number | null) => void;
  onReact: (seq: number, emoji: string, add: boolean) => void;
  onJump: (seq: number) => void;
  renderMenu: (msg: Message) => preact.ComponentChildren;
}

function Quote({ quote, onJump, seq }: { quote: Message | null | undefined; onJump: (seq: number) => void; seq: number }) {
  return (
    <button type="button" class="quote" onClick={() => onJump(seq)} aria-label="Replying to a message; show it">
      {quote ? (
        <>
          <span class="quote-who">{quote.sender}</span>
          <span class="quote-text">{quote.deleted ? 'Message deleted' : quote.text}</span>
        </>
      ) : (
        <span class="quote-text">Loading the message replied to…</span>
      )}
    </button>
  );
}

/** One message. Re-renders only when its own props change. */
export class MessageItem extends Component<ItemProps> {
  shouldComponentUpdate(next: ItemProps) {
    const p = this.props;
    return (
      p.msg !== next.msg ||
      p.tick !== next.tick ||
      p.quote !== next.quote ||
      p.highlight !== next.highlight ||
      p.menuOpen !== next.menuOpen ||
      p.head !== next.head
    );
  }

  render() {
    const { msg, mine, head, group, tick, quote, highlight, myId, onMenu, onReact, onJump } = this.props;
    const cls = ['msg', mine ? 'mine' : 'theirs', head ? 'head' : 'cont', highlight ? 'highlight' : ''].join(' ');
    return (
      <article
        class={cls}
        id={`msg-${msg.room_id}-${msg.seq}`}
        data-seq={msg.seq}
        aria-label={`${mine ? 'You' : msg.sender}, ${time(msg.created_at)}`}
      >
        {!mine && group && (head ? <Avatar name={msg.sender} size={32} /> : <span class="avatar-space" />)}
        <div class="bubble-wrap">
          {!mine && group && head && <div class="sender">{msg.sender}</div>}
          <div class={msg.deleted ? 'bubble deleted' : 'bubble'}>
            {msg.reply_to !== null && !msg.deleted && <Quote quote={quote} onJump={onJump} seq={msg.reply_to} />}
            {msg.deleted ? (
              <p class="text">This message was deleted</p>
            ) : (
              <p class="text">{msg.text}</p>
            )}
            <span class="meta">
              {msg.edited_at && !msg.deleted && <span class="edited">edited</span>}
              <time dateTime={new Date(msg.created_at).toISOString()} title={fullTime(msg.created_at)}>
                {time(msg.created_at)}
              </time>
              {tick && <TickMark status={tick} />}
            </span>
          </div>
          {msg.reactions.length > 0 && !msg.deleted && (
            <div class="reactions">
              {msg.reactions.map((r) => {
                const minePressed = r.user_ids.includes(myId);
                return (
                  <button
                    type="button"
                    key={r.emoji}
                    class={minePressed ? 'chip on' : 'chip'}
                    aria-pressed={minePressed}
                    aria-label={`${r.emoji} ${r.user_ids.length}${minePressed ? ', including you' : ''}`}
                    onClick={() => onReact(msg.seq, r.emoji, !minePressed)}
                  >
                    <span aria-hidden="true" class="e">{r.emoji}</span> <span aria-hidden="true">{r.user_ids.length}</span>
                  </button>
                );
              })}
            </div>
          )}
        </div>
        {!msg.deleted && (
          <button
            type="button"
            class="icon-btn msg-more"
            aria-label="Message actions"
            aria-haspopup="menu"
            aria-expanded={this.props.menuOpen}
            onClick={() => onMenu(this.props.menuOpen ? null : msg.seq)}
          >
            <Icon name="more" size={18} />
          </button>
        )}
        {this.props.menuOpen && this.props.renderMenu(msg)}
      </article>
    );
  }
}

/** A message written here, not yet stored by the server. */
export function PendingItem({
  p,
  onRetry,
  onDiscard,
  onEdit,
}: {
  p: Pending;
  onRetry: () => void;
  onDiscard: () => void;
  onEdit: () => void;
}) {
  const tick: Tick = p.state;
  return (
    <article class="msg mine head pending" data-pending={p.client_msg_id} aria-label="You, not sent yet">
      <div class="bubble-wrap">
        <div class="bubble">
          <p class="text">{p.text}</p>
          <span class="meta">
            <span class="pending-label">{p.state === 'failed' ? 'Not sent' : p.state === 'sending' ? 'Sending…' : 'Pending'}</span>
            <TickMark status={tick} />
          </span>
        </div>
        {p.state === 'failed' && (
          <div class="pending-error">
            <p class="error" role="alert">
              {p.error ? p.error[0].toUpperCase() + p.error.slice(1) : 'The server refused this message.'}
            </p>
            <div class="row">
              <button type="button" class="btn small" onClick={onEdit}>
                Edit
              </button>
              <button type="button" class="btn small" onClick={onRetry}>
                Try again
              </button>
              <button type="button" class="btn small danger" onClick={onDiscard}>
                Discard
              </button>
            </div>
          </div>
        )}
      </div>
    </article>
  );
}

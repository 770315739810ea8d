// Formatting helpers: times, days, avatar colours.

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'long', year: 'numeric' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });

export function time(ms: number): string {
  return timeFmt.format(ms);
}

export function fullTime(ms: number): string {
  return fullFmt.format(ms);
}

export function dayKey(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function startOfDay(ms: number): number {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** "Today", "Yesterday", "Monday 3 March" or, another year, "3 March 2024". */
export function dayLabel(ms: number, now = Date.now()): string {
  const days = Math.round((startOfDay(now) - startOfDay(ms)) / 86_400_000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (new Date(ms).getFullYear() === new Date(now).getFullYear()) return dayFmt.format(ms);
  return dayYearFmt.format(ms);
}

/** Short time for the room list: the time today, else the date. */
export function shortWhen(ms: number, now = Date.now()): string {
  return startOfDay(ms) === startOfDay(now) ? time(ms) : shortDayFmt.format(ms);
}

export function lastSeen(ms: number | null, now = Date.now()): string {
  if (!ms) return 'offline';
  const mins = Math.round((now - ms) / 60_000);
  if (mins < 1) return 'last seen just now';
  if (mins < 60) return `last seen ${mins} min ago`;
  if (startOfDay(ms) === startOfDay(now)) return `last seen today at ${time(ms)}`;
  return `last seen ${shortDayFmt.format(ms)}`;
}

/** A stable hue per name, for avatars. */
export function hue(name: string): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}

export function initials(name: string): string {
  const parts = name.split(/[\s._-]+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[1][0] : name.slice(0, 2);
  return s.toUpperCase();
}

/** Which form field a server message is about, to show it next to that field. */
export function fieldOf(message: string): 'username' | 'password' | 'form' {
  const m = message.toLowerCase();
  if (m.includes('wrong username or password')) return 'password';
  if (m.includes('password')) return 'password';
  if (m.includes('username')) return 'username';
  return 'form';
}

import type { ComponentChildren } from 'preact';
import { useEffect, useRef } from 'preact/hooks';
import { hue, initials } from '../util';
import { Icon } from './Icon';

export function Avatar({ name, online, size = 40 }: { name: string; online?: boolean | null; size?: number }) {
  return (
    <span
      class="avatar"
      style={{ width: `${size}px`, height: `${size}px`, '--h': String(hue(name)) }}
      aria-hidden="true"
    >
      <span class="avatar-text" style={{ fontSize: `${Math.round(size * 0.38)}px` }}>
        {initials(name)}
      </span>
      {online !== undefined && online !== null && <span class={online ? 'dot on' : 'dot'} />}
    </span>
  );
}

/** A modal dialog (native <dialog>: focus stays inside, Escape closes it). */
export function Dialog({
  title,
  onClose,
  children,
  wide,
}: {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const close = useRef(onClose);
  close.current = onClose;
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    const opener = document.activeElement as HTMLElement | null;
    if (!d.open) d.showModal();
    const onCancel = (e: Event) => {
      e.preventDefault();
      close.current();
    };
    d.addEventListener('cancel', onCancel);
    return () => {
      d.removeEventListener('cancel', onCancel);
      if (d.open) d.close();
      opener?.focus?.();
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class={wide ? 'dialog wide' : 'dialog'}
      aria-labelledby="dialog-title"
      onClick={(e) => {
        // A click on the backdrop (the dialog element itself, outside its content) closes it.
        if (e.target === ref.current) close.current();
      }}
    >
      <div class="dialog-body">
        <header class="dialog-head">
          <h2 id="dialog-title">{title}</h2>
          <button type="button" class="icon-btn" aria-label="Close" onClick={() => close.current()}>
            <Icon name="close" />
          </button>
        </header>
        {children}
      </div>
    </dialog>
  );
}

/** A labelled text field with its error right under it. */
export function Field({
  id,
  label,
  value,
  onInput,
  error,
  hint,
  autoFocus,
  autocomplete,
  placeholder,
}: {
  id: string;
  label: string;
  value: string;
  onInput: (v: string) => void;
  error?: string;
  hint?: string;
  autoFocus?: boolean;
  autocomplete?: string;
  placeholder?: string;
}) {
  const ref = useRef<HTMLInputElement>(null);
  useEffect(() => {
    if (autoFocus) ref.current?.focus();
  }, []);
  useEffect(() => {
    if (error) ref.current?.focus();
  }, [error]);
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <input
        ref={ref}
        id={id}
        value={value}
        autocomplete={autocomplete ?? 'off'}
        autocapitalize="none"
        spellcheck={false}
        placeholder={placeholder}
        onInput={(e) => onInput((e.target as HTMLInputElement).value)}
        aria-invalid={error ? 'true' : undefined}
        aria-describedby={error ? `${id}-error` : hint ? `${id}-hint` : undefined}
      />
      {error ? (
        <p id={`${id}-error`} class="error" role="alert">
          {error}
        </p>
      ) : hint ? (
        <p id={`${id}-hint`} class="hint">
          {hint}
        </p>
      ) : null}
    </div>
  );
}

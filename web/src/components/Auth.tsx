import { useState } from 'preact/hooks';
import * as rest from '../api';
import { fieldOf } from '../util';

type Errors = { username?: string; password?: string; form?: string };

export function Auth({ notice }: { notice?: string }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState<'' | 'login' | 'signup'>('');
  const [errors, setErrors] = useState<Errors>({});

  async function go(kind: 'login' | 'signup') {
    setErrors({});
    setBusy(kind);
    try {
      if (kind === 'login') await rest.login(username.trim(), password);
      else await rest.signup(username.trim(), password);
      // The session listener switches to the chat.
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const field = e instanceof rest.ApiError && e.status === 409 ? 'username' : fieldOf(message);
      setErrors({ [field]: capitalize(message) });
      const el = document.getElementById(field === 'form' ? 'auth-username' : `auth-${field}`) as HTMLInputElement | null;
      el?.focus();
    } finally {
      setBusy('');
    }
  }

  return (
    <main class="auth">
      <form
        class="auth-card"
        aria-labelledby="auth-title"
        onSubmit={(e) => {
          e.preventDefault();
          const submitter = (e as SubmitEvent).submitter as HTMLButtonElement | null;
          void go(submitter?.value === 'signup' ? 'signup' : 'login');
        }}
        noValidate
      >
        <div class="brand" aria-hidden="true">
          <span class="brand-mark">h</span>
        </div>
        <h1 id="auth-title">Hubbub</h1>
        <p class="muted">Log in, or sign up with a new username.</p>
        {notice && (
          <p class="notice" role="status">
            {notice}
          </p>
        )}
        <div class="field">
          <label for="auth-username">Username</label>
          <input
            id="auth-username"
            name="username"
            autocomplete="username"
            autocapitalize="none"
            spellcheck={false}
            value={username}
            onInput={(e) => setUsername((e.target as HTMLInputElement).value)}
            aria-invalid={errors.username ? 'true' : undefined}
            aria-describedby={errors.username ? 'auth-username-error' : 'auth-username-hint'}
            required
          />
          {errors.username ? (
            <p id="auth-username-error" class="error" role="alert">
              {errors.username}
            </p>
          ) : (
            <p id="auth-username-hint" class="hint">
              3 to 32 letters, digits, _ . or -
            </p>
          )}
        </div>
        <div class="field">
          <label for="auth-password">Password</label>
          <input
            id="auth-password"
            name="password"
            type="password"
            autocomplete="current-password"
            value={password}
            onInput={(e) => setPassword((e.target as HTMLInputElement).value)}
            aria-invalid={errors.password ? 'true' : undefined}
            aria-describedby={errors.password ? 'auth-password-error' : 'auth-password-hint'}
            required
          />
          {errors.password ? (
            <p id="auth-password-error" class="error" role="alert">
              {errors.password}
            </p>
          ) : (
            <p id="auth-password-hint" class="hint">
              At least 8 characters
            </p>
          )}
        </div>
        {errors.form && (
          <p class="error" role="alert">
            {errors.form}
          </p>
        )}
        <div class="auth-actions">
          <button type="submit" class="btn primary" value="login" disabled={busy !== ''}>
            {busy === 'login' ? 'Logging in…' : 'Log in'}
          </button>
          <button type="submit" class="btn" value="signup" disabled={busy !== ''}>
            {busy === 'signup' ? 'Signing up…' : 'Sign up'}
          </button>
        </div>
      </form>
    </main>
  );
}

export function capitalize(s: string): string {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

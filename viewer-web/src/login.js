// Sign-in dialog shown when the server answers 401 (pacsd with [security] enabled), with
// the hospital identity provider (OIDC) offered when the server has one; sign-out button.
import { config, login, logout, token } from './api.js';

let pending = null;

export function askLogin() {
  if (pending) return pending;
  pending = new Promise((resolve) => {
    const dlg = document.getElementById('login');
    const form = dlg.querySelector('form');
    const err = dlg.querySelector('.error');
    err.textContent = '';
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      try {
        await login(form.username.value, form.password.value);
        dlg.close();
        pending = null;
        showSignOut();
        resolve();
      } catch (e) {
        err.textContent = e.status === 429 ? 'Too many attempts; wait and retry.' : 'Sign-in failed.';
      }
    };
    const oidc = dlg.querySelector('.oidc');
    oidc.hidden = !config.oidcLogin;
    // A top-level navigation: the provider's pages, then pacsd's callback page, which
    // leaves the token in this tab's sessionStorage and opens the viewer again.
    dlg.querySelector('#oidc-login').onclick = (ev) => {
      ev.preventDefault();
      location.assign(config.oidcLogin);
    };
    dlg.showModal();
  });
  return pending;
}

function showSignOut() { document.getElementById('sign-out').hidden = !token(); }

export function bindSignOut() {
  const button = document.getElementById('sign-out');
  button.onclick = async () => {
    button.disabled = true;
    const next = await logout();
    if (next) location.assign(next); // end the session at the provider too
    else location.reload();          // no token: the next request asks for a sign-in
  };
  showSignOut();
}

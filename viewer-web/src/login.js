// Sign-in dialog shown when the server answers 401 (pacsd with [security] enabled).
import { login } from './api.js';

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
        resolve();
      } catch (e) {
        err.textContent = e.status === 429 ? 'Too many attempts; wait and retry.' : 'Sign-in failed.';
      }
    };
    dlg.showModal();
  });
  return pending;
}

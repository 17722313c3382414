// pacsd viewer entry: hash routes  #/ (worklist, R-D2)  and  #/study/<uid> (viewer, R-D1).
import './style.css';
import { loadConfig, setUnauthorizedHandler } from './api.js';
import { askLogin, bindSignOut } from './login.js';
import { bindWorklist, search } from './worklist.js';
import { bindToolbar, openStudy, closeViewer, currentImage, hook } from './viewer.js';
import { bindShare, probeShare } from './share.js';
import { initScreens, openScreen, announceStudy, screenNumber } from './screens.js';

window.pacsdViewer = hook;

async function route() {
  const m = location.hash.match(/^#\/study\/([0-9.]+)/);
  document.body.dataset.page = m ? 'viewer' : 'worklist';
  if (m) {
    try {
      document.body.dataset.screen = String(screenNumber());
      await openStudy(m[1]);
      document.body.dataset.loaded = m[1];
      announceStudy(m[1]);
      await probeShare(m[1]);
    } catch (e) {
      document.getElementById('patient').textContent = `Cannot open the study: ${e.message}`;
      console.error(e);
    }
  } else {
    closeViewer();
    if (!document.querySelector('#studies tbody tr')) search(0);
  }
}

async function main() {
  await loadConfig();
  setUnauthorizedHandler(askLogin);
  bindSignOut();
  bindWorklist();
  bindToolbar();
  bindShare(currentImage);
  initScreens();
  document.getElementById('new-screen').onclick = () => {
    const m = location.hash.match(/^#\/study\/([0-9.]+)/);
    if (m) openScreen(m[1]);
  };
  window.addEventListener('hashchange', route);
  await route();
}

main();

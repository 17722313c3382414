// The radiologist's flow of issue 8's "Done when" (R-D1, R-D2, R-C5), driven in a browser
// that Python playwright cannot drive: Debian's firefox-esr over WebDriver BiDi, through
// Puppeteer's supported Firefox support (no geckodriver). Run by
// tests/browser/test_firefox.py, which starts pacsd, stores the studies and asserts the
// values this script reports against the known pixel values — this script only acts and
// reads, it judges nothing.
//
//   node e2e/radiologist-flow.mjs '<json>'
//   json: {url, browser: "firefox", executablePath, current, prior, user, password,
//          phone, shots}
//
// Prints one JSON object on stdout: what the doctor saw at each step.
import puppeteer from 'puppeteer-core';

const cfg = JSON.parse(process.argv[2]);
const out = { steps: [], pageErrors: [], console: [] };
const step = (name) => out.steps.push(name);

// Headless Firefox creates WebGL contexts only through EGL (Mesa's llvmpipe here, no
// GPU): MOZ_WEBGL_FORCE_EGL in the environment plus webgl.force-enabled (docs/viewer.md).
const browser = await puppeteer.launch({
  browser: cfg.browser || 'firefox',
  executablePath: cfg.executablePath,
  headless: true,
  protocolTimeout: 120000,
  env: { ...process.env, MOZ_WEBGL_FORCE_EGL: '1' },
  extraPrefsFirefox: { 'webgl.force-enabled': true },
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function shot(page, name) {
  await page.screenshot({ path: `${cfg.shots}/${name}.png` });
}

async function paneShot(page, i, name) {
  const el = await page.$(`#grid .pane[data-index="${i}"]`);
  await el.screenshot({ path: `${cfg.shots}/${name}.png` });
}

async function waitRendered(page, i) {
  await page.waitForFunction((n) => window.pacsdViewer.rendered(n), { timeout: 60000 }, i);
  // The pane's geometry settles once the panels have filled in (cf. test_viewer.py).
  let last = null;
  for (let k = 0; k < 50; k++) {
    const now = JSON.stringify(await page.evaluate((n) => window.pacsdViewer.imageToPage(n, 0, 0), i));
    if (now !== 'null' && now === last) return;
    last = now;
    await sleep(150);
  }
  throw new Error('viewport geometry never settled');
}

const toPage = (page, i, x, y) =>
  page.evaluate((a) => window.pacsdViewer.imageToPage(...a), [i, x, y]);

async function drag(page, i, start, end) {
  const [x0, y0] = await toPage(page, i, ...start);
  const [x1, y1] = await toPage(page, i, ...end);
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  const dist = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
  for (const px of [1, 2]) {
    await page.mouse.move(x0 + ((x1 - x0) * px) / dist, y0 + ((y1 - y0) * px) / dist);
  }
  await page.mouse.move(x1, y1, { steps: Math.max(4, Math.floor(dist / 4)) });
  await page.mouse.up();
}

async function clickImage(page, i, at) {
  const [x, y] = await toPage(page, i, ...at);
  await page.mouse.click(x, y);
  await sleep(450); // Cornerstone's double-click tolerance (cf. test_viewer.py)
}

// Cornerstone computes a drawn annotation's statistics throttled (100 ms, trailing): at
// completion they may still be those of a few moves earlier, so wait until they settle.
async function waitCompleted(page, n) {
  await page.waitForFunction((k) => window.pacsdViewer.completed >= k, {}, n);
  await measurements(page);
}
// Read once the values stop changing: Firefox may deliver the drag's last move events
// after the press ended, and the annotation's statistics follow them.
async function measurements(page) {
  let last = null;
  for (let k = 0; k < 40; k++) {
    const now = JSON.stringify(await page.evaluate(() => window.pacsdViewer.measurements()));
    if (now === last) return JSON.parse(now);
    last = now;
    await sleep(250);
  }
  throw new Error('measurements never settled');
}

try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  page.on('pageerror', (e) => out.pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
  out.userAgent = await browser.userAgent();

  // 1. Search page: sign in, find the patient's CT by name.
  await page.goto(`${cfg.url}/viewer/`);
  if (cfg.user) {
    await page.waitForSelector('#login[open]');
    await page.type('#login [name="username"]', cfg.user);
    await page.type('#login [name="password"]', cfg.password);
    await page.click('#login button[type="submit"]');
  }
  await page.waitForSelector('#studies tbody tr');
  await page.type('#search [name="patientName"]', cfg.patientName);
  await page.select('#search select[name="modality"]', 'CT');
  await page.evaluate(() => { document.querySelector('#status').dataset.total = ''; });
  await page.click('#search button[type="submit"]');
  await page.waitForFunction(() => document.querySelector('#status').dataset.total !== '');
  out.found = await page.$$eval('#studies tbody tr', (rows) => rows.map((r) => r.dataset.study));
  out.total = await page.$eval('#status', (s) => s.dataset.total);
  await page.waitForFunction((uid) => {
    const i = document.querySelector(`tr[data-study='${uid}'] img.thumb`);
    return i && i.complete && i.naturalWidth > 0;
  }, { timeout: 60000 }, cfg.current);
  await shot(page, 'firefox-1-search');
  step('search');

  // 2. Open the current CT; the image renders.
  await page.click(`#studies tbody tr[data-study="${cfg.current}"]`);
  await page.waitForFunction((uid) => document.body.dataset.loaded === uid, { timeout: 60000 }, cfg.current);
  await waitRendered(page, 0);
  await paneShot(page, 0, 'firefox-2-pane');
  step('open');

  // 3. Measure the nodule: 80 pixels along a row.
  await page.click('[data-tool="Length"]');
  await drag(page, 0, [20, 100], [100, 100]);
  await waitCompleted(page, 1);
  out.length = (await measurements(page)).find((m) => m.tool === 'Length');
  out.lengthText = await page.$eval('#measurements li[data-tool="Length"]', (li) => li.innerText);
  await shot(page, 'firefox-3-length');
  step('length');

  // 4. Read the HU at a point.
  await page.click('[data-tool="Probe"]');
  await clickImage(page, 0, [100, 20]);
  await waitCompleted(page, 2);
  out.probe = (await measurements(page)).find((m) => m.tool === 'Probe');
  out.probeText = await page.$eval('#measurements li[data-tool="Probe"]', (li) => li.innerText);
  step('probe');

  // 5. Cardiothoracic ratio: thoracic 100 px, cardiac 50 px.
  await page.click('[data-action="ctr"]');
  await drag(page, 0, [10, 110], [110, 110]);
  await waitCompleted(page, 3);
  await drag(page, 0, [40, 90], [90, 90]);
  await waitCompleted(page, 4);
  await page.waitForSelector('#measurements li[data-tool="CTR"]');
  out.ctr = await page.evaluate(() => window.pacsdViewer.ctrRatio());
  out.ctrText = await page.$eval('#measurements li[data-tool="CTR"]', (li) => li.innerText);
  await shot(page, 'firefox-4-measured');
  step('ctr');

  // 6. Compare with last year's CT side by side; scroll both together.
  await page.waitForSelector(`#history li[data-study="${cfg.prior}"] button`);
  out.history = await page.$$eval('#history li', (lis) => lis.map((li) => li.dataset.study));
  await page.click(`#history li[data-study="${cfg.prior}"] button`);
  await waitRendered(page, 1);
  out.panes = (await page.evaluate(() => window.pacsdViewer.panes())).map((p) => p.studyUid);
  await page.click('#sync');
  out.syncChecked = await page.$eval('#sync', (c) => c.checked);
  const [x, y] = await toPage(page, 0, 64, 64);
  await page.mouse.move(x, y);
  await page.mouse.wheel({ deltaY: 400 });
  await page.waitForFunction(() => window.pacsdViewer.imageIndex(0) > 0);
  await page.waitForFunction(() => window.pacsdViewer.imageIndex(1) === window.pacsdViewer.imageIndex(0));
  out.indices = await page.evaluate(() => [0, 1].map((i) => window.pacsdViewer.imageIndex(i)));
  await paneShot(page, 1, 'firefox-5-prior-pane');
  await shot(page, 'firefox-5-compare');
  step('compare');

  // 7. Share the image shown by QR code.
  if (cfg.phone) {
    await page.waitForSelector('#share:not([hidden])');
    out.image = await page.evaluate(() => window.pacsdViewer.currentImage());
    await page.click('#share');
    await page.waitForSelector('#share-dialog[open]');
    await page.click('#share-dialog input[value="phone"]');
    await page.type('#share-dialog [name="phone"]', cfg.phone);
    await page.click('#share-dialog .create');
    await page.waitForSelector('#share-dialog[data-state="shared"]');
    await page.waitForFunction(() => {
      const i = document.querySelector('#share-dialog img.qr');
      return i.complete && i.naturalWidth > 0;
    });
    out.shareUrl = await page.$eval('#share-dialog input.url', (i) => i.value);
    out.qrSrc = await page.$eval('#share-dialog img.qr', (i) => i.src);
    out.shareLink = await page.$eval('#share-dialog', (d) => d.dataset.link);
    await shot(page, 'firefox-6-share-qr');
    step('share');
  }
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');

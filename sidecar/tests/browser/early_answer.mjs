// Headless Chromium uploads bodies that the demo app refuses after reading 1 MiB of them (it
// answers 400 and closes its connection, as an app answers 413 to an upload over its limit):
// the browser must get the app's own answer every time, not a 502 of the sidecar nor a reset.
//
// Usage: node early_answer.mjs <shop origin> <uploads> <bytes each>
// Prints one JSON line with what each upload got; sidecar/tests/browser.rs checks it.
import { launchChromium } from './launch.mjs';

const [shop, uploads, bytes] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  await page.goto(`${shop}/`);
  const answers = [];
  for (let i = 0; i < Number(uploads); i++) {
    answers.push(await page.evaluate(async (n) => {
      try {
        const r = await fetch('/incr', { method: 'POST', body: new Uint8Array(n) });
        return `${r.status} ${await r.text()}`;
      } catch (e) {
        return `failed: ${e}`;
      }
    }, Number(bytes)));
  }
  console.log(JSON.stringify({ answers }));
} finally {
  await browser.close();
}

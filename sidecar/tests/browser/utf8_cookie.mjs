// Headless Chromium with a cookie of the site in UTF-8 (`lang=Français`, set by the page's
// script, as sites do): the browser sends it raw, in the same Cookie field as the session's
// cookies, and the session must go on.
//
// Usage: node utf8_cookie.mjs <shop origin>
// Prints one JSON line with what it saw; sidecar/tests/browser.rs checks it.
import { chromium } from 'playwright-core';

const [shop] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${shop}/`);
  await page.evaluate(() => { document.cookie = 'lang=Fran\u00e7ais; path=/'; });
  const incr = () => page.evaluate(async () => (await fetch('/incr', { method: 'POST' })).json());
  const bodies = [await incr(), await incr(), await incr()];
  console.log(JSON.stringify({
    counts: bodies.map((b) => b.count),
    sessions: [...new Set(bodies.map((b) => b.session))].length,
    lang: (await context.cookies(shop)).find((c) => c.name === 'lang')?.value,
  }));
} finally {
  await browser.close();
}

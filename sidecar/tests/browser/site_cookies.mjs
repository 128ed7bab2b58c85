// Headless Chromium with cookies of the site beside the session's: one in UTF-8
// (`lang=Français`) and one set without a name (`document.cookie = 'nameless'`), both set by the
// page's script, as sites do. The browser sends them in the same Cookie field as the session's
// cookies (the UTF-8 one raw, the nameless one as its value alone): the session must go on, and
// the app must get both as they were, without the session's cookies.
//
// Usage: node site_cookies.mjs <shop origin> <session cookie name>
// Prints one JSON line with what it saw; sidecar/tests/browser.rs checks it.
import { launchChromium } from './launch.mjs';

const [shop, cookieName] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${shop}/`);
  await page.evaluate(() => {
    document.cookie = 'lang=Fran\u00e7ais; path=/';
    document.cookie = 'nameless; path=/';
  });
  const incr = () => page.evaluate(async () => (await fetch('/incr', { method: 'POST' })).json());
  const bodies = [await incr(), await incr(), await incr()];
  const appSaw = await page.evaluate(async () => (await fetch('/headers')).json());
  const sent = (await context.cookies(shop)).map((c) => c.name);
  console.log(JSON.stringify({
    counts: bodies.map((b) => b.count),
    sessions: [...new Set(bodies.map((b) => b.session))].length,
    browserHolds: sent,
    appCookie: appSaw.cookie ?? [],
    sessionCookieSeenByApp: (appSaw.cookie ?? []).some((f) => f.includes(`${cookieName}=`) || f.includes(`${cookieName}.`)),
  }));
} finally {
  await browser.close();
}

// Headless Chromium against a handover pool, as a user's browser meets it:
// static assets, a session that gets state, and a cross-site form POST back to the site (a payment
// provider's 3-D Secure return) that arrives without the SameSite=Lax cookie.
//
// Usage: node cross_site.mjs <shop origin> <payment provider origin> <cookie name>
// Prints one JSON line with what it saw; sidecar/tests/browser.rs checks it.
import { launchChromium } from './launch.mjs';

const [shop, pay, cookieName] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const stateCookies = async () =>
    (await context.cookies(shop)).filter((c) => c.name === cookieName || c.name.startsWith(cookieName + '.'));
  const seen = {};

  await page.goto(`${shop}/static/site.css`);
  await page.goto(`${shop}/`);
  seen.cookiesAfterStaticAndHome = (await stateCookies()).length;

  const incr = () => page.evaluate(async () => (await fetch('/incr', { method: 'POST' })).json());
  await incr();
  seen.countBeforeReturn = (await incr()).count;
  const before = await stateCookies();
  seen.cookieBefore = before.map((c) => c.value).join();
  seen.sameSite = before.map((c) => c.sameSite).join();

  // The provider's page posts the form back to the shop, cross-site, as 3-D Secure returns do.
  await page.goto(`${pay}/checkout`);
  await page.waitForURL(`${shop}/return`, { timeout: 10000 });
  seen.returnBody = JSON.parse(await page.textContent('body'));
  seen.cookieAfterReturn = (await stateCookies()).map((c) => c.value).join();

  await page.goto(`${shop}/`);
  seen.countAfterReturn = (await incr()).count;
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

// Headless Chromium against two pools under one host (an ingress routing /shop/ and /account/):
// each pool's session goes on while the browser alternates between them.
//
// Usage: node two_pools.mjs <ingress origin>
// Prints one JSON line: the counts each pool answered, and the browser's cookies (name, path).
import { launchChromium } from './launch.mjs';

const [ingress] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const counts = { shop: [], account: [] };
  for (let round = 0; round < 3; round++) {
    for (const pool of ['shop', 'account']) {
      await page.goto(`${ingress}/${pool}/static/site.css`);
      const reply = await page.evaluate(async (url) => (await fetch(url, { method: 'POST' })).json(), `/${pool}/incr`);
      counts[pool].push(reply.count);
    }
  }
  const cookies = (await context.cookies(ingress)).map((c) => ({ name: c.name, path: c.path }));
  console.log(JSON.stringify({ counts, cookies }));
} finally {
  await browser.close();
}

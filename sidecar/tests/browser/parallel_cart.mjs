// Headless Chromium adding to a cart with 4 `fetch` POSTs in flight at once, as pages with
// parallel XHRs do, behind an ingress. After each batch it prints one JSON line — the highest
// count acknowledged so far, the pod that answered it, the failed requests — and waits for a line
// on stdin: `next <origin>` (the test may have killed that pod meanwhile and put a new ingress in
// front of the pool: cookies do not depend on the port, so the cart goes on there) or
// `end <origin>`. On `end` it reads the cart (retrying until answered, 30 s at most) and prints {"final": count}.
//
// Usage: node parallel_cart.mjs <ingress origin> <requests in flight>
import { launchChromium } from './launch.mjs';
import { createInterface } from 'node:readline';

const [origin, inFlight] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const browser = await launchChromium();
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${origin}/static/site.css`);
  let acked = 0;
  let pod = '';
  let failed = 0;
  for (let batch = 0; ; batch++) {
    const replies = await page.evaluate(async (n) => {
      const one = async () => {
        try {
          const r = await fetch('/incr', { method: 'POST' });
          return r.ok ? { ok: true, ...(await r.json()) } : { ok: false, status: r.status };
        } catch (e) {
          return { ok: false, error: String(e) };
        }
      };
      return Promise.all(Array.from({ length: n }, one));
    }, Number(inFlight));
    for (const r of replies) {
      if (r.ok && r.count > acked) {
        acked = r.count;
        pod = r.pod;
      } else if (!r.ok) {
        failed += 1;
      }
    }
    console.log(JSON.stringify({ batch, acked, pod, failed, replies: replies.map((r) => r.count ?? r.status ?? r.error) }));
    const { value } = await lines.next();
    const [command, next] = (value ?? 'end').split(' ');
    if (next && !page.url().startsWith(next)) await page.goto(`${next}/static/site.css`);
    if (command !== 'next') break;
  }
  const deadline = Date.now() + 30000;
  let final = null;
  while (final === null && Date.now() < deadline) {
    final = await page.evaluate(async () => {
      try {
        const r = await fetch('/count');
        return r.ok ? (await r.json()).count : null;
      } catch {
        return null;
      }
    });
  }
  console.log(JSON.stringify({ final }));
} finally {
  await browser.close();
}

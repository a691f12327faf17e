// The browser test of `hayedik ui` (issue 18), run by .ci/browser.sh:
// headless Debian chromium driven by playwright-core, talking to nothing
// but 127.0.0.1. It shares a generated file through the page (picked with
// the folder browser), gets its ticket into another folder through the
// page, waits for 100 % and the done row, checks the file byte for byte,
// takes screenshots of the page and of the tracker's status page (where
// it finds the swarm), and checks that a request without the token and a
// POST with a foreign Origin are refused.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, "node_modules", "/"));
const { chromium } = require("playwright-core");

const BIN = process.env.HAYEDIK_BIN;
const SHOTS = process.env.SCREENSHOTS;
const WAIT = 60_000;
let checks = 0;
const children = [];

function check(ok, what) {
  if (!ok) throw new Error("FAILED: " + what);
  checks++;
  console.log("ok - " + what);
}

// Everything within two minutes, or fail.
const deadline = setTimeout(() => {
  console.error("FAILED: the browser test took more than 120 s");
  for (const c of children) c.kill("SIGKILL");
  process.exit(1);
}, 120_000);

/** Starts `hayedik ARGS --json` and resolves with its first event. */
function start(args, env) {
  const child = spawn(BIN, [...args, "--json"], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...env } });
  children.push(child);
  const lines = createInterface({ input: child.stdout });
  return new Promise((resolve, reject) => {
    lines.once("line", (l) => resolve({ child, first: JSON.parse(l) }));
    child.once("exit", (code) => reject(new Error(`hayedik ${args[0]} exited with ${code}`)));
  });
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once("exit", (code) => resolve(code));
    child.kill("SIGTERM");
  });
}

/** A raw request (node's fetch would not let us set Origin). */
function request(url, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const r = http.request(url, { method, headers }, (res) => {
      let text = "";
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode, text }));
    });
    r.on("error", reject);
    if (body) r.write(body);
    r.end();
  });
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "hayedik-browser-"));
const src = path.join(work, "home", "shared");
const out = path.join(work, "home", "downloads");
fs.mkdirSync(src, { recursive: true });
const data = randomBytes(16 * 1024 * 1024 + 77);
fs.writeFileSync(path.join(src, "holiday.bin"), data);

let browser;
try {
  const tracker = await start(["tracker", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
  check(tracker.first.event === "listening" && tracker.first.http, "tracker listening with http");
  const ui = await start(
    ["ui", "--no-open", "--public-host", "127.0.0.1", "--listen", "127.0.0.1:0"],
    { HOME: path.join(work, "home") },
  );
  const url = ui.first.url;
  check(ui.first.event === "listening" && url.includes("token="), "ui prints its tokenised url");
  const base = new URL(url).origin;

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--metrics-recording-only",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-default-apps",
      "--disable-domain-reliability",
      "--disable-client-side-phishing-detection",
      "--disable-breakpad",
      "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
      // Anything not on loopback goes nowhere.
      "--proxy-server=http://127.0.0.1:9",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  await page.goto(url);
  check(new URL(page.url()).search === "", "the token leaves the address bar");
  await page.locator("#link.live").waitFor({ timeout: WAIT });
  check(true, "the event stream is live");

  // Share: pick the file with the folder browser (it opens at HOME).
  await page.click('[data-browse="share-path"]');
  await page.locator("#browse-list li", { hasText: "shared" }).click();
  await page.locator("#browse-list li", { hasText: "holiday.bin" }).click();
  check((await page.inputValue("#share-path")) === path.join(src, "holiday.bin"), "the folder browser picks the file");
  await page.fill("#share-tracker", tracker.first.addr);
  await page.click("#share-button");
  const shareCard = page.locator(".transfer", { has: page.locator(".badge.sharing") });
  await shareCard.waitFor({ timeout: WAIT });
  const ticket = await shareCard.locator(".ticket input").inputValue();
  check(ticket.startsWith("hayedik://127.0.0.1:"), "the page shows the ticket " + ticket);
  await shareCard.locator(".ticket img").evaluate((img) => img.decode());
  check(await shareCard.locator(".ticket img").evaluate((img) => img.naturalWidth > 0), "the QR code renders");

  // Get it into another folder through the page.
  await page.fill("#get-ticket", ticket);
  await page.fill("#get-dir", out);
  await page.click("#get-button");
  const getCard = page.locator(".transfer", { has: page.locator(".done-row:visible") });
  await getCard.waitFor({ timeout: WAIT });
  await getCard.locator('.pct[data-pct="100"]').waitFor({ timeout: WAIT });
  check(true, "the get reaches 100 % and shows its done row");
  const got = fs.readFileSync(path.join(out, "holiday.bin"));
  check(Buffer.compare(got, data) === 0, "the downloaded file is byte-identical");
  await getCard.locator(".badge.seeding").waitFor({ timeout: WAIT });
  await getCard.locator("table td", { hasText: "direct" }).first().waitFor({ timeout: WAIT });
  check(true, "the peer table shows the path (direct)");
  await page.locator("#log-box").evaluate((d) => (d.open = true));
  await page.screenshot({ path: path.join(SHOTS, "ui.png"), fullPage: true });
  await page.reload();
  await page.locator(".transfer .done-row:visible").waitFor({ timeout: WAIT });
  check((await page.locator(".transfer").count()) === 2, "a reload shows the same two transfers");

  // The tracker's page lists the swarm.
  const port = new URL(ticket.replace("hayedik://", "http://")).port;
  const trackerPage = await context.newPage();
  await trackerPage.goto(`http://${tracker.first.http}/`);
  await trackerPage.locator(`tr.swarm[data-port="${port}"]`).waitFor({ timeout: WAIT });
  check(true, "the tracker page lists swarm " + port);
  await trackerPage.screenshot({ path: path.join(SHOTS, "tracker-page.png"), fullPage: true });

  // Refusals.
  const noToken = await request(base + "/api/transfers");
  check(noToken.status === 401, "a request without the token is refused (" + noToken.status + ")");
  const cookie = (await context.cookies()).map((c) => `${c.name}=${c.value}`).join("; ");
  const body = JSON.stringify({ path: path.join(src, "holiday.bin") });
  const csrf = await request(base + "/api/share", {
    method: "POST",
    headers: { cookie, origin: "http://evil.example", "content-type": "application/json" },
    body,
  });
  check(csrf.status === 403, "a POST with a foreign Origin is refused (" + csrf.status + ")");
  const inPage = await page.evaluate(async () => (await fetch("/api/transfers")).status);
  check(inPage === 200, "the page's own requests pass");
  check(problems.length === 0, "no script error on the page: " + problems.join(" | "));

  await browser.close();
  browser = null;
  check((await stop(ui.child)) === 0, "ui exits 0 on SIGTERM");
  check((await stop(tracker.child)) === 0, "tracker exits 0 on SIGTERM");
  console.log(`browser test: all ${checks} checks ok`);
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  clearTimeout(deadline);
  fs.rmSync(work, { recursive: true, force: true });
}

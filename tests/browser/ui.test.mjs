// The web page in Debian's Chromium, driven by playwright-core through
// node's own test runner. Started by tests/browser.rs, which runs the real
// `photolabel serve` and passes: BASE_URL, API_KEY, LIMITED_KEY (1 call a
// minute), FIXTURES (tests/fixtures/photos), CHROMIUM, SCREENSHOT.
//
// Every test opens a fresh browser context (so a fresh sessionStorage),
// collects console errors, page errors and dialogs, and asserts there were
// none that the test did not cause on purpose.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through cargo test --test browser)`);
  return value;
};
const BASE_URL = env("BASE_URL");
const API_KEY = env("API_KEY");
const LIMITED_KEY = env("LIMITED_KEY");
const FIXTURES = env("FIXTURES");
const SCREENSHOT = env("SCREENSHOT");

// A fixture as an upload (playwright takes paths or buffers, not both).
const fixture = (name) => ({ name, mimeType: "image/jpeg", buffer: readFileSync(join(FIXTURES, name)) });
const WAIT = { timeout: 60_000 };

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    // Without these, Chromium tries the network at start-up, which a
    // closed test machine refuses loudly.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
});

// A fresh page on `/`, with what went wrong in it recorded. `expectedStatuses`
// are HTTP statuses the test provokes on purpose: Chromium logs each such
// response as "Failed to load resource" on the console.
async function open({ width = 1100, height = 900 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  const page = await context.newPage();
  const problems = { console: [], page: [], dialogs: [] };
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.console.push(msg.text());
  });
  page.on("pageerror", (error) => problems.page.push(String(error)));
  page.on("dialog", async (dialog) => {
    problems.dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  const response = await page.goto(`${BASE_URL}/`);
  await page.locator('html[data-ready="true"]').waitFor({ state: "attached", ...WAIT });
  const clean = (expectedStatuses = []) => {
    const unexpected = problems.console.filter(
      (text) =>
        !expectedStatuses.some((status) =>
          text.startsWith(`Failed to load resource: the server responded with a status of ${status} `),
        ),
    );
    assert.deepEqual(unexpected, [], "console errors");
    assert.deepEqual(problems.page, [], "uncaught page errors");
    assert.deepEqual(problems.dialogs, [], "dialogs");
  };
  return { context, page, response, problems, clean };
}

async function label(page, { key, files, listing = true }) {
  if (key != null) await page.getByLabel("API key").fill(key);
  await page.locator("#files").setInputFiles(files);
  const box = page.getByRole("checkbox", { name: /Review several photos as one listing/ });
  if ((await box.isChecked()) !== listing) await box.click();
  await page.getByRole("button", { name: "Label photos" }).click();
}

// Waits until no card is still queued, uploading or labelling.
async function settled(page) {
  await page.waitForFunction(
    () => {
      const cards = [...document.querySelectorAll("#photos .card")];
      return cards.length > 0 && cards.every((c) => ["done", "error"].includes(c.dataset.state));
    },
    null,
    WAIT,
  );
  await page.waitForFunction(() => !document.querySelector("#run").disabled, null, WAIT);
}

const names = (page, selector) =>
  page.locator(selector).evaluateAll((nodes) => nodes.map((n) => n.textContent));

describe("the photolabel page", () => {
  it("is served with a strict CSP, weighs under 200 KB and is keyboard-operable", async () => {
    const { context, page, response, clean } = await open();
    const csp = response.headers()["content-security-policy"];
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self';/);
    assert.doesNotMatch(csp, /unsafe/);

    let weight = 0;
    for (const path of ["/", "/ui/app.js", "/ui/app.css"]) {
      const asset = await context.request.get(`${BASE_URL}${path}`);
      assert.equal(asset.status(), 200, path);
      weight += (await asset.body()).length;
    }
    console.log(`page weight (HTML + JS + CSS, uncompressed): ${weight} bytes`);
    assert.ok(weight < 200 * 1024, `${weight} bytes`);

    // Tab order: key → usage → choose photos; Enter in the key field asks
    // for the key's usage.
    const key = page.getByLabel("API key");
    await key.focus();
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.id), "credit-button");
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.id), "choose");
    await key.fill(API_KEY);
    await key.press("Enter");
    await page.locator("#credit:not([hidden])").waitFor(WAIT);
    assert.match(await page.locator("#credit").textContent(), /^Key “browser”: \d+ calls used \(no quota\)$/);

    // Nothing chosen: a plain-words notice, not a request.
    await page.getByRole("button", { name: "Label photos" }).press("Enter");
    assert.equal(
      await page.locator("#notice").textContent(),
      "Choose or drop at least one photo, or paste a photo URL.",
    );

    // The key stays in this tab: sessionStorage, never a cookie or the URL.
    assert.equal(await page.evaluate(() => sessionStorage.getItem("photolabel.api-key")), API_KEY);
    assert.equal(await page.evaluate(() => document.cookie), "");
    assert.ok(!page.url().includes(API_KEY));
    clean();
    await context.close();
  });

  it("labels the kitchen with its confidence", async () => {
    const { context, page, clean } = await open();
    await label(page, { key: API_KEY, files: [fixture("kitchen.jpg")] });
    await settled(page);
    const card = page.locator("#photos .card");
    assert.equal(await card.count(), 1);
    assert.equal(await card.getAttribute("data-state"), "done");
    assert.equal(await card.locator(".name").textContent(), "kitchen.jpg");
    assert.equal(await card.locator('dd[data-field="image"] .value').getAttribute("data-value"), "indoor");
    const room = card.locator('dd[data-field="room"]');
    assert.equal(await room.locator(".value").getAttribute("data-value"), "kitchen");
    const pct = await room.locator(".pct").textContent();
    assert.match(pct, /^\d{1,3}(\.\d{1,2})? %$/);
    assert.ok(Number.parseFloat(pct) > 50, pct);
    // The bar shows the same number.
    const width = await room.locator(".bar span").evaluate((el) => el.style.width);
    assert.equal(width, `${Number.parseFloat(pct)}%`);
    clean();
    await context.close();
  });

  it("says in plain words what went wrong, on the photo it concerns", async () => {
    const { context, page, clean } = await open();
    await label(page, { key: "pl_thisisnotakey", files: [fixture("kitchen.jpg")] });
    await settled(page);
    assert.equal(
      await page.locator("#photos .card .error").textContent(),
      "This API key is not valid: it is unknown or has been revoked.",
    );

    await page.getByLabel("API key").fill("");
    await label(page, { files: [fixture("kitchen.jpg")] });
    await settled(page);
    assert.equal(
      await page.locator("#photos .card .error").textContent(),
      "No API key: enter your key at the top of the page.",
    );

    await label(page, {
      key: API_KEY,
      files: [{ name: "notes.jpg", mimeType: "image/jpeg", buffer: Buffer.from("not a photo at all") }],
    });
    await settled(page);
    assert.equal(
      await page.locator("#photos .card .error").textContent(),
      "Not an image: this file is not a JPEG or PNG photo that can be read.",
    );

    // One call a minute: of two photos sent at once, one is labelled and
    // the other says how long to wait (the server's Retry-After).
    await label(page, {
      key: LIMITED_KEY,
      files: [fixture("kitchen.jpg"), fixture("facade.jpg")],
      listing: false,
    });
    await settled(page);
    const states = await page.locator("#photos .card").evaluateAll((cards) => cards.map((c) => c.dataset.state));
    assert.deepEqual(states.toSorted(), ["done", "error"]);
    assert.match(
      await page.locator("#photos .card .error:not([hidden])").textContent(),
      /^Rate limited: this key has made too many requests; retry in \d+ seconds?\.$/,
    );
    clean([400, 401, 403, 429]);
    await context.close();
  });

  it("shows file names and URLs as text and runs nothing", async () => {
    const { context, page, problems, clean } = await open();
    const name = "<img src=x onerror=alert(1)>.jpg";
    await label(page, {
      key: API_KEY,
      files: [{ name, mimeType: "image/jpeg", buffer: fixture("kitchen.jpg").buffer }],
    });
    await settled(page);
    assert.equal(await page.locator("#photos .card .name").textContent(), name);
    assert.equal(await page.locator('img[src="x"]').count(), 0);
    assert.equal(await page.locator("#photos .card").getAttribute("data-state"), "done");

    // A URL the server refuses (loopback: SSRF protection), shown as text.
    await page.getByRole("button", { name: "Clear" }).click();
    const url = "http://127.0.0.1:9/<b>bold</b>.jpg";
    await page.getByLabel("Or photo URLs, one per line").fill(url);
    await page.getByRole("button", { name: "Label photos" }).click();
    await settled(page);
    assert.equal(await page.locator("#photos .card .name").textContent(), url);
    assert.equal(await page.locator("#photos .card b").count(), 0);
    assert.equal(
      await page.locator("#photos .card .error").textContent(),
      "This URL could not be used: it must be a public http(s) address of a JPEG or PNG photo.",
    );
    assert.deepEqual(problems.dialogs, []);
    clean([400]);
    await context.close();
  });

  it("reviews a listing: order, cover, duplicates, checks; downloads; 360 px", async () => {
    const { context, page, clean } = await open({ width: 1200, height: 1000 });
    // A second shot of the kitchen: re-encoded smaller and at lower quality
    // in a blank page's canvas, as a portal re-upload would be.
    const kitchen = fixture("kitchen.jpg").buffer.toString("base64");
    const blank = await context.newPage();
    const again = await blank.evaluate(async (data) => {
      const img = new Image();
      img.src = `data:image/jpeg;base64,${data}`;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = Math.round(img.width * 0.8);
      canvas.height = Math.round(img.height * 0.8);
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      return canvas.toDataURL("image/jpeg", 0.7).split(",")[1];
    }, kitchen);
    await blank.close();

    const files = [
      fixture("floorplan.jpg"),
      fixture("kitchen.jpg"),
      fixture("street.jpg"),
      fixture("facade.jpg"),
      { name: "kitchen-again.jpg", mimeType: "image/jpeg", buffer: Buffer.from(again, "base64") },
      fixture("bedroom.jpg"),
      fixture("hall_corridor.jpg"),
    ];
    await label(page, { key: API_KEY, files });
    await page.locator("#listing:not([hidden])").waitFor(WAIT);
    await settled(page);

    const cards = await names(page, "#photos > .card > .card-body > .card-head > .name");
    assert.equal(cards.length, 6, `six distinct photos: ${cards}`);
    assert.equal(cards[0], "facade.jpg");
    assert.equal(cards.at(-1), "floorplan.jpg");
    assert.equal(await page.locator("#cover-name").textContent(), "Suggested cover: facade.jpg");
    const covers = await names(page, "#photos > .card.is-cover > .card-body > .card-head > .name");
    assert.deepEqual(covers, ["facade.jpg"]);
    assert.ok(await page.locator("#photos > .card.is-cover .badge.cover").isVisible());

    // The two kitchens: one card, the other listed under it.
    const kept = cards.filter((n) => n.startsWith("kitchen"));
    assert.equal(kept.length, 1, `${cards}`);
    const copies = await names(page, "#photos > .card .duplicate-list .name");
    assert.deepEqual(copies, [kept[0] === "kitchen.jpg" ? "kitchen-again.jpg" : "kitchen.jpg"]);
    const group = page.locator("#photos > .card", { has: page.locator(".duplicate-list li") });
    assert.equal(await group.locator(".card-body > .card-head .name").textContent(), kept[0]);

    // No bathroom among these photos; a facade, a kitchen and a plan are.
    const codes = await page.locator("#checks li").evaluateAll((items) => items.map((li) => li.dataset.code));
    assert.ok(codes.includes("no_bathroom"), `${codes}`);
    assert.ok(codes.includes("duplicates"), `${codes}`);
    for (const code of ["no_exterior", "no_kitchen", "no_floor_plan"]) assert.ok(!codes.includes(code), `${codes}`);
    const inventory = await page
      .locator("#inventory tbody tr")
      .evaluateAll((rows) => Object.fromEntries(rows.map((r) => [r.cells[0].textContent, r.cells[1].textContent])));
    assert.equal(inventory.kitchen, "1", JSON.stringify(inventory));
    assert.equal(inventory.facade, "1", JSON.stringify(inventory));
    // Fixture photos are under 1024 px: every card carries `small`.
    assert.equal(await page.locator('#photos > .card .flags li[data-flag="small"]').count(), 6);

    // The README's picture: the review and the first row of photos.
    await page.evaluate(() => window.scrollTo(0, 0));
    const box = await page.locator("#results").boundingBox();
    const firstRow = await page.locator("#photos > .card").first().boundingBox();
    const height = firstRow.y + firstRow.height + 16 - box.y;
    await page.screenshot({ path: SCREENSHOT, fullPage: true, clip: { x: box.x, y: box.y, width: box.width, height } });

    const [csv] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download CSV" }).click(),
    ]);
    const rows = readFileSync(await csv.path(), "utf8").trim().split("\r\n");
    assert.equal(rows.length, 8, rows.join("\n"));
    assert.match(rows[0], /^name,position,cover,duplicate_of,flags,image_class,/);
    const facadeRow = rows.find((r) => r.startsWith("facade.jpg,"));
    assert.match(facadeRow, /^facade\.jpg,1,true,,small,outdoor,/);
    assert.match(rows.find((r) => r.startsWith("floorplan.jpg,")), /^floorplan\.jpg,6,false,,small,other,/);

    const [json] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download JSON" }).click(),
    ]);
    const report = JSON.parse(readFileSync(await json.path(), "utf8"));
    assert.equal(report.photos.length, 7);
    assert.equal(report.photos[report.cover].name, "facade.jpg");

    // Readable on a phone: nothing wider than a 360 px screen.
    await page.setViewportSize({ width: 360, height: 740 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(overflow <= 360, `${overflow} px wide`);
    clean();
    await context.close();
  });
});

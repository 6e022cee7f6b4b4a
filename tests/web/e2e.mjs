// End-to-end scenarios of the web page (web/) in real Chromium, driven by playwright-core.
// tests/web/test_web_e2e.py starts a real broker (plugin + WebSocket listener serving web/
// with http_dir) and runs this once per scenario:
//   node tests/web/e2e.mjs <scenario> <base url> <artifacts dir> <user tag>
// It prints one line `RESULT {"scenario":…,"ok":…,"error":…}` and exits 0 (ok) or 1.
// Waits are bounded (WAIT_MS) only so that a broken page fails instead of hanging; nothing
// here measures time.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const [scenario, BASE, ARTIFACTS, TAG] = process.argv.slice(2);
const WAIT_MS = 20000;
const PHONE = { width: 390, height: 780 };
const DESKTOP = { width: 1100, height: 720 };
mkdirSync(ARTIFACTS, { recursive: true });

// Debian's chromium; the network is closed, so nothing in the background may try to reach out.
const browser = await chromium.launch({
	executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
	headless: true,
	args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
		'--disable-component-update', '--disable-sync'],
});

const pageErrors = [];
const expectedConsole = [/favicon/];   // console errors a scenario causes on purpose
async function user(name, viewport = DESKTOP, setup = null) {
	const context = await browser.newContext({ viewport });
	if (setup) await setup(context);
	const page = await context.newPage();
	page.setDefaultTimeout(WAIT_MS);
	page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
	page.on('console', (m) => {
		if (m.type() === 'error' && !expectedConsole.some((re) => re.test(m.text()))) pageErrors.push(`${name} console: ${m.text()}`);
	});
	await page.goto(BASE);
	await page.fill('#login-user', name);
	await page.click('#login-submit');
	await page.locator('#chat-view').waitFor({ state: 'visible' });
	await page.locator('#conn-status', { hasText: 'Online' }).waitFor();
	return { name, context, page };
}

const shot = (u, label) => u.page.screenshot({ path: path.join(ARTIFACTS, `${scenario}-${label}-${u.name}.png`) });
const convItem = (u, title) => u.page.locator('#conv-list button', { has: u.page.locator('.name', { hasText: title }) });
// the message whose text is exactly body ("message 1" must not match "message 10")
const msg = (u, body) => u.page.locator('#message-list li').filter({ has: u.page.getByText(body, { exact: true }) });

async function startDirect(a, b) {
	if (!(await a.page.locator('#new-chat').evaluate((d) => d.open))) await a.page.click('#new-chat summary');
	await a.page.fill('#new-direct-user', b.name);
	await a.page.click('#new-direct-form button');
	await a.page.locator('#conv-title', { hasText: b.name }).waitFor();
	const conv = await a.page.evaluate(() => location.hash.slice(1));
	return conv;
}

async function send(u, body) {
	await u.page.fill('#composer-input', body);
	await u.page.press('#composer-input', 'Enter');
	await msg(u, body).waitFor();
}

async function open(u, title) {
	await convItem(u, title).click();
	await u.page.locator('#conv-title', { hasText: title }).waitFor();
}

async function status(u, body, want) {
	await msg(u, body).and(u.page.locator(`li[data-status="${want}"]`)).waitFor();
}

function assert(cond, what) { if (!cond) throw new Error(what); }

const scenarios = {
	// Two users chat: a direct conversation appears for the other side with an unread count,
	// messages flow both ways, and a group shows up for its members.
	async chat() {
		const alice = await user(`alice${TAG}`);
		const bob = await user(`bob${TAG}`, PHONE);
		await startDirect(alice, bob);
		await send(alice, 'Grüß dich, Bob!');
		// unread = last_seq - read_seq (conv.list): the "created" system message and the text
		await convItem(bob, alice.name).filter({ hasText: 'Grüß dich, Bob!' }).locator('.badge', { hasText: /^2$/ }).waitFor();
		await shot(bob, 'list');
		await open(bob, alice.name);
		await msg(bob, 'Grüß dich, Bob!').waitFor();
		await convItem(alice, bob.name).waitFor();
		await send(bob, 'Hi Alice — over MQTT over WebSocket.');
		await msg(alice, 'Hi Alice — over MQTT over WebSocket.').waitFor();
		await send(alice, 'Read ticks, typing, presence: all from the contract.');
		await status(alice, 'Grüß dich, Bob!', 'read');
		// a group: bob sees it appear (conv.added) and gets its messages
		await alice.page.fill('#new-group-name', 'Team');
		await alice.page.fill('#new-group-members', bob.name);
		await alice.page.click('#new-group-form button');
		await alice.page.locator('#conv-title', { hasText: 'Team' }).waitFor();
		await send(alice, 'Welcome to the team');
		await bob.page.click('#back-button');   // on a phone the list and the conversation take turns
		await convItem(bob, 'Team').waitFor();
		await open(bob, 'Team');
		await msg(bob, 'Welcome to the team').waitFor();
		await bob.page.locator('#message-list li.system', { hasText: 'created “Team”' }).waitFor();
		await status(alice, 'Welcome to the team', 'read');
		await open(alice, bob.name);
		await bob.page.click('#back-button');
		await open(bob, alice.name);
		await bob.page.click('#composer-input');
		await bob.page.keyboard.type('Sure, see you at', { delay: 20 });
		await alice.page.locator('#typing', { hasText: 'is typing' }).waitFor();
		await shot(alice, 'desktop');
		await shot(bob, 'phone');
	},

	// "… is typing" shows while the other side types and clears when they send.
	async typing() {
		const alice = await user(`alice${TAG}`);
		const bob = await user(`bob${TAG}`);
		await startDirect(alice, bob);
		await send(alice, 'typing test');
		await open(bob, alice.name);
		await bob.page.click('#composer-input');
		await bob.page.keyboard.type('I am writing', { delay: 30 });
		await alice.page.locator('#typing', { hasText: `${bob.name} is typing…` }).waitFor();
		await shot(alice, 'shown');
		// typing longer than the plugin's ttl (6 s): the page's resends every 2 s keep it shown
		await bob.page.keyboard.type(' and writing'.repeat(3), { delay: 200 });
		await alice.page.locator('#typing', { hasText: `${bob.name} is typing…` }).waitFor({ timeout: 1000 });
		await bob.page.press('#composer-input', 'Enter');
		await msg(alice, 'I am writing and writing and writing and writing').waitFor();
		await alice.page.locator('#typing').filter({ hasText: /^$/ }).waitFor();
		// typing, then deleting the text: "idle" clears it without a message
		await bob.page.keyboard.type('again', { delay: 30 });
		await alice.page.locator('#typing', { hasText: 'is typing' }).waitFor();
		await bob.page.fill('#composer-input', '');
		await bob.page.dispatchEvent('#composer-input', 'input');
		await alice.page.locator('#typing').filter({ hasText: /^$/ }).waitFor();
	},

	// ✓ sent (stored, PUBACK) while the other user is away, ✓✓ delivered when their page
	// receives, ✓✓ read (coloured) when they open the conversation.
	async ticks() {
		const alice = await user(`alice${TAG}`);
		const bobName = `bob${TAG}`;
		// bob exists as a chat user once he has logged in once
		const bob0 = await user(bobName);
		await bob0.context.close();
		await startDirect(alice, { name: bobName });
		await send(alice, 'first, while bob is away');
		await status(alice, 'first, while bob is away', 'sent');
		const bob = await user(bobName);
		await convItem(bob, alice.name).locator('.badge', { hasText: /^2$/ }).waitFor();   // created + first
		await send(alice, 'second, bob is here');
		await status(alice, 'second, bob is here', 'delivered');
		await status(alice, 'first, while bob is away', 'delivered');
		await shot(alice, 'delivered');
		await open(bob, alice.name);
		await status(alice, 'second, bob is here', 'read');
		await status(alice, 'first, while bob is away', 'read');
		await convItem(bob, alice.name).locator('.badge').waitFor({ state: 'detached' });
		await shot(alice, 'read');
	},

	// Presence: online while the other page is open, "last seen" when it closes.
	async presence() {
		const alice = await user(`alice${TAG}`);
		const bob = await user(`bob${TAG}`);
		await startDirect(alice, bob);
		await alice.page.locator('#conv-sub', { hasText: 'online' }).waitFor();
		await convItem(alice, bob.name).locator('.dot.online').waitFor();
		await bob.context.close();   // no DISCONNECT from a killed page: the plugin notices the socket end
		await alice.page.locator('#conv-sub', { hasText: 'last seen' }).waitFor();
		await convItem(alice, bob.name).locator('.dot:not(.online)').waitFor();
		await shot(alice, 'offline');
		const bob2 = await user(bob.name);
		await alice.page.locator('#conv-sub', { hasText: /^online$/ }).waitFor();
		await bob2.context.close();
	},

	// A reload restores the conversation from history, older pages load when scrolling up,
	// and messages sent while the page was closed are there when it comes back.
	async reload() {
		const alice = await user(`alice${TAG}`);
		const bob = await user(`bob${TAG}`);
		await startDirect(alice, bob);
		const n = 40;   // more than one history page (30)
		for (let i = 1; i <= n; i++) {
			await alice.page.fill('#composer-input', `message ${i}`);
			await alice.page.press('#composer-input', 'Enter');
		}
		await msg(alice, `message ${n}`).and(alice.page.locator('li[data-seq]')).waitFor();   // stamped
		await alice.page.reload();
		await alice.page.locator('#conn-status', { hasText: 'Online' }).waitFor();
		await alice.page.locator('#conv-title', { hasText: bob.name }).waitFor();
		await msg(alice, `message ${n}`).waitFor();
		assert(await msg(alice, 'message 1').count() === 0, 'the first page should hold only the newest messages');
		// scrolling to the top loads the older page
		await alice.page.locator('#messages').evaluate((e) => { e.scrollTop = 0; });
		await msg(alice, 'message 1').waitFor();
		assert(await alice.page.locator('#message-list li').count() === n + 1, 'created + all messages, once each');
		// messages sent while alice's page is closed arrive after she comes back
		await alice.page.goto('about:blank');
		await open(bob, alice.name);
		await send(bob, 'sent while you were away');
		await alice.page.goto(BASE + '#' + (await bob.page.evaluate(() => location.hash.slice(1))));
		await msg(alice, 'sent while you were away').waitFor();
		await shot(alice, 'restored');
	},

	// A cut connection: the page reconnects by itself and fills the gap with `history after`
	// (a clean session gets nothing queued, so only the gap fill can bring the missed message).
	async reconnect() {
		// alice's WebSocket goes through Playwright, which can cut it and refuse new ones
		const link = { blocked: false, live: [] };
		const alice = await user(`alice${TAG}`, DESKTOP, (ctx) => ctx.routeWebSocket(/.*/, (ws) => {
			if (link.blocked) { ws.close(); return; }
			link.live.push({ ws, server: ws.connectToServer() });
		}));
		const bob = await user(`bob${TAG}`);
		await startDirect(alice, bob);
		await send(alice, 'before the cut');
		await open(bob, alice.name);
		// Chromium logs a send on the socket being cut (a ping or a receipt in flight)
		expectedConsole.push(/WebSocket is already in CLOSING or CLOSED state/);
		link.blocked = true;
		for (const { ws, server } of link.live.splice(0)) { await server.close(); await ws.close(); }
		await alice.page.locator('#conn-status', { hasText: /reconnecting/i }).waitFor();
		await send(bob, 'while alice was cut off');
		await msg(bob, 'while alice was cut off').and(bob.page.locator('li[data-seq]')).waitFor();
		await shot(alice, 'cut');
		link.blocked = false;
		await alice.page.locator('#conn-status', { hasText: 'Online' }).waitFor();
		await msg(alice, 'while alice was cut off').waitFor();
		await status(bob, 'while alice was cut off', 'read');   // the gap fill acknowledged it
		await send(alice, 'after the cut');
		await msg(bob, 'after the cut').waitFor();
		await shot(alice, 'refilled');
	},

	// Keyboard only: sign in, move through the list with the arrow keys, open, write, send.
	async keyboard() {
		const bob = await user(`bob${TAG}`);
		const carol = await user(`carol${TAG}`);
		const context = await browser.newContext({ viewport: DESKTOP });
		const page = await context.newPage();
		page.setDefaultTimeout(WAIT_MS);
		await page.goto(BASE);
		await page.keyboard.type(`alice${TAG}`);   // the user id field has the focus
		await page.keyboard.press('Enter');
		await page.locator('#conn-status', { hasText: 'Online' }).waitFor();
		const alice = { name: `alice${TAG}`, context, page };
		await startDirect(alice, bob);
		await startDirect(alice, carol);
		await open(bob, alice.name);
		await send(bob, 'from bob');   // bob's conversation is now the newest: first in the list
		await page.locator('#conv-list li:first-child .name', { hasText: bob.name }).waitFor();
		await page.focus('#conv-list li:first-child button');
		await page.keyboard.press('ArrowDown');
		await page.keyboard.press('Enter');
		await page.locator('#conv-title', { hasText: carol.name }).waitFor();
		await page.keyboard.type('typed without a mouse');   // opening puts the focus in the message box
		await page.keyboard.press('Enter');
		await msg(alice, 'typed without a mouse').and(page.locator('li[data-seq]')).waitFor();   // stamped
		await open(carol, alice.name);
		await msg(carol, 'typed without a mouse').waitFor();
	},

	// A broker with `auth jwt`: the token goes in the password field; a refused login is said in
	// words on the form; a reload does not sign in again by itself (the token is never stored).
	async jwt() {
		const { user: name, token, bad } = JSON.parse(process.env.E2E_JWT);
		const context = await browser.newContext({ viewport: PHONE });
		const page = await context.newPage();
		page.setDefaultTimeout(WAIT_MS);
		page.on('pageerror', (e) => pageErrors.push(`jwt: ${e.message}`));
		await page.goto(BASE);
		await page.fill('#login-user', name);
		await page.fill('#login-password', bad);
		await page.click('#login-submit');
		await page.locator('#login-error', { hasText: 'Not authorised to connect.' }).waitFor();
		await page.screenshot({ path: path.join(ARTIFACTS, `${scenario}-refused.png`) });
		await page.fill('#login-password', token);
		await page.click('#login-submit');
		await page.locator('#conn-status', { hasText: 'Online' }).waitFor();
		await page.locator('#me-name', { hasText: name }).waitFor();
		await page.reload();
		await page.locator('#login-view').waitFor({ state: 'visible' });
		assert(await page.inputValue('#login-user') === name, 'the user id is kept for the form');
		assert(await page.inputValue('#login-password') === '', 'the token is not kept');
	},

	// Errors the server sends are shown in words, not codes.
	async errors() {
		const alice = await user(`alice${TAG}`);
		await alice.page.click('#new-chat summary');
		await alice.page.fill('#new-direct-user', alice.name);
		await alice.page.click('#new-direct-form button');
		await alice.page.locator('#app-error', { hasText: 'A value was not accepted.' }).waitFor();
		await alice.page.fill('#new-direct-user', 'not a valid id!');
		await alice.page.click('#new-direct-form button');
		await alice.page.locator('#app-error', { hasText: /not a valid id|A value was not accepted/ }).waitFor();
		const text = await alice.page.locator('#app-error').textContent();
		assert(!/^[a-z_]+$/.test(text.trim()), `error shown as a bare code: ${text}`);
		// a refused send (PUBACK 0x87 + send_failed too_large: 9000 × "ä" is 18000 bytes > max_body)
		// stays in the conversation, marked, with the reason in words
		await startDirect(alice, { name: `bob${TAG}` });
		await alice.page.fill('#composer-input', 'ä'.repeat(9000));
		await alice.page.press('#composer-input', 'Enter');
		await alice.page.locator('#message-list li.failed[data-status="failed"] .fail', { hasText: 'too large' }).waitFor();
		// a wrong login id is refused in the page before anything is sent
		const page2 = await (await browser.newContext()).newPage();
		await page2.goto(BASE);
		await page2.fill('#login-user', 'bad name');
		await page2.click('#login-submit');
		await page2.locator('#login-error', { hasText: 'not a valid id' }).waitFor();
		await shot(alice, 'error');
	},
};

let result;
try {
	if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
	await scenarios[scenario]();
	if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join('\n')}`);
	result = { scenario, ok: true };
} catch (e) {
	for (const ctx of browser.contexts()) {
		for (const [i, p] of ctx.pages().entries()) {
			await p.screenshot({ path: path.join(ARTIFACTS, `${scenario}-FAILED-${browser.contexts().indexOf(ctx)}-${i}.png`) }).catch(() => {});
		}
	}
	result = { scenario, ok: false, error: String(e && e.stack || e), pageErrors };
}
await browser.close();
console.log('RESULT ' + JSON.stringify(result));
process.exit(result.ok ? 0 : 1);

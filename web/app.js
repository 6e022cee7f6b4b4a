/*
 * mosquitto-chat web page: a client of the public contract (shared/PROTOCOL.md,
 * docs/protocol.md) and nothing else, over MQTT 5 on WebSocket with mqtt.js.
 *
 * Requests use MQTT 5 request/response: Response Topic {prefix}/u/{me}/reply and a
 * Correlation Data per request. Every connection is a new clean session (one page = one
 * device); after a reconnect the page asks `history` with `after` = the last seq it
 * holds for every conversation it has loaded, so nothing is missed.
 *
 * URL parameters: ?broker=ws://host:port/ (default: the server that served this page),
 * ?prefix=chat. The open conversation is kept in the location hash.
 */
'use strict';
(function () {
	const params = new URLSearchParams(location.search);
	const PREFIX = params.get('prefix') || 'chat';
	const BROKER = params.get('broker') ||
		`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host || '127.0.0.1:9001'}/`;
	const ID_RE = /^[A-Za-z0-9_.@-]{1,64}$/;
	const PAGE = 30;                 // messages per history page
	const TYPING_RESEND_MS = 2000;   // docs/protocol.md: resend "typing" every typing_interval_ms
	const TYPING_STOP_MS = 3000;     // no keystroke for this long: "idle"
	const REQUEST_TIMEOUT_MS = 15000;

	/* Every error code of the contract (schema/common.json), in words. */
	const ERROR_WORDS = {
		too_large: 'It is too large for the server.',
		invalid_utf8: 'The text is not valid UTF-8.',
		invalid_json: 'The server could not read it (not valid JSON).',
		invalid_id: 'That is not a valid id: use 1–64 letters, digits or _ . @ -.',
		invalid_field: 'A value was not accepted.',
		unknown_field: 'The server does not know one of the fields sent.',
		unknown_op: 'The server does not know this request.',
		not_member: 'You are not a member of this conversation, or it does not exist.',
		forbidden: 'You are not allowed to do that.',
		too_many_members: 'That is more members than a group may have.',
		too_many_devices: 'Too many devices are registered for push.',
		invalid_response_topic: 'The server refused the reply address of the request.',
		not_supported: 'The server does not support this.',
		rate_limited: 'Too fast: wait a moment and try again.',
		store_error: 'The server could not store it; it will be retried.',
		timeout: 'The server did not answer in time.',
	};
	/* MQTT CONNACK reason codes (MQTT 5; 4 and 5 are the 3.1.1 ones). */
	const CONNACK_WORDS = {
		4: 'Wrong user id or password.', 5: 'Not authorised to connect.',
		0x80: 'The server refused the connection.', 0x84: 'The server does not speak MQTT 5.',
		0x85: 'The server refused the client id.', 0x86: 'Wrong user id or password.',
		0x87: 'Not authorised to connect.', 0x88: 'The server is unavailable.', 0x89: 'The server is busy.',
		0x8a: 'This user is banned.', 0x8c: 'Unsupported authentication method.',
		0x97: 'Quota exceeded.', 0x9f: 'Too many connection attempts; wait a moment.',
	};

	function errorText(code, message) {
		const words = ERROR_WORDS[code] || `The server refused it (${code}).`;
		return message ? `${words} (${message})` : words;
	}

	const $ = (id) => document.getElementById(id);
	const el = (tag, cls, text) => {
		const e = document.createElement(tag);
		if (cls) e.className = cls;
		if (text !== undefined) e.textContent = text;
		return e;
	};

	/* ------------------------------------------------------------------ state */
	const S = {
		me: null,
		client: null,
		everConnected: false,
		convs: new Map(),       // conv id -> conversation (newConv)
		presence: new Map(),    // user -> {state, ts}
		pending: new Map(),     // cmid -> {conv, body, status, error}
		requests: new Map(),    // correlation data -> {resolve, reject, timer}
		reqSeq: 0,
		current: null,          // open conversation id
		subscribed: new Set(),  // topic filters subscribed on this connection
		typingSent: 0,          // when "typing" was last sent (0: idle)
		typingConv: null,
		typingTimer: null,
	};

	function newConv(c) {
		return {
			conv: c.conv, type: c.type, name: c.name || null, members: c.members || [],
			lastSeq: c.last_seq || 0, readSeq: c.read_seq || 0, last: c.last || null,
			msgs: new Map(), loaded: false, oldest: 0, highest: 0, hasOlder: false,
			loadingOlder: false, filling: false, deliveredSent: 0,
			counts: new Map(), cursors: new Map(), typing: new Map(),
		};
	}
	const T = (...parts) => [PREFIX, ...parts].join('/');
	const unread = (c) => Math.max(0, c.lastSeq - c.readSeq);
	const others = (c) => c.members.filter((u) => u !== S.me);
	const convName = (c) => (c.type === 'direct' ? (others(c)[0] || S.me) : (c.name || c.conv));

	/* ------------------------------------------------------------------ MQTT */
	function connect(user, password) {
		S.me = user;
		$('login-error').textContent = '';
		$('login-submit').disabled = true;
		const client = mqtt.connect(BROKER, {
			protocolVersion: 5,
			clientId: `web-${user}-${Math.random().toString(36).slice(2, 10)}`,
			username: user,
			password: password || undefined,
			clean: true,
			resubscribe: false,   // we subscribe ourselves on every connect
			reconnectPeriod: 1000,
			connectTimeout: 10000,
			keepalive: 30,
			// The usual presence pattern (PROTOCOL.md): the plugin turns it into server-timed truth.
			will: { topic: T('p', user), payload: '{"state":"offline"}', qos: 1, retain: true },
		});
		S.client = client;
		client.on('connect', onConnect);
		client.on('message', onMqttMessage);
		client.on('reconnect', () => setConn('Reconnecting…'));
		client.on('offline', () => setConn('Offline — reconnecting…'));
		client.on('close', () => { S.subscribed.clear(); if (S.everConnected) setConn('Disconnected — reconnecting…'); });
		client.on('error', (err) => {
			const words = (err && err.code !== undefined && CONNACK_WORDS[err.code]) || (err && err.message) || 'Connection error';
			if (!S.everConnected) {
				client.end(true);
				S.client = null;
				$('login-submit').disabled = false;
				$('login-error').textContent = words;
			} else {
				setConn(words);
			}
		});
		// Before the first CONNACK, an unreachable server shows no error event: say so.
		setTimeout(() => {
			if (!S.everConnected && S.client === client) $('login-error').textContent = `Cannot reach ${BROKER} yet — still trying…`;
		}, 4000);
	}

	function setConn(text) { $('conn-status').textContent = text; }

	function subscribe(filters) {
		const fresh = filters.filter((f) => !S.subscribed.has(f));
		if (!fresh.length || !S.client) return Promise.resolve();
		fresh.forEach((f) => S.subscribed.add(f));
		return new Promise((resolve) => {
			S.client.subscribe(fresh, { qos: 1 }, () => resolve());
		});
	}

	function unsubscribe(filters) {
		filters.forEach((f) => S.subscribed.delete(f));
		if (S.client) S.client.unsubscribe(filters);
	}

	async function onConnect() {
		const first = !S.everConnected;
		S.everConnected = true;
		setConn('Online');
		if (first) showChat();
		S.subscribed.clear();
		await subscribe([T('u', S.me, '+'), T('p', S.me)]);
		S.client.publish(T('p', S.me), '{"state":"online"}', { qos: 1, retain: true });
		try {
			await refreshConvList();
			// Gap fill: everything after the last seq this page holds.
			for (const c of S.convs.values()) if (c.loaded) fillGap(c);
			if (first && location.hash.length > 1 && S.convs.has(location.hash.slice(1))) openConv(location.hash.slice(1));
		} catch (e) {
			showAppError(e);
		}
	}

	/* A request over MQTT 5 request/response; resolves with the reply object, rejects
	 * with {code, message}. */
	function request(op, args) {
		return new Promise((resolve, reject) => {
			if (!S.client || !S.client.connected) { reject({ code: 'timeout', message: 'not connected' }); return; }
			const corr = `r${++S.reqSeq}`;
			const timer = setTimeout(() => { S.requests.delete(corr); reject({ code: 'timeout' }); }, REQUEST_TIMEOUT_MS);
			S.requests.set(corr, { resolve, reject, timer });
			S.client.publish(T('req'), JSON.stringify({ op, ...args }), {
				qos: 1, properties: { responseTopic: T('u', S.me, 'reply'), correlationData: corr },
			});
		});
	}

	function onReply(obj, packet) {
		const cd = packet.properties && packet.properties.correlationData;
		const corr = cd ? new TextDecoder().decode(cd) : null;
		const r = corr && S.requests.get(corr);
		if (!r) return;
		S.requests.delete(corr);
		clearTimeout(r.timer);
		if (obj.ok) r.resolve(obj);
		else r.reject(obj.error || { code: 'invalid_json' });
	}

	function onMqttMessage(topic, payload, packet) {
		const parts = topic.split('/');
		if (parts[0] !== PREFIX || !payload.length) return;
		let obj;
		try { obj = JSON.parse(new TextDecoder().decode(payload)); } catch (e) { return; }
		const [, kind, id, sub] = parts;
		if (kind === 'u' && id === S.me && sub === 'reply') onReply(obj, packet);
		else if (kind === 'u' && id === S.me && sub === 'event') onEvent(obj);
		else if (kind === 'p') onPresence(id, obj);
		else if (kind === 'c' && S.convs.has(id)) {
			const c = S.convs.get(id);
			if (sub === 'm') onMessage(c, obj, true);
			else if (sub === 'typing') onTyping(c, obj);
			else if (sub === 'receipt') onReceipt(c, obj);
		}
	}

	/* ------------------------------------------------------------------ conversations */
	async function refreshConvList() {
		const r = await request('conv.list', {});
		const seen = new Set();
		for (const x of r.conversations) {
			seen.add(x.conv);
			let c = S.convs.get(x.conv);
			if (!c) { c = newConv(x); S.convs.set(x.conv, c); }
			c.type = x.type; c.name = x.name; c.members = x.members;
			c.lastSeq = Math.max(c.lastSeq, x.last_seq);
			c.readSeq = Math.max(c.readSeq, x.read_seq);
			if (x.last && (!c.last || x.last.seq >= c.last.seq)) c.last = x.last;
		}
		for (const id of [...S.convs.keys()]) if (!seen.has(id)) dropConv(id);
		await subscribeConvs();
		renderConvList();
		if (S.current) renderHeader();
	}

	function subscribeConvs() {
		const filters = [];
		for (const c of S.convs.values()) {
			filters.push(T('c', c.conv, '+'));
			for (const u of others(c)) filters.push(T('p', u));
		}
		return subscribe([...new Set(filters)]);
	}

	function dropConv(id) {
		const c = S.convs.get(id);
		if (!c) return;
		S.convs.delete(id);
		unsubscribe([T('c', id, '+')]);
		if (S.current === id) {
			closeConv();
			showAppError(`You are no longer a member of “${convName(c)}”.`);
		}
	}

	function onEvent(ev) {
		if (ev.event === 'conv.added') refreshConvList().catch(showAppError);
		else if (ev.event === 'conv.removed') { dropConv(ev.conv); renderConvList(); }
		else if (ev.event === 'send_failed') {
			const p = ev.cmid && S.pending.get(ev.cmid);
			if (p) {
				p.status = 'failed';
				p.error = errorText(ev.code, ev.message);
				renderPending(ev.cmid);
			} else {
				showAppError(errorText(ev.code, ev.message));
			}
		}
	}

	async function createConv(args) {
		const r = await request('conv.create', args);
		await refreshConvList();
		openConv(r.conv.conv);
	}

	/* ------------------------------------------------------------------ messages */
	/* A stamped message from the topic (live) or from history. */
	function onMessage(c, m, live) {
		if (c.msgs.has(m.seq)) return;
		c.lastSeq = Math.max(c.lastSeq, m.seq);
		if (!c.last || m.seq >= c.last.seq) c.last = m;
		if (m.from === S.me) {
			c.readSeq = Math.max(c.readSeq, m.seq);   // the plugin moved my cursor to it
			if (m.cmid && S.pending.has(m.cmid)) {
				S.pending.delete(m.cmid);
				const li = document.querySelector(`#message-list li[data-cmid="${CSS.escape(m.cmid)}"]`);
				if (li) li.remove();
			}
		} else if (live) {
			c.typing.delete(m.from);   // a message is newer than the typing state it ends
		}
		if (c.loaded) {
			c.msgs.set(m.seq, m);
			while (c.msgs.has(c.highest + 1)) c.highest++;
			if (S.current === c.conv) insertMessage(c, m);
			if (live && m.seq > c.highest) fillGap(c);   // seq jumped: ask for the missing ones
		}
		if (live && m.from !== S.me) acknowledge(c, m.seq);
		renderConvList();
		if (S.current === c.conv) renderTyping();
	}

	/* Receipts this device sends: read when the conversation is in front of the user, else delivered. */
	function acknowledge(c, seq) {
		if (S.current === c.conv && document.visibilityState === 'visible') markRead(c, seq);
		else if (seq > c.deliveredSent && seq > c.readSeq) {
			c.deliveredSent = seq;
			S.client.publish(T('receipt', c.conv), JSON.stringify({ delivered: seq }), { qos: 1 });
		}
	}

	function markRead(c, seq) {
		if (seq <= c.readSeq || !S.client) return;
		c.readSeq = seq;
		S.client.publish(T('receipt', c.conv), JSON.stringify({ read: seq }), { qos: 1 });
		renderConvList();
	}

	async function loadHistory(c, args) {
		const r = await request('history', { conv: c.conv, ...args });
		for (const m of r.messages) onMessage(c, m, false);
		return r;
	}

	async function fillGap(c) {
		if (c.filling) return;
		c.filling = true;
		try {
			let more = true;
			while (more && c.loaded) {
				const r = await loadHistory(c, { after: c.highest, limit: 200 });
				more = r.has_more && r.messages.length > 0;
			}
			if (c.highest) acknowledge(c, c.highest);
			if (S.current === c.conv) await loadCounts(c);
		} catch (e) {
			showAppError(e);
		} finally {
			c.filling = false;
		}
	}

	async function loadOlder(c) {
		if (c.loadingOlder || !c.hasOlder) return;
		c.loadingOlder = true;
		const box = $('messages');
		const list = $('message-list');
		const before = box.scrollHeight;
		list.setAttribute('aria-live', 'off');   // older messages are not news
		try {
			const r = await loadHistory(c, { before: c.oldest, limit: PAGE });
			if (r.messages.length) c.oldest = r.messages[0].seq;
			c.hasOlder = r.has_more;
			box.scrollTop += box.scrollHeight - before;
			await loadCounts(c);
		} catch (e) {
			showAppError(e);
		} finally {
			list.setAttribute('aria-live', 'polite');
			c.loadingOlder = false;
			$('load-older').hidden = !c.hasOlder;
		}
	}

	/* "delivered to / read by N of M" for the loaded messages (then kept fresh by live receipts). */
	async function loadCounts(c) {
		if (!c.loaded || !c.highest) return;
		const after = Math.max(0, c.oldest - 1);
		const r = await request('receipts.counts', { conv: c.conv, after, limit: Math.min(200, c.highest - after) });
		for (const x of r.messages) c.counts.set(x.seq, x);
		if (S.current === c.conv) refreshTicks(c);
	}

	function onReceipt(c, r) {
		if (r.from === S.me) {                       // my other device read it
			if (r.read > c.readSeq) { c.readSeq = r.read; renderConvList(); }
			return;
		}
		c.cursors.set(r.from, { delivered: r.delivered || 0, read: r.read || 0 });
		if (S.current === c.conv) refreshTicks(c);
	}

	/* The tick state of my message seq: sent, delivered (to every other member) or read. */
	function tickState(c, m) {
		const n = c.counts.get(m.seq);
		const of = n ? n.of : Math.max(1, c.members.length - 1);
		let read = n ? n.read_by : 0;
		let delivered = n ? n.delivered_to : 0;
		let liveRead = 0, liveDelivered = 0;
		for (const [u, cur] of c.cursors) {
			if (u === m.from) continue;
			if (cur.read >= m.seq) liveRead++;
			if (cur.delivered >= m.seq || cur.read >= m.seq) liveDelivered++;
		}
		read = Math.max(read, liveRead);
		delivered = Math.max(delivered, liveDelivered, read);
		const status = of > 0 && read >= of ? 'read' : of > 0 && delivered >= of ? 'delivered' : 'sent';
		return { status, read, delivered, of };
	}

	/* ------------------------------------------------------------------ sending */
	function newCmid() {
		const r = crypto.getRandomValues(new Uint32Array(2));
		return `w${Date.now().toString(36)}-${r[0].toString(36)}${r[1].toString(36)}`;
	}

	function sendMessage(c, body) {
		const cmid = newCmid();
		S.pending.set(cmid, { conv: c.conv, body, status: 'pending', error: null });
		renderPending(cmid);
		// mqtt.js keeps QoS 1 publishes while offline and sends them after reconnecting; the cmid makes that safe.
		S.client.publish(T('send', c.conv), JSON.stringify({ cmid, body }), { qos: 1 }, (err) => {
			const p = S.pending.get(cmid);
			if (!p) return;                  // the stamped copy came first
			if (err && err.code >= 0x80) {
				p.status = 'failed';
				p.error = p.error || 'The server refused the message.';
			} else if (!err) {
				p.status = 'sent';
			}
			renderPending(cmid);
		});
	}

	/* Typing: "typing" at once and every TYPING_RESEND_MS while keys come; "idle" when they stop. */
	function onComposerInput() {
		const c = S.convs.get(S.current);
		if (!c || !S.client) return;
		const text = $('composer-input').value;
		if (!text.trim()) { stopTyping(); return; }
		const now = Date.now();
		if (S.typingConv !== c.conv) stopTyping();
		if (!S.typingSent || now - S.typingSent >= TYPING_RESEND_MS) {
			S.client.publish(T('typing', c.conv), '{"state":"typing"}', { qos: 0 });
			S.typingSent = now;
			S.typingConv = c.conv;
		}
		clearTimeout(S.typingTimer);
		S.typingTimer = setTimeout(stopTyping, TYPING_STOP_MS);
	}

	function stopTyping() {
		clearTimeout(S.typingTimer);
		if (S.typingSent && S.typingConv && S.client) {
			S.client.publish(T('typing', S.typingConv), '{"state":"idle"}', { qos: 0 });
		}
		S.typingSent = 0;
		S.typingConv = null;
	}

	function onTyping(c, t) {
		if (t.from === S.me) return;
		if (t.state === 'typing') {
			// Shown for ttl_ms, counted from arrival (ts is server time; the two clocks may differ).
			const ttl = t.ttl_ms || 6000;
			c.typing.set(t.from, Date.now() + ttl);
			setTimeout(() => { if (S.current === c.conv) renderTyping(); }, ttl + 50);
		} else {
			c.typing.delete(t.from);
		}
		if (S.current === c.conv) renderTyping();
	}

	/* ------------------------------------------------------------------ presence */
	function onPresence(user, p) {
		S.presence.set(user, p);
		renderConvList();
		if (S.current) renderHeader();
	}

	function lastSeen(ts) {
		const d = new Date(ts);
		const today = new Date();
		const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
		return d.toDateString() === today.toDateString() ? `last seen today at ${time}` : `last seen ${d.toLocaleDateString()} ${time}`;
	}

	function presenceText(user) {
		const p = S.presence.get(user);
		if (!p) return '';
		return p.state === 'online' ? 'online' : lastSeen(p.ts);
	}

	/* ------------------------------------------------------------------ rendering */
	function showChat() {
		$('login-view').hidden = true;
		$('chat-view').hidden = false;
		$('me-name').textContent = S.me;
		sessionStorage.setItem('chat-user', S.me);
	}

	function showAppError(e) {
		const text = typeof e === 'string' ? e : errorText(e.code, e.message);
		$('app-error').textContent = text;
	}

	function renderConvList() {
		const ul = $('conv-list');
		const focused = document.activeElement && document.activeElement.dataset && document.activeElement.dataset.conv;
		ul.replaceChildren();
		const list = [...S.convs.values()].sort((a, b) =>
			((b.last && b.last.ts) || 0) - ((a.last && a.last.ts) || 0) || a.conv.localeCompare(b.conv));
		for (const c of list) {
			const li = el('li');
			const b = el('button', 'conv-item');
			b.type = 'button';
			b.dataset.conv = c.conv;
			if (S.current === c.conv) b.setAttribute('aria-current', 'true');
			const n = unread(c);
			let label = convName(c);
			if (c.type === 'direct') {
				const other = others(c)[0];
				const on = S.presence.get(other);
				const dot = el('span', `dot${on && on.state === 'online' ? ' online' : ''}`);
				dot.setAttribute('aria-hidden', 'true');
				b.append(dot);
				if (on) label += `, ${presenceText(other)}`;
			} else {
				label += `, group of ${c.members.length}`;
			}
			const text = el('span', 'text');
			text.append(el('span', 'name', convName(c)), el('span', 'last', c.last ? previewOf(c.last) : 'No messages yet'));
			b.append(text);
			if (n > 0) {
				const badge = el('span', 'badge', String(n));
				badge.setAttribute('aria-hidden', 'true');
				b.append(badge);
				label += `, ${n} unread`;
			}
			b.setAttribute('aria-label', label);
			li.append(b);
			ul.append(li);
			if (focused === c.conv) b.focus();
		}
	}

	function previewOf(m) {
		if (m.type === 'system') return systemText(m);
		return `${m.from === S.me ? 'You' : m.from}: ${m.body}`;
	}

	function systemText(m) {
		const who = m.from === S.me ? 'You' : m.from;
		const users = (m.users || []).join(', ');
		switch (m.event) {
			case 'created': return m.name ? `${who} created “${m.name}” with ${users}` : `${who} started the conversation`;
			case 'members_added': return `${who} added ${users}`;
			case 'members_removed': return users === m.from ? `${who} left` : `${who} removed ${users}`;
			case 'renamed': return `${who} renamed the group to “${m.name}”`;
			case 'admin_changed': return `${users} is now an admin`;
			default: return `${who}: ${m.event || 'changed the conversation'}`;
		}
	}

	function renderHeader() {
		const c = S.convs.get(S.current);
		if (!c) return;
		$('conv-title').textContent = convName(c);
		if (c.type === 'direct') {
			$('conv-sub').textContent = presenceText(others(c)[0]);
		} else {
			const online = others(c).filter((u) => (S.presence.get(u) || {}).state === 'online').length;
			$('conv-sub').textContent = `${c.members.length} members: ${c.members.join(', ')} · ${online} online`;
		}
	}

	function renderTyping() {
		const c = S.convs.get(S.current);
		let text = '';
		if (c) {
			const now = Date.now();
			const who = [...c.typing].filter(([, until]) => until > now).map(([u]) => u);
			if (who.length === 1) text = `${who[0]} is typing…`;
			else if (who.length > 1) text = `${who.join(', ')} are typing…`;
		}
		if ($('typing').textContent !== text) $('typing').textContent = text;
	}

	function messageElement(c, m) {
		const li = el('li', 'msg');
		li.dataset.seq = m.seq;
		li.id = `m-${m.seq}`;
		if (m.type === 'system') {
			li.classList.add('system');
			li.textContent = systemText(m);
			return li;
		}
		const mine = m.from === S.me;
		if (mine) li.classList.add('mine');
		if (!mine && c.type === 'group') li.append(el('span', 'from', m.from));
		else if (!mine) li.append(el('span', 'visually-hidden', `${m.from}: `));
		li.append(el('span', 'body', m.body));
		const meta = el('span', 'meta');
		const time = el('time', null, new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
		time.dateTime = new Date(m.ts).toISOString();
		meta.append(time);
		if (mine) meta.append(el('span', 'ticks'));
		li.append(meta);
		if (mine) setTicks(li, tickState(c, m));
		return li;
	}

	const TICKS = {
		pending: ['…', 'sending'], sent: ['✓', 'sent'], delivered: ['✓✓', 'delivered'], read: ['✓✓', 'read'],
		failed: ['!', 'not sent'],
	};

	function setTicks(li, t) {
		const span = li.querySelector('.ticks');
		if (!span) return;
		li.dataset.status = t.status;
		const [sym, words] = TICKS[t.status];
		span.textContent = sym;
		span.className = `ticks ${t.status}`;
		let label = words;
		if (t.of > 1 && (t.status === 'sent' || t.status === 'delivered')) label += `, read by ${t.read} of ${t.of}`;
		span.setAttribute('aria-label', label);
		span.title = label;
	}

	function refreshTicks(c) {
		for (const li of $('message-list').querySelectorAll('li.mine[data-seq]')) {
			const m = c.msgs.get(Number(li.dataset.seq));
			if (m) setTicks(li, tickState(c, m));
		}
	}

	/* Inserts a stamped message in seq order (before the pending ones), keeping the view at the bottom. */
	function insertMessage(c, m) {
		const list = $('message-list');
		const box = $('messages');
		const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
		const li = messageElement(c, m);
		let next = null;
		for (const x of list.children) {
			if (x.dataset.cmid || Number(x.dataset.seq) > m.seq) { next = x; break; }
		}
		list.insertBefore(li, next);
		if ((atBottom || m.from === S.me) && !next) box.scrollTop = box.scrollHeight;
		else if (atBottom && next && next.dataset.cmid) box.scrollTop = box.scrollHeight;
	}

	function renderPending(cmid) {
		const p = S.pending.get(cmid);
		if (!p || p.conv !== S.current) return;
		const list = $('message-list');
		let li = list.querySelector(`li[data-cmid="${CSS.escape(cmid)}"]`);
		if (!li) {
			li = el('li', 'msg mine');
			li.dataset.cmid = cmid;
			li.append(el('span', 'body', p.body));
			const meta = el('span', 'meta');
			meta.append(el('span', 'ticks'));
			li.append(meta);
			list.append(li);
			$('messages').scrollTop = $('messages').scrollHeight;
		}
		setTicks(li, { status: p.status, read: 0, of: 0 });
		li.classList.toggle('failed', p.status === 'failed');
		if (p.status === 'failed') {
			// the PUBACK (0x87) usually comes before the send_failed event that says why
			let f = li.querySelector('.fail');
			if (!f) {
				f = el('span', 'fail');
				f.setAttribute('role', 'alert');
				li.append(f);
			}
			f.textContent = p.error;
			$('messages').scrollTop = $('messages').scrollHeight;
		}
	}

	async function openConv(id) {
		const c = S.convs.get(id);
		if (!c) return;
		stopTyping();
		S.current = id;
		history.replaceState(null, '', `#${id}`);
		$('chat-view').classList.add('conv-shown');
		$('conv-empty').hidden = true;
		$('conv-open').hidden = false;
		$('app-error').textContent = '';
		renderHeader();
		renderTyping();
		renderConvList();
		const list = $('message-list');
		list.setAttribute('aria-live', 'off');   // do not read the whole conversation out on opening
		list.replaceChildren();
		try {
			if (!c.loaded && !c.opening) {
				// The newest page; live messages that come meanwhile are fetched by the gap fill.
				c.opening = true;
				const r = await request('history', { conv: c.conv, limit: PAGE }).finally(() => { c.opening = false; });
				c.loaded = true;
				c.hasOlder = r.has_more;
				c.oldest = r.messages.length ? r.messages[0].seq : c.lastSeq + 1;
				c.highest = c.oldest - 1;
				for (const m of r.messages) onMessage(c, m, false);
				if (c.highest < c.lastSeq) await fillGap(c);
			}
			if (!c.loaded) return;
			if (S.current !== id) return;
			list.replaceChildren();
			for (const seq of [...c.msgs.keys()].sort((a, b) => a - b)) insertMessage(c, c.msgs.get(seq));
			for (const [cmid, p] of S.pending) if (p.conv === id) renderPending(cmid);
			$('load-older').hidden = !c.hasOlder;
			$('messages').scrollTop = $('messages').scrollHeight;
			if (c.lastSeq > c.readSeq && document.visibilityState === 'visible') markRead(c, c.lastSeq);
			await loadCounts(c);
		} catch (e) {
			showAppError(e);
		} finally {
			setTimeout(() => list.setAttribute('aria-live', 'polite'), 0);
		}
	}

	function closeConv() {
		stopTyping();
		S.current = null;
		history.replaceState(null, '', location.pathname + location.search);
		$('chat-view').classList.remove('conv-shown');
		$('conv-open').hidden = true;
		$('conv-empty').hidden = false;
		renderConvList();
	}

	/* ------------------------------------------------------------------ wiring */
	function init() {
		$('login-broker').textContent = BROKER;
		const remembered = sessionStorage.getItem('chat-user');
		if (remembered) $('login-user').value = remembered;
		$('login-form').addEventListener('submit', (ev) => {
			ev.preventDefault();
			const user = $('login-user').value.trim();
			if (!ID_RE.test(user)) {
				$('login-error').textContent = ERROR_WORDS.invalid_id;
				$('login-user').focus();
				return;
			}
			const pw = $('login-password').value;
			sessionStorage.setItem('chat-auto', pw ? '' : '1');
			connect(user, pw);
		});
		// A reload keeps you signed in when no password was needed (the password is never stored).
		if (remembered && sessionStorage.getItem('chat-auto') === '1') connect(remembered, '');
		else $('login-user').focus();

		$('logout-button').addEventListener('click', () => {
			sessionStorage.removeItem('chat-user');
			sessionStorage.removeItem('chat-auto');
			stopTyping();
			if (S.client) S.client.end(false);   // a clean DISCONNECT: the plugin says "offline"
			history.replaceState(null, '', location.pathname + location.search);
			location.reload();
		});
		$('back-button').addEventListener('click', closeConv);

		$('conv-list').addEventListener('click', (ev) => {
			const b = ev.target.closest('button[data-conv]');
			if (b) { openConv(b.dataset.conv); $('composer-input').focus(); }
		});
		$('conv-list').addEventListener('keydown', (ev) => {
			if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
			const items = [...$('conv-list').querySelectorAll('button[data-conv]')];
			const i = items.indexOf(document.activeElement);
			const next = items[ev.key === 'ArrowDown' ? Math.min(items.length - 1, i + 1) : Math.max(0, i - 1)];
			if (next) { next.focus(); ev.preventDefault(); }
		});

		$('new-direct-form').addEventListener('submit', (ev) => {
			ev.preventDefault();
			const user = $('new-direct-user').value.trim();
			createConv({ type: 'direct', with: user })
				.then(() => { $('new-direct-user').value = ''; })
				.catch(showAppError);
		});
		$('new-group-form').addEventListener('submit', (ev) => {
			ev.preventDefault();
			const members = $('new-group-members').value.split(',').map((s) => s.trim()).filter(Boolean);
			createConv({ type: 'group', name: $('new-group-name').value.trim(), members })
				.then(() => { $('new-group-name').value = ''; $('new-group-members').value = ''; })
				.catch(showAppError);
		});

		$('composer').addEventListener('submit', (ev) => {
			ev.preventDefault();
			const c = S.convs.get(S.current);
			const input = $('composer-input');
			const body = input.value;
			if (!c || !body.trim()) return;
			stopTyping();
			sendMessage(c, body);
			input.value = '';
			input.focus();
		});
		$('composer-input').addEventListener('keydown', (ev) => {
			if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
				ev.preventDefault();
				$('composer').requestSubmit();
			}
		});
		$('composer-input').addEventListener('input', onComposerInput);
		$('composer-input').addEventListener('blur', stopTyping);

		$('messages').addEventListener('scroll', () => {
			const c = S.convs.get(S.current);
			if (c && $('messages').scrollTop < 40) loadOlder(c);
		});
		$('load-older').addEventListener('click', () => {
			const c = S.convs.get(S.current);
			if (c) loadOlder(c);
		});
		document.addEventListener('visibilitychange', () => {
			const c = S.convs.get(S.current);
			if (c && document.visibilityState === 'visible' && c.lastSeq > c.readSeq) markRead(c, c.lastSeq);
		});
		document.addEventListener('keydown', (ev) => {
			if (ev.key === 'Escape' && S.current && window.matchMedia('(max-width: 719px)').matches) closeConv();
		});
		setInterval(renderTyping, 1000);
	}

	init();
})();

/*
 * session.c — drives a fresh chat core through its real entry points for
 * one fuzz input (see session.h for the input format and the seeded state).
 *
 * After every call the driver checks what the core asked to publish: each
 * topic is under the prefix and each payload is valid UTF-8 and one JSON
 * value, since clients parse them. A broken promise aborts, which libFuzzer
 * reports like a crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "chat.h"
#include "session.h"

#define G_CONV "g_000000000000"
#define D_CONV "d_111111111111"
#define H_CONV "g_222222222222"
#define LONG_ID "x1234567890123456789012345678901234567890123456789012345678901234"   /* 65 chars */

static struct chat *chat;
static char db_dir[256];
static uint64_t fake_now;
static unsigned random_calls;

static uint64_t clock_ms(void) { return fake_now; }

/* Conversation ids come from getrandom(): this definition in the fuzz binary
 * takes the place of libc's, so the n-th id of a run is kind + "_" + twelve
 * times the n-th base62 digit (g_000000000000, d_111111111111, …) and inputs
 * can name conversations. */
ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
	(void)flags;
	memset(buf, (int)(random_calls++ % 62), len);
	return (ssize_t)len;
}

/* ====================================================================== *
 * Devices and topics
 * ====================================================================== */

#define DEVICES 8
static const char *const dev_user[DEVICES] = {"alice", "bob", "carol", "eve", "bridge", "ops", NULL, "alice"};
static const char dev_conn[DEVICES] = {0};   /* &dev_conn[i] is device i's connection key */

static const char *const convs[8] = {G_CONV, D_CONV, H_CONV, "nope", "bad id", "+", "", LONG_ID};
static const char *const presence_users[8] = {NULL /* me */, "alice", "bob", "eve", "+", "", "bad/id", LONG_ID};

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz session: %s: %s\n", what, detail ? detail : "");
	abort();
}

/* Everything the core queued must be publishable as is. */
static void check_payload(const char *topic, const char *payload, size_t len)
{
	cJSON *v;
	if(!topic || strncmp(topic, "chat/", 5) != 0) fail("publish outside the prefix", topic);
	if(!payload) fail("publish without a payload", topic);
	if(!json__valid_utf8((const unsigned char *)payload, len)) fail("payload is not UTF-8", topic);
	v = cJSON_ParseWithLength(payload, len);
	if(!v) fail("payload is not JSON", topic);
	/* a message (stamped without cJSON on the send path) is the bytes cJSON prints for it */
	if(strlen(topic) > 2 && !strcmp(topic + strlen(topic) - 2, "/m")){
		char *printed = cJSON_PrintUnformatted(v);
		if(!printed || strlen(printed) != len || memcmp(printed, payload, len)) fail("message not as cJSON prints it", topic);
		cJSON_free(printed);
	}
	cJSON_Delete(v);
}

static bool trace;   /* FUZZ_TRACE=1: print every publish in and out */

static void check_outbox(struct chat_outbox *out)
{
	size_t n = 0;
	for(struct outbox_pub *p = out->head; p; p = p->next){
		check_payload(p->topic, p->payload, p->len);
		if(trace) fprintf(stderr, "   -> %s %.*s\n", p->topic, (int)p->len, p->payload);
		n++;
	}
	if(n != out->count) fail("outbox count", NULL);
	outbox__clear(out);
}

/* A copy of exactly len bytes, so reading past the end is caught. */
static void *memdup_exact(const void *p, size_t len)
{
	void *copy = malloc(len ? len : 1);
	if(!copy) fail("out of memory", NULL);
	memcpy(copy, p, len);
	return copy;
}

/* Moves the first line of *p (up to '\n' or the end) into buf as a string. */
static void take_line(char *buf, size_t size, const uint8_t **p, size_t *len)
{
	const uint8_t *nl = memchr(*p, '\n', *len);
	size_t tl = nl ? (size_t)(nl - *p) : *len;
	size_t used = nl ? tl + 1 : tl;

	if(tl >= size) tl = size - 1;
	memcpy(buf, *p, tl);
	buf[tl] = '\0';
	*p += used;
	*len -= used;
}

/* One publish from device dev; returns the verdict. */
static enum chat_verdict publish(int dev, int version, const char *response_topic, const char *topic,
		const void *payload, size_t len, bool honor_acl)
{
	struct chat_client cl = {
		.conn = &dev_conn[dev], .username = dev_user[dev], .client_id = dev_user[dev] ? dev_user[dev] : "anon",
		.protocol_version = version, .response_topic = response_topic, .has_correlation = response_topic != NULL,
	};
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	enum chat_verdict v;
	void *copy;

	copy = memdup_exact(payload, len);
	payload = copy;
	if(honor_acl && acl__check(chat, cl.conn, cl.username, CHAT_ACCESS_WRITE, topic, payload, len) == CHAT_ACL_DENY){
		free(copy);
		return CHAT_REFUSED;
	}
	outbox__init(&out);
	v = chat__handle_publish(chat, &cl, topic, payload, len, &out, &rw);
	if(trace){
		fprintf(stderr, "%s v%d%s%s %s %.*s => verdict %d\n", cl.client_id, version, response_topic ? " rt=" : "",
				response_topic ? response_topic : "", topic, (int)len, (const char *)payload, (int)v);
	}
	check_outbox(&out);
	if(v == CHAT_REWRITE){
		check_payload(topic, rw.payload, rw.len);
		free(rw.payload);
	}else if(rw.payload){
		fail("rewrite payload without CHAT_REWRITE", topic);
	}
	if(v > CHAT_DISCONNECT) fail("verdict out of range", topic);
	free(copy);
	if(v == CHAT_DISCONNECT){
		/* the broker closes the connection: its DISCONNECT event follows */
		struct chat_outbox gone;
		outbox__init(&gone);
		chat__disconnect(chat, cl.conn, &gone);
		check_outbox(&gone);
	}
	return v;
}

static void tick(uint64_t advance_ms)
{
	struct chat_outbox out;
	fake_now += advance_ms;
	outbox__init(&out);
	chat__tick(chat, &out);
	check_outbox(&out);
}

static void disconnect(int dev)
{
	struct chat_outbox out;
	outbox__init(&out);
	chat__disconnect(chat, &dev_conn[dev], &out);
	check_outbox(&out);
}

/* ====================================================================== *
 * A fresh core with the seeded state
 * ====================================================================== */

static void remove_db(void)
{
	char p[300];
	snprintf(p, sizeof(p), "%s/data.mdb", db_dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", db_dir);
	unlink(p);
}

static void cleanup_at_exit(void)
{
	chat__close(chat);
	chat = NULL;
	remove_db();
	rmdir(db_dir);
}

static void seed(int dev, const char *topic, const char *payload)
{
	enum chat_verdict v = publish(dev, 5, NULL, topic, payload, strlen(payload), true);
	if(v != CHAT_CONSUMED) fail("seeding failed", payload);
}

/* Opens the core on db_dir (as it is) with the fuzz configuration. */
static void core_open(void)
{
	static const char *const opts[][2] = {
		{"map_size", "1M"}, {"fsync", "off"}, {"sync_interval_ms", "0"},
		{"max_members", "6"}, {"max_body", "300"}, {"max_payload", "2048"}, {"history_limit", "20"},
		{"receipt_fanout_max", "2"}, {"typing_fanout_max", "2"},
		{"typing_interval_ms", "500"}, {"typing_ttl_ms", "5000"}, {"presence_grace_ms", "1000"},
		{"observers", "ops"}, {"push_users", "bridge"}, {"push_window_ms", "0"}, {"push_retry_ms", "30000"},
		{"push_max_devices", "2"}, {"push_preview", "on"},
		/* small buckets (after what the seeding spends), so refusals are reached */
		{"rate_send", "1"}, {"rate_send_burst", "5"}, {"rate_request", "2"}, {"rate_request_burst", "8"},
		{"rate_receipt", "1"}, {"rate_receipt_burst", "4"}, {"rate_typing", "1"}, {"rate_typing_burst", "3"},
	};
	struct chat_config cfg;
	char err[256];

	config__defaults(&cfg);
	if(config__set(&cfg, "db_path", db_dir, err, sizeof(err))) fail("config", err);
	for(size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++){
		if(config__set(&cfg, opts[i][0], opts[i][1], err, sizeof(err))) fail("config", err);
	}
	if(chat__open(&chat, &cfg, err, sizeof(err))){
		config__free(&cfg);
		fail("chat__open", err);
	}
	chat->now_ms = clock_ms;
}

/* A broker restart: the core closes and opens again on the same LMDB and
 * republishes the stored presence, as the plugin does at start. */
static void core_restart(void)
{
	struct chat_outbox out;
	chat__close(chat);
	chat = NULL;
	core_open();
	outbox__init(&out);
	presence__startup(chat, &out);
	check_outbox(&out);
}

static void session_open(void)
{
	if(!db_dir[0]){
		const char *tmp = getenv("TMPDIR");
		snprintf(db_dir, sizeof(db_dir), "%s/chat-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
		if(!mkdtemp(db_dir)) fail("mkdtemp", db_dir);
		atexit(cleanup_at_exit);
		trace = getenv("FUZZ_TRACE") && *getenv("FUZZ_TRACE") == '1';
	}
	remove_db();
	fake_now = 1763900000000ULL;
	core_open();
	random_calls = 0;   /* after the store's own getrandom (its cache's hash seed): ids start at 0 */

	/* devices: 0 alice, 1 bob, 2 carol */
	seed(0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"team\",\"members\":[\"bob\",\"carol\"]}");
	seed(0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"bob\"}");
	seed(2, "chat/req", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"other\",\"members\":[\"bob\"]}");
	seed(1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"fcm\",\"token\":\"tok-bob\",\"locale\":\"en\"}");
	seed(2, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"webhook\",\"token\":\"tok-carol\"}");
	seed(1, "chat/send/" D_CONV, "{\"cmid\":\"b1\",\"body\":\"hi alice\"}");
	seed(1, "chat/receipt/" G_CONV, "{\"read\":1}");
	disconnect(1);
	disconnect(2);
	tick(2000);                                   /* bob and carol go offline */
	seed(0, "chat/send/" G_CONV, "{\"cmid\":\"a1\",\"body\":\"hello team\"}");
	seed(0, "chat/send/" D_CONV, "{\"cmid\":\"a2\",\"body\":\"hi bob\",\"reply_to\":1}");
	tick(10);                                     /* jobs 1-2 go out, unacked */
	seed(0, "chat/send/" D_CONV, "{\"cmid\":\"a3\",\"type\":\"text\",\"body\":\"still there?\"}");
	seed(0, "chat/typing/" D_CONV, "{\"state\":\"typing\"}");
}

static void session_close(void)
{
	chat__close(chat);
	chat = NULL;
	remove_db();
}

/* ====================================================================== *
 * One chunk
 * ====================================================================== */

/* Writes the topic of a chunk into buf; *payload and *len may be moved past a
 * topic carried in the payload. */
static void chunk_topic(char *buf, size_t size, enum fuzz_topics topics, unsigned sel, int dev,
		const uint8_t **payload, size_t *len)
{
	static const char *const any[15] = {
		"send/" G_CONV, "send/" D_CONV, "send/" H_CONV, "req", "typing/" G_CONV, "typing/" D_CONV,
		"receipt/" G_CONV, "receipt/" D_CONV, "p/", "p/bob", "push/ack", "push/status",
		"c/" G_CONV "/m", "u/", "send/nope",
	};
	const char *me = dev_user[dev] ? dev_user[dev] : "anon";
	const char *pu;

	switch(topics){
		case FUZZ_T_SEND: snprintf(buf, size, "chat/send/%s", convs[sel & 7]); return;
		case FUZZ_T_TYPING: snprintf(buf, size, "chat/typing/%s", convs[sel & 7]); return;
		case FUZZ_T_RECEIPT: snprintf(buf, size, "chat/receipt/%s", convs[sel & 7]); return;
		case FUZZ_T_REQ: snprintf(buf, size, "chat/req"); return;
		case FUZZ_T_PUSH_ACK: snprintf(buf, size, "chat/push/ack"); return;
		case FUZZ_T_PRESENCE:
			pu = presence_users[sel & 7];
			snprintf(buf, size, "chat/p/%s", pu ? pu : me);
			return;
		default:
			break;
	}
	if((sel & 15) < 15){
		/* "p/" and "u/" are completed with the publisher's own name */
		const char *t = any[sel & 15];
		bool own = !strcmp(t, "p/") || !strcmp(t, "u/");
		snprintf(buf, size, "chat/%s%s%s", t, own ? me : "", !strcmp(t, "u/") ? "/reply" : "");
		return;
	}
	take_line(buf, size, payload, len);   /* the topic is the payload's first line */
}

static void run_acl(int dev, unsigned ctl, const uint8_t *payload, size_t len)
{
	static const enum chat_access access[4] = {
		CHAT_ACCESS_READ, CHAT_ACCESS_WRITE, CHAT_ACCESS_SUBSCRIBE, CHAT_ACCESS_UNSUBSCRIBE,
	};
	char topic[1024];
	struct topic_ref ref;
	bool lead;
	void *copy;

	take_line(topic, sizeof(topic), &payload, &len);
	topic__parse(&chat->cfg, topic, &ref, &lead);
	copy = memdup_exact(payload, len);
	acl__check(chat, &dev_conn[dev], dev_user[dev], access[(ctl >> 3) & 3], topic, len ? copy : NULL, len);
	free(copy);
}

static void run_chunk(enum fuzz_topics topics, const uint8_t *chunk, size_t n)
{
	unsigned ctl = chunk[0], sel = chunk[1];
	int dev = (int)(ctl & 7);
	int version = ctl & 8 ? 5 : 4;
	const uint8_t *payload = chunk + 2;
	size_t len = n - 2;
	char topic[CHAT_TOPIC_MAX * 4], rt[CHAT_TOPIC_MAX];
	const char *me = dev_user[dev] ? dev_user[dev] : "anon";
	const char *response_topic = NULL;

	if(topics == FUZZ_T_ACL){
		run_acl(dev, ctl, payload, len);
		return;
	}
	if(version == 5){
		switch((ctl >> 4) & 3){
			case 1: snprintf(rt, sizeof(rt), "chat/u/%s/r", me); response_topic = rt; break;
			case 2: snprintf(rt, sizeof(rt), "chat/u/%s/r", dev == 0 ? "bob" : "alice"); response_topic = rt; break;
			case 3: snprintf(rt, sizeof(rt), "chat/u/%s/#", me); response_topic = rt; break;
			default: break;
		}
	}
	chunk_topic(topic, sizeof(topic), topics, sel, dev, &payload, &len);
	publish(dev, version, response_topic, topic, payload, len, !(sel & 16));

	switch(ctl >> 6){
		case 1: tick(1000); break;
		case 2: disconnect(dev); break;
		case 3: tick(120000); break;
		default: break;
	}
	if(sel & 32) core_restart();
}

int fuzz_session_run(const uint8_t *data, size_t size, enum fuzz_topics topics)
{
	size_t chunks = 0;

	session_open();
	while(size > 0 && chunks < FUZZ_MAX_CHUNKS){
		const uint8_t *sep = memchr(data, FUZZ_SEP, size);
		size_t n = sep ? (size_t)(sep - data) : size;
		if(n >= 2) run_chunk(topics, data, n);
		chunks++;
		if(!sep) break;
		size -= n + 1;
		data = sep + 1;
	}
	session_close();
	return 0;
}

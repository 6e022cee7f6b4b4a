/* Token buckets: the arithmetic, and the core's refusals on a fake clock. */
#include "chat.h"
#include "check.h"
#include "publish.h"

static struct chat *chat;
static uint64_t fake_now = 1763900000000ULL;
static uint64_t clock_ms(void) { return fake_now; }
static char conns[8];   /* device n of a user publishes as connection &conns[n] */

/* Publishes as user (device n); returns the verdict and the first outbox
 * entry whose topic ends with suffix, parsed. */
static enum chat_verdict pub(const char *user, int dev, const char *topic, const char *payload, const char *suffix,
		cJSON **first)
{
	struct chat_client c = {.conn = &conns[dev], .username = user, .client_id = user, .protocol_version = 5};
	return publish_through_core(chat, &c, topic, payload, suffix, first);
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItem(o, k);
	return cJSON_IsString(it) ? it->valuestring : "";
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItem(o, k);
	return cJSON_IsNumber(it) ? it->valuedouble : -1;
}

static void arithmetic(void)
{
	uint64_t m;
	uint32_t retry = 0;

	/* refill: rate milli-tokens per ms, capped at the burst */
	CHECK_EQ_INT(ratelimit__refill(0, 10, 30, 0), 0);
	CHECK_EQ_INT(ratelimit__refill(0, 10, 30, 100), 1000);          /* 10/s: one token per 100 ms */
	CHECK_EQ_INT(ratelimit__refill(0, 10, 30, 99), 990);
	CHECK_EQ_INT(ratelimit__refill(0, 10, 30, 3000), 30000);         /* exactly full */
	CHECK_EQ_INT(ratelimit__refill(0, 10, 30, 3001), 30000);         /* never over */
	CHECK_EQ_INT(ratelimit__refill(29500, 10, 30, UINT64_MAX), 30000);  /* no overflow */
	CHECK_EQ_INT(ratelimit__refill(30000, 10, 30, 5), 30000);
	CHECK_EQ_INT(ratelimit__refill(0, 1000000, 1000000, UINT64_MAX / 2), 1000000000ULL);

	/* take: one token, else how long until one is due (rounded up) */
	m = 1000;
	CHECK(ratelimit__take_one(&m, 10, &retry));
	CHECK_EQ_INT(m, 0);
	CHECK(!ratelimit__take_one(&m, 10, &retry));
	CHECK_EQ_INT(retry, 100);
	m = 999;
	CHECK(!ratelimit__take_one(&m, 10, &retry));
	CHECK_EQ_INT(retry, 1);
	CHECK_EQ_INT(m, 999);                                             /* a refusal takes nothing */
	m = 0;
	CHECK(!ratelimit__take_one(&m, 3, &retry));
	CHECK_EQ_INT(retry, 334);                                         /* ceil(1000 / 3) */
	m = 0;
	CHECK(!ratelimit__take_one(&m, 1000000, &retry));
	CHECK_EQ_INT(retry, 1);
}

/* Persistent flooders: a connection refused more than rate_disconnect_after
 * times in a row for one kind is dropped (CHAT_DISCONNECT), not answered. */
static void kicks(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], t_send[96], t_typ[96], line[400];
	struct chat_client c0 = {.conn = &conns[0], .username = "alice", .client_id = "alice-phone"};
	struct chat_config cfg;
	struct chat_outbox out;
	cJSON *r;
	int refused, kicked;

	config__defaults(&cfg);
	CHECK_EQ_INT(cfg.rate_disconnect_after, 100);
	CHECK_EQ_INT(config__set(&cfg, "rate_disconnect_after", "-1", err, sizeof(err)), -1);
	CHECK(strstr(err, "rate_disconnect_after") != NULL);
	CHECK_EQ_INT(config__set(&cfg, "rate_disconnect_after", "1000001", err, sizeof(err)), -1);
	CHECK_EQ_INT(config__set(&cfg, "rate_disconnect_after", "3x", err, sizeof(err)), -1);
	CHECK_EQ_INT(config__set(&cfg, "rate_disconnect_after", "3", err, sizeof(err)), 0);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "rate_send", "10", err, sizeof(err));
	config__set(&cfg, "rate_send_burst", "1", err, sizeof(err));
	config__set(&cfg, "rate_typing", "10", err, sizeof(err));
	config__set(&cfg, "rate_typing_burst", "1", err, sizeof(err));
	config__set(&cfg, "rate_request", "1000", err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	pub("alice", 0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"bob\"}", "/reply", &r);
	snprintf(conv, sizeof(conv), "%s", str(cJSON_GetObjectItem(r, "conv"), "conv"));
	cJSON_Delete(r);
	snprintf(t_send, sizeof(t_send), "chat/send/%s", conv);
	snprintf(t_typ, sizeof(t_typ), "chat/typing/%s", conv);

	/* the burst, then 3 refusals in a row, each answered; the 4th drops the
	 * connection with no answer at all */
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"k0\",\"body\":\"x\"}", "/m", &r), CHAT_CONSUMED);
	cJSON_Delete(r);
	for(int i = 1; i <= 3; i++){
		CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
		CHECK_EQ_STR(str(r, "code"), "rate_limited");
		cJSON_Delete(r);
	}
	CHECK(chat->rate_conns != NULL);
	/* other kinds keep their own runs: an accepted request ends nothing here */
	pub("alice", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	/* another device of the same user (its own run), another user: answered */
	CHECK_EQ_INT(pub("alice", 1, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	cJSON_Delete(r);
	CHECK_EQ_INT(pub("bob", 2, t_send, "{\"cmid\":\"b1\",\"body\":\"x\"}", "/m", &r), CHAT_CONSUMED);
	cJSON_Delete(r);
	CHECK_EQ_INT(chat->stats.kicked, 0);
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_DISCONNECT);
	CHECK(r == NULL);
	CHECK_EQ_INT(chat->stats.kicked, 1);
	/* probation: for a minute, a connection of alice that got nothing
	 * through goes at its first refusal (a flooder reconnecting at once)... */
	CHECK_EQ_INT(pub("alice", 4, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_DISCONNECT);
	CHECK(r == NULL);
	CHECK_EQ_INT(chat->stats.kicked, 2);
	/* ...one that did has the usual allowance */
	fake_now += 100;
	CHECK_EQ_INT(pub("alice", 5, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/m", &r), CHAT_CONSUMED);
	cJSON_Delete(r);
	for(int i = 1; i <= 3; i++){
		CHECK_EQ_INT(pub("alice", 5, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
		cJSON_Delete(r);
	}
	CHECK_EQ_INT(pub("alice", 5, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/event", &r), CHAT_DISCONNECT);
	cJSON_Delete(r);
	/* other users are on no probation (bob's first takes the token of the 100 ms) */
	pub("bob", 2, t_send, "{\"cmid\":\"b2\",\"body\":\"x\"}", "/m", &r);
	cJSON_Delete(r);
	CHECK_EQ_INT(pub("bob", 2, t_send, "{\"cmid\":\"b2\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	cJSON_Delete(r);
	CHECK_EQ_INT(chat->stats.kicked, 3);
	outbox__init(&out);
	chat__disconnect(chat, &conns[4], &out);
	chat__disconnect(chat, &conns[5], &out);
	chat__disconnect(chat, &conns[2], &out);
	outbox__clear(&out);
	/* the log line: once per user per minute, then with the kicks not logged */
	CHECK(ratelimit__kick_note(chat, &c0, line, sizeof(line)));
	CHECK(strstr(line, "'alice-phone'") && strstr(line, "'alice'") && strstr(line, "4 send publishes"));
	CHECK(strstr(line, "not logged") == NULL);
	CHECK(!ratelimit__kick_note(chat, &c0, line, sizeof(line)));
	fake_now += 30000;
	CHECK(!ratelimit__kick_note(chat, &c0, line, sizeof(line)));
	fake_now += 30000;
	CHECK(ratelimit__kick_note(chat, &c0, line, sizeof(line)));
	CHECK(strstr(line, "2 more kick(s)") != NULL);
	/* the broker then reports the disconnect: the run is forgotten (a new
	 * connection may get the same address) */
	outbox__init(&out);
	chat__disconnect(chat, &conns[0], &out);
	outbox__clear(&out);
	pub("alice", 1, t_send, "{\"cmid\":\"k1\",\"body\":\"x\"}", "/m", &r);   /* device 1: a token, its run ends */
	cJSON_Delete(r);
	CHECK(chat->rate_conns == NULL);
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"k2\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	cJSON_Delete(r);

	/* a client that waits retry_after_ms: at most its window of refusals
	 * per token, never dropped (here 3 refusals, then the token, 20 times) */
	kicked = 0;
	for(int round = 0; round < 20; round++){
		uint32_t retry = 0;
		for(int i = 0; i < 2; i++){
			kicked += pub("alice", 0, t_send, "{\"cmid\":\"k2\",\"body\":\"x\"}", "/event", &r) == CHAT_DISCONNECT;
			retry = (uint32_t)num(r, "retry_after_ms");
			cJSON_Delete(r);
		}
		fake_now += retry;
		kicked += pub("alice", 0, t_send, "{\"cmid\":\"k2\",\"body\":\"x\"}", "/m", &r) == CHAT_DISCONNECT;
		CHECK(r != NULL);
		cJSON_Delete(r);
	}
	CHECK_EQ_INT(kicked, 0);
	CHECK(chat->rate_conns == NULL);

	/* typing refusals are silent but count the same */
	fake_now += 1000;
	CHECK_EQ_INT(pub("alice", 0, t_typ, "{\"state\":\"typing\"}", "/typing", &r), CHAT_CONSUMED);
	cJSON_Delete(r);
	refused = 0;
	while(pub("alice", 0, t_typ, "{\"state\":\"typing\"}", "/typing", &r) == CHAT_CONSUMED && refused < 10){
		CHECK(r == NULL);
		refused++;
	}
	CHECK(r == NULL);
	CHECK_EQ_INT(refused, 3);
	CHECK_EQ_INT(chat->stats.kicked, 4);
	outbox__init(&out);
	chat__disconnect(chat, &conns[0], &out);
	outbox__clear(&out);

	/* 0: never */
	chat->cfg.rate_disconnect_after = 0;
	kicked = 0;
	for(int i = 0; i < 1000; i++){
		kicked += pub("alice", 3, t_send, "{\"cmid\":\"k3\",\"body\":\"x\"}", "/event", &r) == CHAT_DISCONNECT;
		cJSON_Delete(r);
	}
	CHECK_EQ_INT(kicked, 0);
	CHECK(chat->rate_conns == NULL);

	/* kick notes are forgotten a minute after they were logged */
	CHECK(chat->rate_kick_logs != NULL);
	fake_now += 60000;
	outbox__init(&out);
	chat__tick(chat, &out);
	outbox__clear(&out);
	CHECK(chat->rate_kick_logs == NULL);

	chat__close(chat);
	rm_db_dir(dir);
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], t_send[96], t_typ[96], t_rcpt[96], buf[256];
	struct chat_config cfg;
	struct chat_outbox out;
	cJSON *r;
	int ok;

	arithmetic();

	config__defaults(&cfg);
	CHECK_EQ_INT(cfg.rate[CHAT_RATE_SEND], 10);
	CHECK_EQ_INT(cfg.rate_burst[CHAT_RATE_SEND], 30);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	CHECK_EQ_INT(config__set(&cfg, "rate_send", "2", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_send_burst", "3", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_request", "1", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_request_burst", "5", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_typing", "1", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_typing_burst", "1", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_receipt", "0", err, sizeof(err)), 0);   /* unlimited */
	CHECK_EQ_INT(config__set(&cfg, "typing_interval_ms", "0", err, sizeof(err)), 0);
	CHECK_EQ_INT(config__set(&cfg, "rate_send_burst", "0", err, sizeof(err)), -1);
	CHECK(strstr(err, "rate_send_burst") != NULL);
	CHECK_EQ_INT(config__set(&cfg, "rate_typing", "1000001", err, sizeof(err)), -1);
	CHECK_EQ_INT(config__set(&cfg, "rate_request", "-1", err, sizeof(err)), -1);
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	/* requests: 5 at once, the 6th refused with a retry hint (1/s: 1000 ms) */
	CHECK_EQ_INT(pub("alice", 0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"t\",\"members\":[\"bob\"]}",
			"/reply", &r), CHAT_CONSUMED);
	snprintf(conv, sizeof(conv), "%s", str(cJSON_GetObjectItem(r, "conv"), "conv"));
	cJSON_Delete(r);
	CHECK(conv[0] == 'g');
	for(int i = 0; i < 4; i++){
		pub("alice", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);
		CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
		cJSON_Delete(r);
	}
	pub("alice", 1, "chat/req", "{\"op\":\"conv.list\",\"req_id\":7}", "/reply", &r);   /* another device: same bucket */
	CHECK(cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")));
	CHECK_EQ_STR(str(cJSON_GetObjectItem(r, "error"), "code"), "rate_limited");
	CHECK_EQ_INT(num(cJSON_GetObjectItem(r, "error"), "retry_after_ms"), 1000);
	CHECK_EQ_INT(num(r, "req_id"), 7);
	CHECK_EQ_STR(str(r, "op"), "conv.list");
	cJSON_Delete(r);
	pub("bob", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);   /* other users are not affected */
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	fake_now += 999;
	pub("alice", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);
	CHECK_EQ_INT(num(cJSON_GetObjectItem(r, "error"), "retry_after_ms"), 1);
	cJSON_Delete(r);
	fake_now += 1;
	pub("alice", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	/* a refused create stores nothing */
	pub("alice", 0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"carl\"}", "/reply", &r);
	CHECK_EQ_STR(str(cJSON_GetObjectItem(r, "error"), "code"), "rate_limited");
	cJSON_Delete(r);
	fake_now += 1000;
	pub("carl", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "conversations")), 0);
	cJSON_Delete(r);

	/* sends: burst 3, then refused with the cmid echoed and nothing stored */
	snprintf(t_send, sizeof(t_send), "chat/send/%s", conv);
	for(int i = 0; i < 3; i++){
		snprintf(buf, sizeof(buf), "{\"cmid\":\"c%d\",\"body\":\"x\"}", i);
		CHECK_EQ_INT(pub("alice", 0, t_send, buf, "/m", &r), CHAT_CONSUMED);
		CHECK_EQ_INT(num(r, "seq"), 2 + i);
		cJSON_Delete(r);
	}
	CHECK_EQ_INT(pub("alice", 1, t_send, "{\"cmid\":\"c3\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	CHECK_EQ_STR(str(r, "event"), "send_failed");
	CHECK_EQ_STR(str(r, "code"), "rate_limited");
	CHECK_EQ_STR(str(r, "cmid"), "c3");
	CHECK_EQ_STR(str(r, "conv"), conv);
	CHECK_EQ_INT(num(r, "retry_after_ms"), 500);
	cJSON_Delete(r);
	/* a duplicate costs a token too (decided before the payload is read) */
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"c0\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	CHECK_EQ_STR(str(r, "code"), "rate_limited");
	cJSON_Delete(r);
	/* a refused payload that is not JSON still says rate_limited */
	CHECK_EQ_INT(pub("alice", 0, t_send, "not json", "/event", &r), CHAT_REFUSED);
	CHECK_EQ_STR(str(r, "code"), "rate_limited");
	CHECK(cJSON_GetObjectItem(r, "cmid") == NULL);
	cJSON_Delete(r);
	/* the cmid is found without a parse: spacing, a "cmid" inside the body, escapes, a cmid too long */
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"body\":\"say \\\"cmid\\\":\\\"evil\\\"\" , \"cmid\" :\n \"c9\"}", "/event", &r),
			CHAT_REFUSED);
	CHECK_EQ_STR(str(r, "cmid"), "c9");
	cJSON_Delete(r);
	pub("alice", 0, t_send, "{\"cmid\":\"a\\u0041\",\"body\":\"x\"}", "/event", &r);
	CHECK(cJSON_GetObjectItem(r, "cmid") == NULL);
	CHECK_EQ_STR(str(r, "code"), "rate_limited");
	cJSON_Delete(r);
	{
		char big[400];
		snprintf(big, sizeof(big), "{\"cmid\":\"%0300d\",\"body\":\"x\"}", 7);
		pub("alice", 0, t_send, big, "/event", &r);
		CHECK(cJSON_GetObjectItem(r, "cmid") == NULL);
		cJSON_Delete(r);
		snprintf(big, sizeof(big), "{\"cmid\":\"%0256d\",\"body\":\"x\"}", 7);
		pub("alice", 0, t_send, big, "/event", &r);
		CHECK_EQ_INT(strlen(str(r, "cmid")), 256);
		cJSON_Delete(r);
	}
	fake_now += 500;   /* 2/s: one token */
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"c3\",\"body\":\"x\"}", "/m", &r), CHAT_CONSUMED);
	CHECK_EQ_INT(num(r, "seq"), 5);   /* no gap: the refusals stored nothing */
	cJSON_Delete(r);
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"c4\",\"body\":\"x\"}", "/event", &r), CHAT_REFUSED);
	cJSON_Delete(r);

	/* typing over the limit: dropped, nothing published, no refusal */
	snprintf(t_typ, sizeof(t_typ), "chat/typing/%s", conv);
	CHECK_EQ_INT(pub("bob", 0, t_typ, "{\"state\":\"typing\"}", "/typing", &r), CHAT_CONSUMED);
	CHECK(r != NULL);
	cJSON_Delete(r);
	CHECK_EQ_INT(pub("bob", 0, t_typ, "{\"state\":\"idle\"}", "/typing", &r), CHAT_CONSUMED);
	CHECK(r == NULL);
	CHECK_EQ_INT(pub("bob", 0, t_typ, "{\"state\":\"idle\"}", "/event", &r), CHAT_CONSUMED);
	CHECK(r == NULL);

	/* receipts: rate_receipt 0 is unlimited */
	snprintf(t_rcpt, sizeof(t_rcpt), "chat/receipt/%s", conv);
	ok = 0;
	for(int i = 1; i <= 5; i++){
		snprintf(buf, sizeof(buf), "{\"read\":%d}", i);
		ok += pub("bob", 0, t_rcpt, buf, "/receipt", &r) == CHAT_CONSUMED && r;
		cJSON_Delete(r);
	}
	CHECK_EQ_INT(ok, 5);

	/* memory: entries whose buckets are full again are swept on the tick */
	CHECK(ratelimit__tracked(chat) >= 2);
	outbox__init(&out);
	fake_now += 2000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(ratelimit__tracked(chat), 1);   /* bob and carl are full; alice's request bucket is still refilling */
	fake_now += 10000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(ratelimit__tracked(chat), 0);
	outbox__clear(&out);
	/* a clock that steps back refills nothing and breaks nothing */
	fake_now -= 60000;
	CHECK_EQ_INT(pub("alice", 0, t_send, "{\"cmid\":\"c5\",\"body\":\"x\"}", "/m", &r), CHAT_CONSUMED);
	cJSON_Delete(r);

	chat__close(chat);
	rm_db_dir(dir);
	kicks();
	CHECK_DONE();
}

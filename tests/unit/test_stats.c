/* Operator stats (stats.c) driven without a broker: counters, rates over the
 * interval, the retained publish on the tick, and the read ACL of the topic. */
#include "chat.h"
#include "check.h"

static struct chat *chat;
static uint64_t fake_now = 1763900000000ULL;
static uint64_t clock_ms(void) { return fake_now; }

static enum chat_verdict pub(const char *user, const char *topic, const char *payload)
{
	static char conn;
	struct chat_client c = {.conn = &conn, .username = user, .client_id = user, .protocol_version = 4};
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	enum chat_verdict v;

	outbox__init(&out);
	v = chat__handle_publish(chat, &c, topic, payload, strlen(payload), &out, &rw);
	free(rw.payload);
	outbox__clear(&out);
	return v;
}

/* Ticks once; returns the stats published (parsed), or NULL if none. */
static cJSON *tick(void)
{
	struct chat_outbox out;
	cJSON *stats = NULL;

	outbox__init(&out);
	chat__tick(chat, &out);
	for(struct outbox_pub *p = out.head; p; p = p->next){
		if(!strcmp(p->topic, "chat/stats")){
			CHECK(p->retain);
			CHECK_EQ_INT(p->qos, 0);
			CHECK_EQ_INT(p->target, OUTBOX_ALL);
			stats = cJSON_ParseWithLength(p->payload, p->len);
		}
	}
	outbox__clear(&out);
	return stats;
}

static double num(const cJSON *o, const char *a, const char *b)
{
	const cJSON *it = cJSON_GetObjectItem(o, a);
	if(b) it = cJSON_GetObjectItem(it, b);
	return cJSON_IsNumber(it) ? it->valuedouble : -1;
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], topic[96];
	struct chat_config cfg;
	cJSON *s;

	config__defaults(&cfg);
	CHECK_EQ_INT(cfg.stats_interval_ms, 10000);
	CHECK_EQ_INT(config__set(&cfg, "stats_interval_ms", "10s", err, sizeof(err)), -1);
	CHECK(strstr(err, "stats_interval_ms") != NULL);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "observers", "ops", err, sizeof(err));
	CHECK_EQ_INT(config__set(&cfg, "stats_interval_ms", "1000", err, sizeof(err)), 0);
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	/* the first tick starts the interval; nothing is due before it ends */
	CHECK(tick() == NULL);
	fake_now += 999;
	CHECK(tick() == NULL);

	/* traffic: a conversation (1 request), 2 sends, 2 refusals, a history,
	 * an unknown op */
	CHECK_EQ_INT(pub("alice", "chat/req", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"bob\",\"req_id\":\"1\"}"),
			CHAT_CONSUMED);
	{
		struct store_txn *txn;
		char conv[65];
		CHECK_EQ_INT(store__begin(chat->store, false, &txn), STORE_OK);
		CHECK_EQ_INT(store__direct_get(txn, "alice", "bob", conv), STORE_OK);
		store__abort(txn);
		snprintf(topic, sizeof(topic), "chat/send/%s", conv);
	}
	CHECK_EQ_INT(pub("alice", topic, "{\"cmid\":\"a1\",\"body\":\"one\"}"), CHAT_CONSUMED);
	CHECK_EQ_INT(pub("bob", topic, "{\"cmid\":\"b1\",\"body\":\"two\"}"), CHAT_CONSUMED);
	CHECK_EQ_INT(pub("bob", topic, "{\"cmid\":\"b1\",\"body\":\"two\"}"), CHAT_CONSUMED);   /* duplicate */
	CHECK_EQ_INT(pub("eve", topic, "{\"cmid\":\"e1\",\"body\":\"no\"}"), CHAT_REFUSED);
	CHECK_EQ_INT(pub("alice", topic, "{\"cmid\":\"a2\"}"), CHAT_REFUSED);
	CHECK_EQ_INT(pub("alice", "chat/req", "{\"op\":\"history\",\"conv\":\"d_000000000000\",\"req_id\":\"2\"}"),
			CHAT_CONSUMED);
	CHECK_EQ_INT(pub("alice", "chat/req", "{\"op\":\"nope\",\"req_id\":\"3\"}"), CHAT_CONSUMED);

	fake_now += 1;   /* the interval (1000 ms) is over */
	s = tick();
	CHECK(s != NULL);
	if(s){
		CHECK_EQ_INT(num(s, "interval_ms", NULL), 1000);
		CHECK_EQ_INT(num(s, "messages", "total"), 2);
		CHECK(num(s, "messages", "per_s") == 2.0);
		CHECK_EQ_INT(num(s, "requests", "total"), 3);
		CHECK_EQ_INT(num(s, "history_requests", "total"), 1);
		CHECK_EQ_INT(num(s, "refusals", "total"), 2);
		CHECK_EQ_INT(num(cJSON_GetObjectItem(s, "refusals"), "by_code", "not_member"), 1);
		CHECK_EQ_INT(num(cJSON_GetObjectItem(s, "refusals"), "by_code", "invalid_field"), 1);
		CHECK_EQ_INT(num(s, "request_errors", "total"), 2);   /* history of a conv that does not exist, nope */
		CHECK_EQ_INT(num(cJSON_GetObjectItem(s, "request_errors"), "by_code", "unknown_op"), 1);
		CHECK_EQ_INT(num(s, "devices", NULL), 1);             /* one fake connection */
		CHECK_EQ_INT(num(s, "kicked", NULL), 0);
		CHECK(num(s, "store", "map_used_bytes") > 0);
		CHECK(num(s, "store", "map_bytes") == (double)((size_t)4 << 30));
		CHECK_EQ_INT(num(s, "store", "push_outbox"), 0);
		CHECK(cJSON_IsString(cJSON_GetObjectItem(s, "version")));
		cJSON_Delete(s);
	}
	/* the next interval: no traffic, rates back to 0, totals kept */
	CHECK(tick() == NULL);
	fake_now += 2000;
	s = tick();
	CHECK(s != NULL);
	if(s){
		CHECK_EQ_INT(num(s, "interval_ms", NULL), 2000);
		CHECK_EQ_INT(num(s, "messages", "total"), 2);
		CHECK(num(s, "messages", "per_s") == 0.0);
		cJSON_Delete(s);
	}

	/* the topic: observers read, nobody writes, nobody else reads */
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_SUBSCRIBE, "chat/stats", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_READ, "chat/stats", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_WRITE, "chat/stats", "{}", 2), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "alice", CHAT_ACCESS_SUBSCRIBE, "chat/stats", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "alice", CHAT_ACCESS_READ, "chat/stats", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "alice", CHAT_ACCESS_WRITE, "chat/stats", "{}", 2), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, NULL, CHAT_ACCESS_READ, "chat/stats", NULL, 0), CHAT_ACL_DENY);

	/* 0 turns them off */
	chat->cfg.stats_interval_ms = 0;
	fake_now += 60000;
	CHECK(tick() == NULL);

	chat__close(chat);
	rm_db_dir(dir);
	CHECK_DONE();
}

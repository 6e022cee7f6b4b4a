/* The chat core driven without a broker: requests, sends, sequence,
 * idempotency, refusals, ACL and history, on a real LMDB. */
#include <inttypes.h>
#include "chat.h"
#include "check.h"

static struct chat *chat;
static uint64_t fake_now = 1763900000000ULL;
static uint64_t clock_ms(void) { return fake_now++; }

/* Each user name stands for one device: its connection key is the name's
 * first character's address in a table, distinct per user. */
static const void *conn_of(const char *user)
{
	static char conns[32][16];
	for(int i = 0; i < 32; i++){
		if(!conns[i][0]){
			snprintf(conns[i], sizeof(conns[i]), "%s", user);
			return conns[i];
		}
		if(!strcmp(conns[i], user)) return conns[i];
	}
	return NULL;
}

static struct chat_client dev(const char *user)
{
	struct chat_client c = {.conn = conn_of(user), .username = user, .client_id = user, .protocol_version = 5};
	return c;
}

/* Publishes and returns the verdict; *first receives the parsed payload of
 * the first outbox entry whose topic ends with suffix (or NULL). */
static enum chat_verdict pub(const char *user, const char *topic, const char *payload, const char *suffix,
		cJSON **first, size_t *count)
{
	struct chat_client c = dev(user);
	struct chat_outbox out;
	enum chat_verdict v;

	outbox__init(&out);
	struct chat_rewrite rw = {0};
	v = chat__handle_publish(chat, &c, topic, payload, strlen(payload), &out, &rw);
	free(rw.payload);
	if(first) *first = NULL;
	if(count) *count = out.count;
	for(struct outbox_pub *p = out.head; p && first; p = p->next){
		size_t tl = strlen(p->topic), sl = strlen(suffix);
		if(tl >= sl && !strcmp(p->topic + tl - sl, suffix)){
			*first = cJSON_ParseWithLength(p->payload, p->len);
			break;
		}
	}
	outbox__clear(&out);
	return v;
}

/* Runs a request and returns the reply object (caller frees). */
static cJSON *req(const char *user, const char *json)
{
	cJSON *reply;
	CHECK_EQ_INT(pub(user, "chat/req", json, "/reply", &reply, NULL), CHAT_CONSUMED);
	return reply;
}

static const char *err_code(const cJSON *reply)
{
	const cJSON *e = cJSON_GetObjectItem(reply, "error");
	return e ? cJSON_GetObjectItem(e, "code")->valuestring : "none";
}

static const char *send_code(const char *user, const char *topic, const char *payload)
{
	static char code[64];
	cJSON *ev;
	CHECK_EQ_INT(pub(user, topic, payload, "/event", &ev, NULL), CHAT_REFUSED);
	snprintf(code, sizeof(code), "%s", ev ? cJSON_GetObjectItem(ev, "code")->valuestring : "no event");
	cJSON_Delete(ev);
	return code;
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], topic[128], payload[256];
	struct chat_config cfg;
	cJSON *r, *m;

	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "max_members", "4", err, sizeof(err));
	config__set(&cfg, "max_body", "10", err, sizeof(err));
	config__set(&cfg, "observers", "ops", err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	/* a group: alice admin, bob member, seq 1 is the 'created' system message */
	r = req("alice", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"team\",\"members\":[\"bob\",\"alice\"],\"req_id\":7}");
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	CHECK_EQ_INT(cJSON_GetObjectItem(r, "req_id")->valuedouble, 7);
	snprintf(conv, sizeof(conv), "%s", cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring);
	CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "last_seq")->valuedouble, 1);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "members")), 2);
	cJSON_Delete(r);
	snprintf(topic, sizeof(topic), "chat/send/%s", conv);

	/* sends: seq 2..11, contiguous */
	for(int i = 0; i < 10; i++){
		snprintf(payload, sizeof(payload), "{\"cmid\":\"c%d\",\"body\":\"hi\"}", i);
		CHECK_EQ_INT(pub(i % 2 ? "bob" : "alice", topic, payload, "/m", &m, NULL), CHAT_CONSUMED);
		CHECK(m != NULL);
		if(m){
			CHECK_EQ_INT(cJSON_GetObjectItem(m, "seq")->valuedouble, i + 2);
			CHECK_EQ_STR(cJSON_GetObjectItem(m, "from")->valuestring, i % 2 ? "bob" : "alice");
			CHECK_EQ_STR(cJSON_GetObjectItem(m, "type")->valuestring, "text");
		}
		cJSON_Delete(m);
	}
	/* a duplicate cmid stores nothing and re-delivers seq 2 */
	CHECK_EQ_INT(pub("alice", topic, "{\"cmid\":\"c0\",\"body\":\"hi\"}", "/m", &m, NULL), CHAT_CONSUMED);
	CHECK(m && cJSON_GetObjectItem(m, "seq")->valuedouble == 2);
	cJSON_Delete(m);
	/* the same cmid from another user is a new message */
	CHECK_EQ_INT(pub("bob", topic, "{\"cmid\":\"c0\",\"body\":\"yo\",\"reply_to\":2}", "/m", &m, NULL), CHAT_CONSUMED);
	CHECK(m && cJSON_GetObjectItem(m, "seq")->valuedouble == 12);
	CHECK(m && cJSON_GetObjectItem(m, "reply_to")->valuedouble == 2);
	cJSON_Delete(m);

	/* refusals, each with its code */
	CHECK_EQ_STR(send_code("alice", topic, "nope"), "invalid_json");
	CHECK_EQ_STR(send_code("alice", topic, "[]"), "invalid_json");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"12345678901\"}"), "too_large");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"\"}"), "invalid_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"body\":\"a\"}"), "invalid_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":5,\"body\":\"a\"}"), "invalid_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"a\",\"from\":\"eve\"}"), "unknown_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"a\",\"type\":\"system\"}"), "invalid_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"a\",\"reply_to\":99}"), "invalid_field");
	CHECK_EQ_STR(send_code("alice", topic, "{\"cmid\":\"x\",\"body\":\"a\",\"reply_to\":0}"), "invalid_field");
	CHECK_EQ_STR(send_code("eve", topic, "{\"cmid\":\"x\",\"body\":\"a\"}"), "not_member");
	CHECK_EQ_STR(send_code("alice", "chat/send/nope", "{\"cmid\":\"x\",\"body\":\"a\"}"), "not_member");
	CHECK_EQ_STR(send_code("alice", "chat/send/a*b", "{\"cmid\":\"x\",\"body\":\"a\"}"), "invalid_id");
	CHECK_EQ_STR(send_code("alice", "chat/typing/g", "{\"state\":\"typing\"}"), "not_member");
	CHECK_EQ_STR(send_code("alice", "chat/zzz", "{}"), "not_supported");
	CHECK_EQ_INT(chat->stored_msgs, 11);

	/* ACL: members read their conversation, others do not; observers read */
	snprintf(topic, sizeof(topic), "chat/c/%s/m", conv);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_READ, topic, NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "eve", CHAT_ACCESS_READ, topic, NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_READ, topic, NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, NULL, CHAT_ACCESS_READ, topic, NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_WRITE, topic, NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "chat/send/x", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_SUBSCRIBE, "chat/send/x", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_WRITE, "chat/req", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "chat/u/bob/+", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "chat/u/alice/+", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "chat/#", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "ops", CHAT_ACCESS_SUBSCRIBE, "#", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "#", NULL, 0), CHAT_ACL_DEFER);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_READ, "other/topic", NULL, 0), CHAT_ACL_DEFER);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_READ, "chat/p/alice", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "eve", CHAT_ACCESS_READ, "chat/p/alice", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, conn_of("eve"), "eve", CHAT_ACCESS_WRITE, "chat/p/eve", "{\"state\":\"online\"}", 18), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "eve", CHAT_ACCESS_WRITE, "chat/p/alice", NULL, 0), CHAT_ACL_DENY);

	/* membership: non-admin cannot add; admin can; limit 4 holds */
	r = req("bob", "{\"op\":\"members.add\",\"conv\":\"x\",\"users\":[\"carol\"]}");
	CHECK_EQ_STR(err_code(r), "not_member");
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"members.add\",\"conv\":\"%s\",\"users\":[\"carol\"]}", conv);
	r = req("bob", payload);
	CHECK_EQ_STR(err_code(r), "forbidden");
	cJSON_Delete(r);
	r = req("alice", payload);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"members.add\",\"conv\":\"%s\",\"users\":[\"d\",\"e\"]}", conv);
	r = req("alice", payload);
	CHECK_EQ_STR(err_code(r), "too_many_members");
	cJSON_Delete(r);

	/* removal: bob leaves; he stops reading at once */
	snprintf(payload, sizeof(payload), "{\"op\":\"members.remove\",\"conv\":\"%s\",\"users\":[\"bob\"]}", conv);
	r = req("bob", payload);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_READ, topic, NULL, 0), CHAT_ACL_DENY);
	/* the admin leaves: carol (the only one left) becomes admin */
	snprintf(payload, sizeof(payload), "{\"op\":\"members.remove\",\"conv\":\"%s\",\"users\":[\"alice\"]}", conv);
	r = req("alice", payload);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"conv.get\",\"conv\":\"%s\"}", conv);
	r = req("carol", payload);
	m = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "members"), 0);
	CHECK(m && !strcmp(cJSON_GetObjectItem(m, "role")->valuestring, "admin"));
	/* 12 stored + added + removed bob + removed alice + admin_changed = 16 */
	CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "last_seq")->valuedouble, 16);
	cJSON_Delete(r);

	/* history paging both ways */
	snprintf(payload, sizeof(payload), "{\"op\":\"history\",\"conv\":\"%s\",\"limit\":5}", conv);
	r = req("carol", payload);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "messages")), 5);
	CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "messages"), 0), "seq")->valuedouble, 12);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "has_more")));
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"history\",\"conv\":\"%s\",\"after\":13,\"limit\":5}", conv);
	r = req("carol", payload);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "messages")), 3);
	CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "messages"), 0), "seq")->valuedouble, 14);
	CHECK(cJSON_IsFalse(cJSON_GetObjectItem(r, "has_more")));
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"history\",\"conv\":\"%s\",\"before\":3}", conv);
	r = req("carol", payload);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "messages")), 2);
	CHECK(cJSON_IsFalse(cJSON_GetObjectItem(r, "has_more")));
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"history\",\"conv\":\"%s\",\"limit\":201}", conv);
	r = req("carol", payload);
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	snprintf(payload, sizeof(payload), "{\"op\":\"history\",\"conv\":\"%s\"}", conv);
	r = req("bob", payload);
	CHECK_EQ_STR(err_code(r), "not_member");
	cJSON_Delete(r);

	/* direct conversations are idempotent per pair, from either side */
	r = req("amy", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"zed\"}");
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "created")));
	snprintf(conv, sizeof(conv), "%s", cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring);
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"amy\"}");
	CHECK(cJSON_IsFalse(cJSON_GetObjectItem(r, "created")));
	CHECK_EQ_STR(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring, conv);
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"zed\"}");
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"nope\"}");
	CHECK_EQ_STR(err_code(r), "unknown_op");
	cJSON_Delete(r);
	/* found by fuzzing: an op past 32 characters crashed, 1e999 was cast to int64_t */
	r = req("zed", "{\"op\":\"receiptsFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\"}");
	CHECK_EQ_STR(err_code(r), "unknown_op");
	CHECK(!cJSON_GetObjectItem(r, "op"));
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"conv.list\",\"req_id\":1e999}");
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	r = req("alice", "{\"op\":\"history\",\"conv\":\"x\",\"limit\":1e999}");
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"conv.list\",\"extra\":1}");
	CHECK_EQ_STR(err_code(r), "unknown_field");
	cJSON_Delete(r);
	r = req("zed", "{\"op\":\"conv.list\"}");
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "conversations")), 1);
	cJSON_Delete(r);

	chat__close(chat);
	rm_db_dir(dir);
	CHECK_DONE();
}

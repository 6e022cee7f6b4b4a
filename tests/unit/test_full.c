/* A full LMDB map, driven through the core on a real 1 MiB map: sends fail
 * without a trace, requests that write answer storage_full, receipts are
 * stored or refused with storage_full, reads go on. */
#include "chat.h"
#include "check.h"
#include "publish.h"

static struct chat *chat;

static enum chat_verdict pub(const char *user, const char *topic, const char *payload, const char *suffix,
		cJSON **first)
{
	struct chat_client c = {.conn = user, .username = user, .client_id = user, .protocol_version = 5};
	return publish_through_core(chat, &c, topic, payload, suffix, first);
}

static const char *code_of(const cJSON *o)
{
	const cJSON *e = cJSON_GetObjectItem(o, "error");
	const cJSON *c = cJSON_GetObjectItem(e ? e : o, "code");
	return cJSON_IsString(c) ? c->valuestring : "none";
}

/* Sends bodies of len bytes until one fails to store; returns how many were stored. */
static int fill(const char *topic, size_t len, int *next)
{
	static char payload[20000];
	char body[16001];
	cJSON *m;
	int stored = 0;
	memset(body, 'x', len);
	body[len] = '\0';
	for(;;){
		snprintf(payload, sizeof(payload), "{\"cmid\":\"f%d\",\"body\":\"%s\"}", (*next)++, body);
		enum chat_verdict v = pub("alice", topic, payload, "/m", &m);
		cJSON_Delete(m);
		if(v != CHAT_CONSUMED){
			CHECK_EQ_INT(v, CHAT_STORE_FAILED);
			CHECK(store__full(chat->store));
			return stored;
		}
		stored++;
	}
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], topic[128], buf[8192];
	struct chat_config cfg;
	cJSON *r, *m;
	int next = 0, big, small, stored = 0, refused = 0;
	size_t n;
	uint64_t full_before;

	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "map_size", "1M", err, sizeof(err));
	/* this test fills the map, not the rate limits */
	config__set(&cfg, "rate_send", "0", err, sizeof(err));
	config__set(&cfg, "rate_request", "0", err, sizeof(err));
	config__set(&cfg, "rate_receipt", "0", err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);

	/* a group of alice and 400 readers */
	n = (size_t)snprintf(buf, sizeof(buf), "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"full\",\"members\":[");
	for(int i = 0; i < 400; i++) n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"reader%03d\"", i ? "," : "", i);
	snprintf(buf + n, sizeof(buf) - n, "]}");
	CHECK_EQ_INT(pub("alice", "chat/req", buf, "/reply", &r), CHAT_CONSUMED);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	snprintf(conv, sizeof(conv), "%s", cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring);
	cJSON_Delete(r);
	snprintf(topic, sizeof(topic), "chat/send/%s", conv);

	/* big sends, then small ones, until neither fits */
	full_before = store__full_count(chat->store);
	big = fill(topic, 15000, &next);
	small = fill(topic, 10, &next);
	CHECK(big > 0);
	CHECK(store__full_count(chat->store) > full_before);
	printf("stored %d big and %d small sends on a 1M map\n", big, small);

	/* nothing of the failed sends: last_seq counts the stored ones */
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.get\",\"conv\":\"%s\"}", conv);
	CHECK_EQ_INT(pub("alice", "chat/req", buf, "/reply", &r), CHAT_CONSUMED);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "last_seq")->valuedouble, 1 + big + small);
	cJSON_Delete(r);
	snprintf(buf, sizeof(buf), "{\"op\":\"history\",\"conv\":\"%s\",\"after\":%d}", conv, big + small);
	CHECK_EQ_INT(pub("alice", "chat/req", buf, "/reply", &r), CHAT_CONSUMED);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "messages")), 1);
	cJSON_Delete(r);

	/* a request that writes: storage_full, nothing changed */
	CHECK_EQ_INT(pub("alice", "chat/req", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"more\","
				"\"members\":[\"reader001\",\"reader002\",\"reader003\"]}", "/reply", &r), CHAT_CONSUMED);
	CHECK_EQ_STR(code_of(r), "storage_full");
	cJSON_Delete(r);

	/* receipts from one reader after another: each adds a cursor record, stored
	 * while LMDB finds pages, refused with storage_full when it does not */
	for(int i = 0; i < 400 && !refused; i++){
		char user[16], rtopic[128];
		snprintf(user, sizeof(user), "reader%03d", i);
		snprintf(rtopic, sizeof(rtopic), "chat/receipt/%s", conv);
		enum chat_verdict v = pub(user, rtopic, "{\"read\":1}", "/event", &m);
		if(v == CHAT_REFUSED){
			CHECK_EQ_STR(code_of(m), "storage_full");
			refused++;
		}else{
			CHECK_EQ_INT(v, CHAT_CONSUMED);
			stored++;
		}
		cJSON_Delete(m);
	}
	printf("receipts on the full map: %d stored, then %d refused\n", stored, refused);
	CHECK_EQ_INT(refused, 1);

	chat__close(chat);
	rm_db_dir(dir);
	CHECK_DONE();
}

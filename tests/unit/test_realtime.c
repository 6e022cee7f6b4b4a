/* Receipts, typing and presence driven without a broker. */
#include "chat.h"
#include "check.h"

static struct chat *chat;
static uint64_t fake_now = 1763900000000ULL;
static uint64_t clock_ms(void) { return fake_now; }

static const void *conn(int n)
{
	static char conns[16];
	return &conns[n];
}

/* Publishes as user on device n; returns the verdict, the outbox size, and
 * the first entry (parsed) whose topic ends with suffix. */
static enum chat_verdict pub(const char *user, int dev, const char *topic, const char *payload, const char *suffix,
		cJSON **first, size_t *count, struct chat_rewrite *rw)
{
	struct chat_client c = {.conn = conn(dev), .username = user, .client_id = user, .protocol_version = 5};
	struct chat_outbox out;
	struct chat_rewrite local = {0};
	enum chat_verdict v;

	outbox__init(&out);
	v = chat__handle_publish(chat, &c, topic, payload, strlen(payload), &out, rw ? rw : &local);
	free(local.payload);
	if(count) *count = out.count;
	if(first) *first = NULL;
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

static double num(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItem(o, k);
	return it ? it->valuedouble : -1;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItem(o, k);
	return cJSON_IsString(it) ? it->valuestring : "";
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], t_send[96], t_rcpt[96], t_typ[96], buf[256];
	struct chat_config cfg;
	struct chat_outbox out;
	struct chat_rewrite rw;
	cJSON *r, *ev;
	size_t n;

	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "receipt_fanout_max", "3", err, sizeof(err));
	config__set(&cfg, "typing_fanout_max", "3", err, sizeof(err));
	config__set(&cfg, "stats_interval_ms", "0", err, sizeof(err));   /* this test counts the tick's publishes */
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	CHECK_EQ_INT(pub("alice", 0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"t\",\"members\":[\"bob\",\"cat\"]}",
			"/reply", &r, NULL, NULL), CHAT_CONSUMED);
	snprintf(conv, sizeof(conv), "%s", str(cJSON_GetObjectItem(r, "conv"), "conv"));
	cJSON_Delete(r);
	snprintf(t_send, sizeof(t_send), "chat/send/%s", conv);
	snprintf(t_rcpt, sizeof(t_rcpt), "chat/receipt/%s", conv);
	snprintf(t_typ, sizeof(t_typ), "chat/typing/%s", conv);
	for(int i = 0; i < 4; i++){   /* seq 2..5 from alice */
		snprintf(buf, sizeof(buf), "{\"cmid\":\"m%d\",\"body\":\"x\"}", i);
		CHECK_EQ_INT(pub("alice", 0, t_send, buf, "/m", NULL, NULL, NULL), CHAT_CONSUMED);
	}

	/* ---- receipts ---- */
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{\"delivered\":4}", "/receipt", &ev, NULL, NULL), CHAT_CONSUMED);
	CHECK(ev && num(ev, "delivered") == 4 && num(ev, "read") == 0 && !strcmp(str(ev, "from"), "bob"));
	cJSON_Delete(ev);
	/* read implies delivered */
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{\"read\":5}", "/receipt", &ev, NULL, NULL), CHAT_CONSUMED);
	CHECK(ev && num(ev, "delivered") == 5 && num(ev, "read") == 5);
	cJSON_Delete(ev);
	/* behind the stored cursor: ignored, nothing published */
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{\"read\":3}", "/receipt", &ev, &n, NULL), CHAT_CONSUMED);
	CHECK(ev == NULL && n == 0);
	/* beyond the last message: refused */
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{\"read\":6}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "invalid_field");
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "invalid_field");
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("bob", 1, t_rcpt, "{\"read\":1,\"from\":\"alice\"}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "unknown_field");
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("eve", 9, t_rcpt, "{\"read\":1}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "not_member");
	cJSON_Delete(ev);

	/* read by 1 of 2 for seq 5; alice (the sender) sees who */
	snprintf(buf, sizeof(buf), "{\"op\":\"receipts.get\",\"conv\":\"%s\",\"seq\":5}", conv);
	CHECK_EQ_INT(pub("alice", 0, "chat/req", buf, "/reply", &r, NULL, NULL), CHAT_CONSUMED);
	CHECK(num(r, "of") == 2 && num(r, "read_by") == 1 && num(r, "delivered_to") == 1);
	CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(r, "readers")) == 1);
	CHECK_EQ_STR(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "readers"), 0)->valuestring, "bob");
	cJSON_Delete(r);
	/* cat is neither admin nor sender: counts, no names */
	CHECK_EQ_INT(pub("cat", 2, "chat/req", buf, "/reply", &r, NULL, NULL), CHAT_CONSUMED);
	CHECK(num(r, "read_by") == 1 && cJSON_GetObjectItem(r, "readers") == NULL);
	cJSON_Delete(r);
	snprintf(buf, sizeof(buf), "{\"op\":\"receipts.counts\",\"conv\":\"%s\",\"after\":3}", conv);
	CHECK_EQ_INT(pub("cat", 2, "chat/req", buf, "/reply", &r, NULL, NULL), CHAT_CONSUMED);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "messages")), 2);
	CHECK(num(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "messages"), 0), "seq") == 4);
	cJSON_Delete(r);
	/* unread: bob read all; cat none; alice's own sends count as read */
	CHECK_EQ_INT(pub("cat", 2, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r, NULL, NULL), CHAT_CONSUMED);
	ev = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "conversations"), 0);
	CHECK(num(ev, "read_seq") == 0 && num(ev, "unread") == 5);
	cJSON_Delete(r);
	CHECK_EQ_INT(pub("alice", 0, "chat/req", "{\"op\":\"conv.list\"}", "/reply", &r, NULL, NULL), CHAT_CONSUMED);
	ev = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "conversations"), 0);
	CHECK(num(ev, "read_seq") == 5 && num(ev, "unread") == 0);
	cJSON_Delete(r);

	/* ---- typing: stamped, absorbed inside the interval, expires ---- */
	CHECK_EQ_INT(pub("bob", 1, t_typ, "{\"state\":\"typing\"}", "/typing", &ev, NULL, NULL), CHAT_CONSUMED);
	CHECK(ev && !strcmp(str(ev, "state"), "typing") && !strcmp(str(ev, "from"), "bob") && num(ev, "ttl_ms") == 6000);
	cJSON_Delete(ev);
	fake_now += 500;
	CHECK_EQ_INT(pub("bob", 1, t_typ, "{\"state\":\"typing\"}", "/typing", &ev, &n, NULL), CHAT_CONSUMED);
	CHECK(ev == NULL && n == 0);
	CHECK_EQ_INT(pub("bob", 1, t_typ, "{\"state\":\"typing\",\"from\":\"alice\"}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "unknown_field");
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("eve", 9, t_typ, "{\"state\":\"typing\"}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "not_member");
	cJSON_Delete(ev);
	outbox__init(&out);
	fake_now += 5000;            /* 5.5 s after the first: not yet expired (refreshed at +0.5 s) */
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 0);
	fake_now += 1000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 1);
	CHECK(out.head && strstr(out.head->payload, "\"idle\"") && out.head->qos == 0);
	outbox__clear(&out);

	/* ---- presence: two devices of dan ---- */
	CHECK_EQ_INT(acl__check(chat, conn(5), "dan", CHAT_ACCESS_WRITE, "chat/p/dan", "{\"state\":\"offline\"}", 19),
			CHAT_ACL_DENY);   /* offline is the plugin's: wills are refused */
	CHECK_EQ_INT(acl__check(chat, conn(5), "dan", CHAT_ACCESS_WRITE, "chat/p/dan", "{\"state\":\"online\"}", 18),
			CHAT_ACL_ALLOW);
	memset(&rw, 0, sizeof(rw));
	CHECK_EQ_INT(pub("dan", 5, "chat/p/dan", "{\"state\":\"online\"}", "", NULL, NULL, &rw), CHAT_REWRITE);
	CHECK(rw.retain && rw.payload && strstr(rw.payload, "\"online\"") && strstr(rw.payload, "\"ts\":1763900"));
	free(rw.payload);
	CHECK(presence__user_connected(chat, "dan"));
	CHECK_EQ_INT(pub("dan", 6, "chat/u/dan/x", "{}", "", NULL, NULL, NULL), CHAT_REFUSED);   /* 2nd device acts */
	outbox__init(&out);
	chat__disconnect(chat, conn(5), &out);
	CHECK_EQ_INT(out.count, 0);              /* device 6 is still connected */
	chat__disconnect(chat, conn(6), &out);
	CHECK_EQ_INT(out.count, 0);              /* the grace period runs */
	fake_now += 1000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 0);
	fake_now += 500;
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 1);
	/* last seen is when the device went, not when the grace ended */
	snprintf(buf, sizeof(buf), "\"ts\":%llu", (unsigned long long)(fake_now - 1500));
	CHECK(out.head && out.head->retain && !strcmp(out.head->topic, "chat/p/dan") && strstr(out.head->payload, "offline")
			&& strstr(out.head->payload, buf));
	outbox__clear(&out);
	/* a device that returns within the grace period: no offline at all */
	memset(&rw, 0, sizeof(rw));
	pub("dan", 7, "chat/p/dan", "{\"state\":\"online\"}", "", NULL, NULL, &rw);
	free(rw.payload);
	chat__disconnect(chat, conn(7), &out);
	fake_now += 100;
	pub("dan", 8, "chat/u/dan/x", "{}", "", NULL, NULL, NULL);   /* the take-over's new connection acts */
	fake_now += 5000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 0);
	CHECK(presence__user_connected(chat, "dan"));
	chat__disconnect(chat, conn(8), &out);
	fake_now += 2000;
	chat__tick(chat, &out);
	CHECK_EQ_INT(out.count, 1);
	outbox__clear(&out);
	CHECK(!presence__user_connected(chat, "dan"));
	chat__disconnect(chat, conn(6), &out);   /* a second DISCONNECT for it: nothing */
	CHECK_EQ_INT(out.count, 0);
	CHECK_EQ_INT(pub("dan", 5, "chat/p/dan", "{\"state\":\"away\"}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "invalid_field");
	CHECK(cJSON_GetObjectItem(ev, "conv") == NULL);
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("dan", 5, "chat/p/dan", "{\"state\":\"online\",\"ts\":1}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "unknown_field");
	cJSON_Delete(ev);
	CHECK_EQ_INT(pub("dan", 5, "chat/p/bob", "{\"state\":\"online\"}", "/event", &ev, NULL, NULL), CHAT_REFUSED);
	CHECK_EQ_STR(str(ev, "code"), "forbidden");
	cJSON_Delete(ev);
	memset(&rw, 0, sizeof(rw));
	pub("dan", 5, "chat/p/dan", "{\"state\":\"online\"}", "", NULL, NULL, &rw);   /* online again, then "crash" */
	free(rw.payload);

	/* a restart with dan still stored online republishes him offline */
	chat__close(chat);
	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;
	outbox__init(&out);
	presence__startup(chat, &out);
	{
		bool dan_offline = false;
		for(struct outbox_pub *p = out.head; p; p = p->next){
			if(!strcmp(p->topic, "chat/p/dan") && p->retain && strstr(p->payload, "offline")) dan_offline = true;
			CHECK(!strstr(p->payload, "\"online\""));
		}
		CHECK(dan_offline);
	}
	outbox__clear(&out);

	chat__close(chat);
	rm_db_dir(dir);
	CHECK_DONE();
}

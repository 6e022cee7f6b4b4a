/* Push: devices, preferences, the outbox and its coalescing, acks, retries. */
#include "chat.h"
#include "check.h"

static struct chat *chat;
static uint64_t fake_now = 1763900000000ULL;
static uint64_t clock_ms(void) { return fake_now; }
static char conns[16];

static enum chat_verdict pub(const char *user, int dev, const char *topic, const char *payload, cJSON **reply)
{
	struct chat_client c = {.conn = &conns[dev], .username = user, .client_id = user, .protocol_version = 5};
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	enum chat_verdict v;

	outbox__init(&out);
	v = chat__handle_publish(chat, &c, topic, payload, strlen(payload), &out, &rw);
	free(rw.payload);
	if(reply){
		*reply = NULL;
		for(struct outbox_pub *p = out.head; p; p = p->next){
			if(strstr(p->topic, "/reply")){
				*reply = cJSON_ParseWithLength(p->payload, p->len);
				break;
			}
		}
	}
	outbox__clear(&out);
	return v;
}

static const char *err_code(const cJSON *r)
{
	const cJSON *e = cJSON_GetObjectItem(r, "error");
	return e ? cJSON_GetObjectItem(e, "code")->valuestring : "none";
}

/* Runs a tick; returns the number of jobs published, the first in *job. */
static size_t tick(cJSON **job)
{
	struct chat_outbox out;
	size_t n = 0;
	outbox__init(&out);
	chat__tick(chat, &out);
	if(job) *job = NULL;
	for(struct outbox_pub *p = out.head; p; p = p->next){
		if(!strcmp(p->topic, "chat/push/jobs")){
			if(job && !*job) *job = cJSON_ParseWithLength(p->payload, p->len);
			n++;
		}
	}
	outbox__clear(&out);
	return n;
}

/* Device n's connection ends. */
static void drop(int n)
{
	struct chat_outbox out;
	outbox__init(&out);
	chat__disconnect(chat, &conns[n], &out);
	outbox__clear(&out);
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItem(o, k);
	return it ? it->valuedouble : -1;
}

int main(void)
{
	char *dir = tmp_db_dir(), err[200], conv[65], topic[96], buf[256];
	struct chat_config cfg;
	cJSON *r, *job;

	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "push_users", "bridge", err, sizeof(err));
	config__set(&cfg, "push_max_devices", "2", err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;

	/* ACL: only the bridge reads jobs and writes acks */
	CHECK_EQ_INT(acl__check(chat, NULL, "bridge", CHAT_ACCESS_SUBSCRIBE, "chat/push/jobs", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_SUBSCRIBE, "chat/push/jobs", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bridge", CHAT_ACCESS_WRITE, "chat/push/ack", NULL, 0), CHAT_ACL_ALLOW);
	CHECK_EQ_INT(acl__check(chat, NULL, "bob", CHAT_ACCESS_WRITE, "chat/push/ack", NULL, 0), CHAT_ACL_DENY);
	CHECK_EQ_INT(acl__check(chat, NULL, "bridge", CHAT_ACCESS_WRITE, "chat/push/jobs", NULL, 0), CHAT_ACL_DENY);

	/* devices */
	pub("bob", 1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"apns\",\"token\":\"tok-a\",\"locale\":\"en\"}", &r);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")));
	cJSON_Delete(r);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"fcm\",\"token\":\"tok-f\"}", &r);
	cJSON_Delete(r);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"fcm\",\"token\":\"tok-3\"}", &r);
	CHECK_EQ_STR(err_code(r), "too_many_devices");
	cJSON_Delete(r);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"sms\",\"token\":\"x\"}", &r);
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.register\",\"platform\":\"fcm\",\"token\":\"a b\"}", &r);
	CHECK_EQ_STR(err_code(r), "invalid_field");
	cJSON_Delete(r);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.list\"}", &r);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "devices")), 2);
	cJSON_Delete(r);

	/* alice and bob; bob's device goes away (his devices only get pushes then) */
	pub("alice", 0, "chat/req", "{\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"bob\"}", &r);
	snprintf(conv, sizeof(conv), "%s", cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring);
	cJSON_Delete(r);
	snprintf(topic, sizeof(topic), "chat/send/%s", conv);
	CHECK_EQ_INT(pub("alice", 0, topic, "{\"cmid\":\"1\",\"body\":\"while bob is online\"}", NULL), CHAT_CONSUMED);
	fake_now += 5000;
	CHECK_EQ_INT(tick(NULL), 0);         /* bob was connected: no job */
	drop(1);

	/* a burst of three while bob is offline: one job, count 3, last preview */
	for(int i = 0; i < 3; i++){
		snprintf(buf, sizeof(buf), "{\"cmid\":\"b%d\",\"body\":\"burst %d\"}", i, i);
		CHECK_EQ_INT(pub("alice", 0, topic, buf, NULL), CHAT_CONSUMED);
	}
	CHECK_EQ_INT(tick(NULL), 0);         /* window not over */
	fake_now += 2000;
	CHECK_EQ_INT(tick(&job), 1);
	CHECK(job && num(job, "count") == 3 && num(job, "seq") == 5);
	CHECK_EQ_STR(cJSON_GetObjectItem(job, "preview")->valuestring, "burst 2");
	CHECK_EQ_STR(cJSON_GetObjectItem(job, "user")->valuestring, "bob");
	CHECK_EQ_STR(cJSON_GetObjectItem(job, "from")->valuestring, "alice");
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(job, "devices")), 2);
	CHECK(num(job, "badge") == 5);      /* bob has read nothing of 5 */
	uint64_t id = (uint64_t)num(job, "id");
	cJSON_Delete(job);
	CHECK_EQ_INT(tick(NULL), 0);         /* sent, awaiting its ack */

	/* a message after the window: a new job */
	CHECK_EQ_INT(pub("alice", 0, topic, "{\"cmid\":\"c1\",\"body\":\"later\"}", NULL), CHAT_CONSUMED);
	fake_now += 2000;
	CHECK_EQ_INT(tick(&job), 1);
	uint64_t id2 = (uint64_t)num(job, "id");
	CHECK(id2 != id && num(job, "count") == 1);
	cJSON_Delete(job);

	/* unacked jobs go out again after push_retry_ms */
	fake_now += 30000;
	CHECK_EQ_INT(tick(NULL), 2);
	/* ack the first with an unregister; the second delivered */
	snprintf(buf, sizeof(buf), "{\"id\":%llu,\"result\":\"delivered\",\"unregister\":[{\"platform\":\"apns\",\"token\":\"tok-a\"}]}",
			(unsigned long long)id);
	CHECK_EQ_INT(pub("bridge", 9, "chat/push/ack", buf, NULL), CHAT_CONSUMED);
	snprintf(buf, sizeof(buf), "{\"id\":%llu,\"result\":\"delivered\"}", (unsigned long long)id2);
	CHECK_EQ_INT(pub("bridge", 9, "chat/push/ack", buf, NULL), CHAT_CONSUMED);
	CHECK_EQ_INT(pub("bridge", 9, "chat/push/ack", "{\"id\":\"x\"}", NULL), CHAT_REFUSED);
	fake_now += 60000;
	CHECK_EQ_INT(tick(NULL), 0);
	pub("bob", 1, "chat/req", "{\"op\":\"devices.list\"}", &r);
	CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "devices")), 1);
	cJSON_Delete(r);
	drop(1);   /* bob's request made him connected again */

	/* muted: no job; preview off: null preview */
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.mute\",\"conv\":\"%s\",\"muted\":true}", conv);
	pub("bob", 2, "chat/req", buf, &r);
	CHECK(cJSON_IsTrue(cJSON_GetObjectItem(r, "muted")));
	cJSON_Delete(r);
	drop(2);
	CHECK_EQ_INT(pub("alice", 0, topic, "{\"cmid\":\"m1\",\"body\":\"muted\"}", NULL), CHAT_CONSUMED);
	fake_now += 5000;
	CHECK_EQ_INT(tick(NULL), 0);
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.mute\",\"conv\":\"%s\",\"muted\":false}", conv);
	pub("bob", 2, "chat/req", buf, &r);
	cJSON_Delete(r);
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.preview\",\"conv\":\"%s\",\"preview\":false}", conv);
	pub("bob", 2, "chat/req", buf, &r);
	cJSON_Delete(r);
	snprintf(buf, sizeof(buf), "{\"op\":\"conv.mute\",\"conv\":\"nope\",\"muted\":true}");
	pub("bob", 2, "chat/req", buf, &r);
	CHECK_EQ_STR(err_code(r), "not_member");
	cJSON_Delete(r);
	drop(2);
	CHECK_EQ_INT(pub("alice", 0, topic, "{\"cmid\":\"p1\",\"body\":\"secret\"}", NULL), CHAT_CONSUMED);
	fake_now += 5000;
	CHECK_EQ_INT(tick(&job), 1);
	CHECK(job && cJSON_IsNull(cJSON_GetObjectItem(job, "preview")));
	cJSON_Delete(job);

	/* a restart re-publishes every unacked job at once */
	chat__close(chat);
	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, sizeof(err));
	config__set(&cfg, "push_users", "bridge", err, sizeof(err));
	CHECK_EQ_INT(chat__open(&chat, &cfg, err, sizeof(err)), 0);
	chat->now_ms = clock_ms;
	CHECK_EQ_INT(tick(NULL), 1);
	CHECK_EQ_INT(tick(NULL), 0);

	chat__close(chat);
	rm_db_dir(dir);
	CHECK_DONE();
}

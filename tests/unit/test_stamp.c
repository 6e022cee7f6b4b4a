/* The stamped message formatted without cJSON: the bytes cJSON would print
 * for it whatever the body holds; and the store's format record (a format 1
 * database opens, a newer one is refused). */
#include <inttypes.h>
#include <lmdb.h>
#include "chat.h"
#include "check.h"

static struct chat *chat;
static uint64_t clock_ms(void) { return 1763900000123ULL; }

/* Sends body (a JSON string literal, escapes and all) as user and returns
 * the stamped payload (caller frees), or NULL. */
static char *send_body(const char *user, const char *conv, const char *cmid, const char *body_json, const char *extra)
{
	struct chat_client c = {.conn = user, .username = user, .client_id = user, .protocol_version = 4};
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	char topic[128], payload[4096];
	char *stamped = NULL;

	snprintf(topic, sizeof(topic), "chat/send/%s", conv);
	snprintf(payload, sizeof(payload), "{\"cmid\":\"%s\",\"body\":%s%s}", cmid, body_json, extra);
	outbox__init(&out);
	CHECK_EQ_INT(chat__handle_publish(chat, &c, topic, payload, strlen(payload), &out, &rw), CHAT_CONSUMED);
	for(struct outbox_pub *p = out.head; p; p = p->next){
		size_t tl = strlen(p->topic);
		if(tl > 2 && !strcmp(p->topic + tl - 2, "/m")){
			stamped = malloc(p->len + 1);
			memcpy(stamped, p->payload, p->len);
			stamped[p->len] = '\0';
			break;
		}
	}
	outbox__clear(&out);
	return stamped;
}

/* stamped must be exactly what cJSON prints for the message it parses to,
 * and its body must be the string body_json denotes. */
static void check_stamped(const char *stamped, const char *body_json)
{
	cJSON *m = stamped ? cJSON_Parse(stamped) : NULL, *b = cJSON_Parse(body_json);
	char *printed = m ? cJSON_PrintUnformatted(m) : NULL;
	CHECK(m != NULL);
	CHECK_EQ_STR(printed, stamped);
	CHECK(b && m && cJSON_IsString(cJSON_GetObjectItem(m, "body"))
			&& !strcmp(cJSON_GetObjectItem(m, "body")->valuestring, b->valuestring));
	cJSON_free(printed);
	cJSON_Delete(m);
	cJSON_Delete(b);
}

static void be64(unsigned char *buf, uint64_t v)
{
	for(int i = 7; i >= 0; i--, v >>= 8) buf[i] = (unsigned char)(v & 0xff);
}

enum fmt_action { FMT_SET, FMT_MAKE_V1, FMT_CHECK_GUARD };

/* Acts on the database in dir with LMDB directly: sets the format record to v;
 * or turns it back into a format 1 database (no format record, a "seqs"
 * database holding conv -> v, a "cursors" database); or checks that a format 1
 * build (which opens "seqs" and "cursors" with MDB_CREATE) would fail to
 * start. */
static void fmt(const char *dir, enum fmt_action a, const char *conv, uint64_t v)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi meta, main_dbi, seqs;
	unsigned char buf[8];
	MDB_val k = {6, "format"}, val = {8, buf}, sk = {4, "seqs"}, ck = {strlen(conv), (void *)conv};
	be64(buf, v);
	CHECK_EQ_INT(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 32);
	CHECK_EQ_INT(mdb_env_open(env, dir, 0, 0640), 0);
	CHECK_EQ_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
	CHECK_EQ_INT(mdb_dbi_open(txn, "meta", 0, &meta), 0);
	switch(a){
		case FMT_SET:
			CHECK_EQ_INT(mdb_put(txn, meta, &k, &val, 0), 0);
			break;
		case FMT_MAKE_V1:
			CHECK_EQ_INT(mdb_del(txn, meta, &k, NULL), 0);
			CHECK_EQ_INT(mdb_dbi_open(txn, NULL, 0, &main_dbi), 0);
			CHECK_EQ_INT(mdb_del(txn, main_dbi, &sk, NULL), 0);
			CHECK_EQ_INT(mdb_dbi_open(txn, "seqs", MDB_CREATE, &seqs), 0);
			CHECK_EQ_INT(mdb_put(txn, seqs, &ck, &val, 0), 0);
			/* bob's receipt cursor (delivered 7, read 5) in format 1's own database,
			 * taken out of cmids where format 3 keeps it */
			{
				unsigned char kb[128], cb[16];
				size_t kl = strlen(conv);
				MDB_dbi cursors, cmids;
				MDB_val key = {kl + 4, kb}, cv = {16, cb};
				memcpy(kb, conv, kl);
				memcpy(kb + kl, "\0bob", 4);
				be64(cb, 7);
				be64(cb + 8, 5);
				CHECK_EQ_INT(mdb_dbi_open(txn, "cmids", 0, &cmids), 0);
				mdb_del(txn, cmids, &key, NULL);
				CHECK_EQ_INT(mdb_dbi_open(txn, "cursors", MDB_CREATE, &cursors), 0);
				CHECK_EQ_INT(mdb_put(txn, cursors, &key, &cv, 0), 0);
			}
			break;
		case FMT_CHECK_GUARD:
			CHECK_EQ_INT(mdb_dbi_open(txn, "seqs", MDB_CREATE, &seqs), MDB_INCOMPATIBLE);
			break;
	}
	CHECK_EQ_INT(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Whatever json__flat_parse accepts, cJSON reads alike: random payloads
 * made of JSON fragments and of mutated valid sends, fixed seed. */
static void flat_parse_agrees_with_cjson(void)
{
	static const char *const frags[] = {
		"{", "}", "\"cmid\"", "\"body\"", "\"type\"", "\"reply_to\"", "\"x\"", ":", ",", " ", "\n",
		"\"a\\\"b\"", "\"\\u00e9\"", "\"\\/\\n\"", "12", "0", "1.5", "-3", "1e3", "007", "true", "null",
		"\"\t\"", "\"\xc3\xa9\"", "\"text\"", "\"", "\\", "[1]", "123456789012345678",
	};
	static const char *const valid = "{\"cmid\":\"c-1\",\"body\":\"hi \\\"you\\\"\",\"type\":\"text\",\"reply_to\":42}";
	unsigned seed = 12345;
	size_t accepted = 0;

	for(int n = 0; n < 40000; n++){
		char payload[512], scratch[513];
		size_t len = 0;
		struct json_flat f[] = {
			{.name = "cmid", .string = true}, {.name = "type", .string = true},
			{.name = "body", .string = true}, {.name = "reply_to", .string = false},
		};
		seed = seed * 1103515245u + 12345u;
		if(n % 2){
			len = strlen(valid);
			memcpy(payload, valid, len);
			for(int k = 0; k < 1 + (int)(seed >> 28) % 3; k++){
				size_t at;
				seed = seed * 1103515245u + 12345u;
				at = (seed >> 8) % len;
				if(seed & 1){
					memmove(payload + at, payload + at + 1, len - at - 1);
					len--;
				}else{
					payload[at] = "{}\":,\\ a0u"[(seed >> 4) % 11];
				}
			}
		}else{
			int parts = 1 + (int)((seed >> 16) % 12);
			for(int k = 0; k < parts; k++){
				const char *fr;
				seed = seed * 1103515245u + 12345u;
				fr = frags[(seed >> 16) % (sizeof(frags) / sizeof(frags[0]))];
				if(len + strlen(fr) >= sizeof(payload)) break;
				memcpy(payload + len, fr, strlen(fr));
				len += strlen(fr);
			}
		}
		if(!json__valid_utf8((const unsigned char *)payload, len)) continue;
		if(!json__flat_parse(payload, len, f, 4, scratch)) continue;
		accepted++;
		{
			cJSON *root = cJSON_ParseWithLength(payload, len);
			CHECK(cJSON_IsObject(root));
			for(int i = 0; root && i < 4; i++){
				const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, f[i].name);
				CHECK_EQ_INT(it != NULL, f[i].present);
				if(!it || !f[i].present) continue;
				if(f[i].string) CHECK(cJSON_IsString(it) && !strcmp(it->valuestring, f[i].str));
				else CHECK(cJSON_IsNumber(it) && it->valuedouble == (double)f[i].num);
			}
			CHECK_EQ_INT(cJSON_GetArraySize(root), f[0].present + f[1].present + f[2].present + f[3].present);
			cJSON_Delete(root);
		}
	}
	CHECK(accepted > 1000);
}

static int open_chat(const char *dir, char *err, size_t errlen)
{
	struct chat_config cfg;
	config__defaults(&cfg);
	config__set(&cfg, "db_path", dir, err, errlen);
	if(chat__open(&chat, &cfg, err, errlen)) return -1;
	chat->now_ms = clock_ms;
	return 0;
}

int main(void)
{
	static const char *const bodies[] = {
		"\"plain\"",
		"\"quote \\\" backslash \\\\ slash / \\/\"",
		"\"controls \\b\\f\\n\\r\\t \\u0001 \\u001f \\u007f end\"",
		"\"utf-8 \\u00e9 \xc3\xa9 \xf0\x9f\x98\x80 \\ud83d\\ude00\"",
		"\"\\\"\"",
		"\"\\u001b[0m\"",
	};
	char *dir = tmp_db_dir(), err[200], conv[65];
	struct store_txn *t;
	struct store_conv sc;
	cJSON *r;
	char *s;
	struct chat_client c = {.conn = "alice", .username = "alice", .client_id = "alice", .protocol_version = 4};
	struct chat_outbox out;
	struct chat_rewrite rw = {0};
	const char *create = "{\"op\":\"conv.create\",\"type\":\"group\",\"name\":\"t\",\"members\":[\"bob\"],\"req_id\":1}";

	flat_parse_agrees_with_cjson();
	CHECK_EQ_INT(open_chat(dir, err, sizeof(err)), 0);
	outbox__init(&out);
	CHECK_EQ_INT(chat__handle_publish(chat, &c, "chat/req", create, strlen(create), &out, &rw), CHAT_CONSUMED);
	r = out.head ? cJSON_ParseWithLength(out.head->payload, out.head->len) : NULL;
	CHECK(r != NULL);
	snprintf(conv, sizeof(conv), "%s", r ? cJSON_GetObjectItem(cJSON_GetObjectItem(r, "conv"), "conv")->valuestring : "");
	cJSON_Delete(r);
	outbox__clear(&out);

	for(size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++){
		char cmid[16];
		snprintf(cmid, sizeof(cmid), "c%zu", i);
		s = send_body("alice", conv, cmid, bodies[i], i == 2 ? ",\"reply_to\":1" : "");
		check_stamped(s, bodies[i]);
		/* the duplicate re-delivers the stored bytes: the same */
		{
			char *again = send_body("alice", conv, cmid, "\"other\"", "");
			CHECK_EQ_STR(again, s);
			free(again);
		}
		free(s);
	}
	/* a body with \u escapes (the cJSON path) and the same body in plain
	 * UTF-8 (the fast path) are stamped alike; whitespace anywhere is fine */
	{
		char *a = send_body("alice", conv, "u-1", "\"caf\\u00e9 \\ud83d\\ude00\"", "");
		char *b = send_body("alice", conv, "u-2", " \"caf\xc3\xa9 \xf0\x9f\x98\x80\" ", " , \"type\" : \"text\"\n");
		const char *ba = a ? strstr(a, "\"body\"") : NULL, *bb = b ? strstr(b, "\"body\"") : NULL;
		CHECK(ba && bb && !strcmp(ba, bb));
		free(a);
		free(b);
	}
	/* the field order and numbers of the contract */
	s = send_body("bob", conv, "b-1", "\"x\"", ",\"reply_to\":3");
	{
		char want[256];
		snprintf(want, sizeof(want), "{\"conv\":\"%s\",\"seq\":10,\"id\":\"%s:10\",\"ts\":1763900000123,\"from\":\"bob\","
				"\"cmid\":\"b-1\",\"type\":\"text\",\"body\":\"x\",\"reply_to\":3}", conv, conv);
		CHECK_EQ_STR(s, want);
	}
	free(s);
	chat__close(chat);

	/* a format 2 database keeps a format 1 build out */
	fmt(dir, FMT_CHECK_GUARD, conv, 0);

	/* a format 1 database (its "seqs" agree with the messages) opens, is
	 * converted, and the next send takes the next seq */
	fmt(dir, FMT_MAKE_V1, conv, 10);
	CHECK_EQ_INT(open_chat(dir, err, sizeof(err)), 0);
	CHECK_EQ_INT(store__begin(chat->store, false, &t), STORE_OK);
	CHECK_EQ_INT(store__conv_get(t, conv, &sc), STORE_OK);
	CHECK_EQ_INT(sc.last_seq, 10);
	{
		uint64_t delivered, read;
		CHECK_EQ_INT(store__cursor_get(t, conv, "bob", &delivered, &read), STORE_OK);
		CHECK_EQ_INT(delivered, 7);
		CHECK_EQ_INT(read, 5);
	}
	store__abort(t);
	s = send_body("bob", conv, "b-2", "\"y\"", "");
	CHECK(s && strstr(s, "\"seq\":11,"));
	free(s);
	chat__close(chat);
	fmt(dir, FMT_CHECK_GUARD, conv, 0);

	/* a database from a newer format is refused with a sentence */
	fmt(dir, FMT_SET, conv, 5);
	CHECK_EQ_INT(open_chat(dir, err, sizeof(err)), -1);
	CHECK(strstr(err, "format 5") != NULL);
	/* format 3 (before the journal) opens and is stamped 4 */
	fmt(dir, FMT_SET, conv, 3);
	CHECK_EQ_INT(open_chat(dir, err, sizeof(err)), 0);
	chat__close(chat);

	rm_db_dir(dir);
	CHECK_DONE();
}

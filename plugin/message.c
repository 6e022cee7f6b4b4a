/*
 * message.c — validating, stamping and storing messages; history.
 *
 * A send is checked, stamped (conv, seq, id, ts, from) and committed in one
 * write transaction inside the broker's message hook, so by the time the
 * broker sends the PUBACK the message is in LMDB. The stamped bytes are
 * stored exactly as they are delivered, so history and re-deliveries of a
 * duplicate send are byte-identical to the live copy.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

static const char *const send_fields[] = {"cmid", "type", "body", "reply_to", NULL};

/* ====================================================================== *
 * Refusals
 * ====================================================================== */

/* Queues {"event":"send_failed",…} to the sending device. */
enum chat_verdict message__refuse(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const char *cmid, const struct chat_error *e, struct chat_outbox *out)
{
	char topic[CHAT_TOPIC_MAX];
	cJSON *ev = cJSON_CreateObject();

	chat->refusals++;
	stats__refused(chat, e->code);
	if(ev && cl->username && topic__build(topic, sizeof(topic), &chat->cfg, "u", cl->username, "event")){
		cJSON_AddStringToObject(ev, "event", "send_failed");
		if(ref->id_valid) cJSON_AddStringToObject(ev, "conv", ref->id);
		if(cmid) cJSON_AddStringToObject(ev, "cmid", cmid);
		cJSON_AddStringToObject(ev, "code", chat_err__code(e->code));
		cJSON_AddStringToObject(ev, "message", e->message);
		if(e->code == CHAT_E_RATE_LIMITED) cJSON_AddNumberToObject(ev, "retry_after_ms", e->retry_after_ms);
		outbox__add_json(out, topic, ev, OUTBOX_SENDER, false);
	}
	cJSON_Delete(ev);
	return CHAT_REFUSED;
}

/* ====================================================================== *
 * Validation
 * ====================================================================== */

struct send_req {
	const char *cmid;
	const char *body;
	int64_t reply_to;
	bool has_reply_to;
	bool body_plain;    /* the fast path saw no byte needing escaping: body_len bytes print as they are */
	size_t body_len;    /* set with body_plain only */
};

static enum chat_err send__validate(struct chat *chat, const cJSON *root, struct send_req *r, struct chat_error *e)
{
	const cJSON *it;
	size_t blen;
	enum chat_err rc;

	if((rc = json__only_fields(root, send_fields, e))) return rc;

	it = cJSON_GetObjectItemCaseSensitive(root, "cmid");
	if(!it) return chat__fail(e, CHAT_E_INVALID_FIELD, "'cmid' is required");
	if(!cJSON_IsString(it) || !json__valid_cmid(it->valuestring, strlen(it->valuestring))){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'cmid' must be a string of 1-64 of A-Z a-z 0-9 _ . @ : -");
	}
	r->cmid = it->valuestring;

	it = cJSON_GetObjectItemCaseSensitive(root, "type");
	if(it && (!cJSON_IsString(it) || strcmp(it->valuestring, "text") != 0)){
		return chat__fail(e, CHAT_E_INVALID_FIELD, "'type' must be \"text\"");
	}

	it = cJSON_GetObjectItemCaseSensitive(root, "body");
	if(!it) return chat__fail(e, CHAT_E_INVALID_FIELD, "'body' is required");
	if(!cJSON_IsString(it)) return chat__fail(e, CHAT_E_INVALID_FIELD, "'body' must be a string");
	blen = strlen(it->valuestring);
	if(blen == 0) return chat__fail(e, CHAT_E_INVALID_FIELD, "'body' must not be empty");
	if(blen > chat->cfg.max_body){
		return chat__fail(e, CHAT_E_TOO_LARGE, "'body' is %zu bytes, the limit is %u", blen, chat->cfg.max_body);
	}
	r->body = it->valuestring;

	return json__opt_int(root, "reply_to", 1, INT64_MAX / 2, &r->reply_to, &r->has_reply_to, e);
}

/* Sends up to this size may take the fast path (its scratch is on the stack). */
#define SEND_FAST_MAX 2048

/* The common send — {"cmid","body"[,"type"][,"reply_to"]} with plain strings,
 * all valid — read without a cJSON tree into r (strings in scratch, len + 1
 * bytes). False for anything else: the general path then reads it again and
 * words the refusal, so both paths accept exactly the same sends. */
static bool send__fast(struct chat *chat, const void *payload, size_t len, struct send_req *r, char *scratch)
{
	struct json_flat f[] = {
		{.name = "cmid", .string = true}, {.name = "type", .string = true},
		{.name = "body", .string = true}, {.name = "reply_to", .string = false},
	};

	if(len > SEND_FAST_MAX || len > chat->cfg.max_payload || !json__valid_utf8(payload, len)) return false;
	if(!json__flat_parse(payload, len, f, sizeof(f) / sizeof(f[0]), scratch)) return false;
	if(!f[0].present || !json__valid_cmid(f[0].str, f[0].len)) return false;
	if(f[1].present && strcmp(f[1].str, "text") != 0) return false;
	if(!f[2].present || f[2].len == 0 || f[2].len > chat->cfg.max_body) return false;
	if(f[3].present && (f[3].num < 1 || f[3].num > INT64_MAX / 2)) return false;
	r->cmid = f[0].str;
	r->body = f[2].str;
	r->body_plain = f[2].plain;
	r->body_len = f[2].len;
	r->has_reply_to = f[3].present;
	r->reply_to = (int64_t)f[3].num;
	return true;
}

/* ====================================================================== *
 * Stamping
 * ====================================================================== */

/* Starts a stamped message: {"conv","seq","id","ts","from"}. */
static cJSON *stamp__begin(const char *conv, uint64_t seq, uint64_t ts, const char *from)
{
	char id[CHAT_ID_MAX + 24];
	cJSON *m = cJSON_CreateObject();
	if(!m) return NULL;
	snprintf(id, sizeof(id), "%s:%" PRIu64, conv, seq);
	if(!cJSON_AddStringToObject(m, "conv", conv)
			|| !cJSON_AddNumberToObject(m, "seq", (double)seq)
			|| !cJSON_AddStringToObject(m, "id", id)
			|| !cJSON_AddNumberToObject(m, "ts", (double)ts)
			|| !cJSON_AddStringToObject(m, "from", from)){
		cJSON_Delete(m);
		return NULL;
	}
	return m;
}

/* Stores the stamped bytes s (len) as seq of conv and queues their delivery;
 * s is freed with free_s in every case (the outbox takes it on success). The
 * conversation's last_seq is the key of its last message: nothing else to
 * write. */
static enum chat_err stamp__store(struct chat *chat, struct store_txn *txn, const char *conv, uint64_t seq,
		char *s, size_t len, void (*free_s)(void *), struct chat_outbox *out, struct chat_error *e)
{
	char topic[CHAT_TOPIC_MAX];

	if(!topic__build(topic, sizeof(topic), &chat->cfg, "c", conv, "m")){
		free_s(s);
		return chat__fail(e, CHAT_E_STORE, "topic");
	}
	if(store__msg_put(txn, conv, seq, s, len) != STORE_OK){
		free_s(s);
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	if(outbox__add_owned(out, topic, s, len, free_s, OUTBOX_ALL, false)){
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	out->last->in_sequence = true;
	return CHAT_E_OK;
}

/* A stamped text message, formatted straight into one buffer from the
 * validated send (no cJSON tree, no print: that was most of the hook's
 * cost): {"conv","seq","id","ts","from","cmid","type":"text","body"[,"reply_to"]}
 * — the bytes cJSON would print for it. conv and from are valid ids and the
 * cmid a valid cmid: none of them needs escaping; nor does a body the fast
 * path found plain. Allocated with chat->payload_alloc so the adapter can
 * hand it to the broker as it is. */
static char *stamp__text(struct chat *chat, const char *conv, uint64_t seq, uint64_t ts, const char *from,
		const struct send_req *r, size_t *len)
{
	static const char k_conv[] = "{\"conv\":", k_seq[] = ",\"seq\":", k_id[] = ",\"id\":\"", k_ts[] = ",\"ts\":",
		k_from[] = ",\"from\":", k_cmid[] = ",\"cmid\":", k_body[] = ",\"type\":\"text\",\"body\":",
		k_reply[] = ",\"reply_to\":";
	size_t conv_len = strlen(conv), from_len = strlen(from), cmid_len = strlen(r->cmid);
	size_t cap = sizeof(k_conv) + sizeof(k_seq) + sizeof(k_id) + sizeof(k_ts) + sizeof(k_from) + sizeof(k_cmid)
		+ sizeof(k_body) + sizeof(k_reply) + 2 * conv_len + 2 + 4 * JSON_U64_MAX
		+ from_len + 2 + cmid_len + 2 + (r->body_plain ? r->body_len + 2 : json__str_len(r->body));
	char *buf = chat->payload_alloc(cap), *p = buf;

	if(!buf) return NULL;
	p = json__put_raw(p, k_conv, sizeof(k_conv) - 1);
	p = json__put_plain(p, conv, conv_len);
	p = json__put_raw(p, k_seq, sizeof(k_seq) - 1);
	p = json__put_u64(p, seq);
	/* ids are [A-Za-z0-9_.@:-]: "conv:seq" needs no escaping */
	p = json__put_raw(p, k_id, sizeof(k_id) - 1);
	p = json__put_raw(p, conv, conv_len);
	*p++ = ':';
	p = json__put_u64(p, seq);
	*p++ = '"';
	p = json__put_raw(p, k_ts, sizeof(k_ts) - 1);
	p = json__put_u64(p, ts);
	p = json__put_raw(p, k_from, sizeof(k_from) - 1);
	p = json__put_plain(p, from, from_len);
	p = json__put_raw(p, k_cmid, sizeof(k_cmid) - 1);
	p = json__put_plain(p, r->cmid, cmid_len);
	p = json__put_raw(p, k_body, sizeof(k_body) - 1);
	p = r->body_plain ? json__put_plain(p, r->body, r->body_len) : json__put_str(p, r->body);
	if(r->has_reply_to){
		p = json__put_raw(p, k_reply, sizeof(k_reply) - 1);
		p = json__put_u64(p, (uint64_t)r->reply_to);
	}
	*p++ = '}';
	*len = (size_t)(p - buf);
	return buf;
}

enum chat_err message__append_system(struct chat *chat, struct store_txn *txn, const char *conv,
		const char *actor, const char *event, const cJSON *fields, struct chat_outbox *out, struct chat_error *e)
{
	struct store_conv sc;
	const cJSON *f;
	cJSON *msg;
	enum chat_err rc;

	if(store__conv_get(txn, conv, &sc) != STORE_OK){
		return chat__fail(e, CHAT_E_STORE, "conversation %s vanished", conv);
	}
	msg = stamp__begin(conv, sc.last_seq + 1, chat->now_ms(), actor);
	if(!msg || !cJSON_AddStringToObject(msg, "type", "system") || !cJSON_AddStringToObject(msg, "event", event)){
		cJSON_Delete(msg);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	cJSON_ArrayForEach(f, fields){
		cJSON *dup = cJSON_Duplicate(f, 1);
		if(!dup || !cJSON_AddItemToObject(msg, f->string, dup)){
			cJSON_Delete(dup);
			cJSON_Delete(msg);
			return chat__fail(e, CHAT_E_NOMEM, "out of memory");
		}
	}
	{
		size_t len;
		char *s = json__print(msg, &len);
		cJSON_Delete(msg);
		if(!s) return chat__fail(e, CHAT_E_NOMEM, "out of memory");
		rc = stamp__store(chat, txn, conv, sc.last_seq + 1, s, len, free, out, e);
	}
	return rc;
}

/* ====================================================================== *
 * Sending
 * ====================================================================== */

/* Re-delivers the stored original of a duplicate send to the sending device. */
static enum chat_verdict send__duplicate(struct chat *chat, struct store_txn *txn, const char *conv, uint64_t seq,
		struct chat_outbox *out)
{
	char topic[CHAT_TOPIC_MAX];
	const void *data;
	size_t len;
	char *copy;

	if(store__msg_get(txn, conv, seq, &data, &len) == STORE_OK
			&& topic__build(topic, sizeof(topic), &chat->cfg, "c", conv, "m")
			&& (copy = malloc(len ? len : 1)) != NULL){
		memcpy(copy, data, len);
		outbox__add(out, topic, copy, len, OUTBOX_SENDER, false);
	}
	store__abort(txn);
	return CHAT_CONSUMED;
}

enum chat_verdict message__send(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out)
{
	struct chat_error e = {0};
	struct send_req r = {0};
	struct store_conv sc;
	struct store_txn *txn = NULL;
	const char *cmid = NULL;
	const cJSON *jc;
	cJSON *root = NULL;
	char *stamped;
	size_t stamped_len;
	char scratch[SEND_FAST_MAX + 1];
	uint64_t seq;
	enum chat_verdict v = CHAT_REFUSED;

	if(ratelimit__take(chat, cl, CHAT_RATE_SEND, &e)){   /* before anything is read or stored */
		return ratelimit__refuse_send(chat, cl, ref, payload, len, &e, out);
	}
	if(ref->id_valid && send__fast(chat, payload, len, &r, scratch)){
		cmid = r.cmid;
		goto validated;   /* past the general reading below */
	}
	if(json__parse_object(payload, len, chat->cfg.max_payload, &root, &e)) goto refused;
	/* echo the cmid in a refusal whenever there is one to correlate with,
	 * valid or not (bounded, and already known to be UTF-8) */
	jc = cJSON_GetObjectItemCaseSensitive(root, "cmid");
	if(cJSON_IsString(jc) && strlen(jc->valuestring) <= CHAT_CMID_ECHO_MAX) cmid = jc->valuestring;
	if(!ref->id_valid){
		chat__fail(&e, CHAT_E_INVALID_ID, "the conversation id in the topic is not a valid id");
		goto refused;
	}
	if(send__validate(chat, root, &r, &e)) goto refused;

validated:
	if(store__begin(chat->store, true, &txn) != STORE_OK){
		chat__fail(&e, CHAT_E_STORE, "%s", store__last_error(chat->store));
		goto store_failed;
	}
	if(conv__require_member(txn, ref->id, cl->username, &sc, NULL, &e)) goto refused;
	/* the duplicate check and the cmid record in one descent: a claim is
	 * undone with the transaction if the send is refused below */
	seq = sc.last_seq + 1;
	switch(store__cmid_claim(txn, ref->id, cl->username, r.cmid, &seq)){
		case STORE_OK:
			break;
		case STORE_EXISTS: {
			struct store_txn *t = txn;
			txn = NULL;   /* send__duplicate ends it */
			v = send__duplicate(chat, t, ref->id, seq, out);
			goto done;
		}
		default:
			chat__fail(&e, CHAT_E_STORE, "%s", store__last_error(chat->store));
			goto store_failed;
	}
	if(r.has_reply_to && (uint64_t)r.reply_to > sc.last_seq){
		chat__fail(&e, CHAT_E_INVALID_FIELD, "'reply_to' %" PRId64 " is beyond the last message (%" PRIu64 ")",
				r.reply_to, sc.last_seq);
		goto refused;
	}

	stamped = stamp__text(chat, ref->id, seq, chat->now_ms(), cl->username, &r, &stamped_len);
	if(!stamped){
		chat__fail(&e, CHAT_E_NOMEM, "out of memory");
		goto store_failed;
	}
	if(stamp__store(chat, txn, ref->id, seq, stamped, stamped_len, chat->payload_free, out, &e)) goto store_failed;
	out->last->as_inbound = true;
	if(receipt__on_send(txn, ref->id, cl->username, seq) != STORE_OK){
		chat__fail(&e, CHAT_E_STORE, "%s", store__last_error(chat->store));
		goto store_failed;
	}
	if(push__on_message(chat, txn, ref->id, &sc, cl->username, seq, r.body, &e)) goto store_failed;
	if(store__commit(txn) != STORE_OK){
		txn = NULL;
		chat__fail(&e, CHAT_E_STORE, "%s", store__last_error(chat->store));
		goto store_failed;
	}
	txn = NULL;
	chat->stored_msgs++;
	v = CHAT_CONSUMED;
	goto done;

store_failed:
	outbox__clear(out);
	v = CHAT_STORE_FAILED;
	goto done;
refused:
	v = message__refuse(chat, cl, ref, cmid, &e, out);
done:
	if(txn) store__abort(txn);
	cJSON_Delete(root);
	return v;
}

/* ====================================================================== *
 * History
 * ====================================================================== */

/* A stored message as a raw cJSON item: spliced into a reply verbatim,
 * without a parse. */
static cJSON *raw_item(const void *data, size_t len)
{
	char *s = malloc(len + 1);
	cJSON *it;
	if(!s) return NULL;
	memcpy(s, data, len);
	s[len] = '\0';
	it = cJSON_CreateRaw(s);
	free(s);
	return it;
}

cJSON *message__load(struct store_txn *txn, const char *conv, uint64_t seq)
{
	const void *data;
	size_t len;
	if(seq == 0 || store__msg_get(txn, conv, seq, &data, &len) != STORE_OK) return NULL;
	return raw_item(data, len);
}

struct page {
	cJSON **items;           /* want slots */
	size_t n;
	size_t want;             /* limit + 1: the extra one tells has_more */
	bool nomem;
};

static int page_cb(void *ud, uint64_t seq, const void *data, size_t len)
{
	struct page *p = ud;
	if(p->n == p->want) return 1;
	p->items[p->n] = raw_item(data, len);
	if(!p->items[p->n]){
		p->nomem = true;
		return 1;
	}
	p->n++;
	return p->n == p->want;
}

enum chat_err message__history(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_error *e)
{
	static const char *const fields[] = {"op", "req_id", "conv", "before", "after", "limit", NULL};
	struct store_conv sc;
	struct page *p;
	const char *conv;
	int64_t before = 0, after = 0, limit = 50;
	bool has_before, has_after, has_limit, has_more;
	uint64_t lo, hi;
	cJSON *arr;
	enum chat_err rc;

	if((rc = json__only_fields(args, fields, e))) return rc;
	if((rc = json__req_id(args, "conv", &conv, e))) return rc;
	if((rc = json__opt_int(args, "before", 0, INT64_MAX / 2, &before, &has_before, e))) return rc;
	if((rc = json__opt_int(args, "after", 0, INT64_MAX / 2, &after, &has_after, e))) return rc;
	if((rc = json__opt_int(args, "limit", 1, chat->cfg.history_limit, &limit, &has_limit, e))) return rc;
	if(!has_limit && limit > (int64_t)chat->cfg.history_limit) limit = chat->cfg.history_limit;
	if((rc = conv__require_member(txn, conv, user, &sc, NULL, e))) return rc;

	p = calloc(1, sizeof(*p));
	if(p) p->items = calloc((size_t)limit + 1, sizeof(cJSON *));
	if(!p || !p->items){
		free(p);
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	p->want = (size_t)limit + 1;
	hi = has_before ? (before > 0 ? (uint64_t)before - 1 : 0) : sc.last_seq;
	if(has_after){
		/* the first `limit` after `after`, oldest first */
		lo = (uint64_t)after + 1;
		store__msgs_range(txn, conv, lo, hi, false, page_cb, p);
	}else{
		/* the last `limit` before `before`, collected newest first */
		lo = 1;
		store__msgs_range(txn, conv, lo, hi, true, page_cb, p);
	}
	has_more = p->n == p->want;
	if(has_more){
		cJSON_Delete(p->items[--p->n]);
	}
	arr = cJSON_AddArrayToObject(result, "messages");
	for(size_t i = 0; i < p->n; i++){
		size_t k = has_after ? i : p->n - 1 - i;
		if(!p->nomem && arr){
			cJSON_AddItemToArray(arr, p->items[k]);
		}else{
			cJSON_Delete(p->items[k]);
		}
	}
	free(p->items);
	free(p);
	if(!arr || !cJSON_AddBoolToObject(result, "has_more", has_more)){
		return chat__fail(e, CHAT_E_NOMEM, "out of memory");
	}
	return CHAT_E_OK;
}

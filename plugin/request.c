/*
 * request.c — requests on {prefix}/req: parse, route to the op, reply.
 *
 * Each request runs in one transaction (a write transaction for ops that
 * change state). If the op fails, the transaction is aborted and everything
 * it queued (system messages, events) is dropped, so a client never sees an
 * event for a change that was not stored. The reply goes to the requesting
 * device alone: to its MQTT 5 Response Topic (which must be under
 * {prefix}/u/{me}/) with its Correlation Data, else to {prefix}/u/{me}/reply
 * with the request's req_id echoed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

struct op_entry {
	const char *name;
	conv_op_fn fn;
	bool write;
};

static enum chat_err history_op(struct chat *chat, struct store_txn *txn, const char *user, const cJSON *args,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	chat->stats.history_requests++;
	return message__history(chat, txn, user, args, result, e);
}

static const struct op_entry ops[] = {
	{"conv.create", conv__create, true},
	{"conv.list", conv__list, false},
	{"conv.get", conv__get, false},
	{"conv.update", conv__update, true},
	{"members.add", conv__members_add, true},
	{"members.remove", conv__members_remove, true},
	{"history", history_op, false},
	{"receipts.get", receipt__get, false},
	{"receipts.counts", receipt__counts, false},
	{"devices.register", push__devices_register, true},
	{"devices.unregister", push__devices_unregister, true},
	{"devices.list", push__devices_list, false},
	{"conv.mute", push__conv_mute, true},
	{"conv.preview", push__conv_preview, true},
};

static const struct op_entry *find_op(const char *name)
{
	for(size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++){
		if(!strcmp(ops[i].name, name)) return &ops[i];
	}
	return NULL;
}

/* A Response Topic is accepted when it is {prefix}/u/{me}/<something> with
 * no wildcard: the plugin publishes only where the requester may read. */
static bool response_topic_ok(const struct chat_config *cfg, const char *topic, const char *user)
{
	char base[CHAT_TOPIC_MAX];
	size_t n;
	if(!topic__build(base, sizeof(base), cfg, "u", user, "")) return false;
	n = strlen(base);
	return strncmp(topic, base, n) == 0 && topic[n] != '\0' && !strpbrk(topic, "+#")
		&& strlen(topic) < CHAT_TOPIC_MAX;
}

/* Copies op and req_id (when readable) into the reply. */
static enum chat_err reply_header(cJSON *reply, const cJSON *req, const char **op, struct chat_error *e)
{
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(req, "op");
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "req_id");
	enum chat_err rc = CHAT_E_OK;

	if(cJSON_IsString(o)){
		*op = o->valuestring;   /* a longer one is no op either: unknown_op */
		if(strlen(o->valuestring) <= 32) cJSON_AddStringToObject(reply, "op", o->valuestring);
	}
	if(id){
		if(cJSON_IsString(id) && strlen(id->valuestring) <= CHAT_REQ_ID_MAX){
			cJSON_AddStringToObject(reply, "req_id", id->valuestring);
		}else if(cJSON_IsNumber(id) && id->valuedouble >= -0x1p63 && id->valuedouble < 0x1p63   /* cast defined */
				&& id->valuedouble == (double)(int64_t)id->valuedouble){
			cJSON_AddNumberToObject(reply, "req_id", id->valuedouble);
		}else{
			rc = chat__fail(e, CHAT_E_INVALID_FIELD, "'req_id' must be a string of at most %d characters or an integer",
					CHAT_REQ_ID_MAX);
		}
	}
	if(!rc && !cJSON_IsString(o)) rc = chat__fail(e, CHAT_E_INVALID_FIELD, "'op' is required and must be a string");
	return rc;
}

/* Runs op in its own transaction; result gets the op's fields. */
static enum chat_err run_op(struct chat *chat, const struct op_entry *op, const char *user, const cJSON *req,
		cJSON *result, struct chat_outbox *out, struct chat_error *e)
{
	struct store_txn *txn;
	enum chat_err rc;

	if(store__begin(chat->store, op->write, &txn) != STORE_OK){
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	rc = op->fn(chat, txn, user, req, result, out, e);
	if(rc){
		store__abort(txn);
		return rc;
	}
	if(store__commit(txn) != STORE_OK){
		return chat__fail(e, CHAT_E_STORE, "%s", store__last_error(chat->store));
	}
	return CHAT_E_OK;
}

enum chat_verdict request__handle(struct chat *chat, const struct chat_client *cl,
		const void *payload, size_t len, struct chat_outbox *out)
{
	struct chat_error e = {0};
	struct chat_outbox effects;
	char topic[CHAT_TOPIC_MAX];
	const struct op_entry *op = NULL;
	const char *op_name = NULL;
	cJSON *req = NULL, *reply = NULL, *result = NULL, *it;
	enum chat_err rc;
	enum chat_err limited = ratelimit__take(chat, cl, CHAT_RATE_REQUEST, &e);   /* before anything is run */

	if(!topic__build(topic, sizeof(topic), &chat->cfg, "u", cl->username, "reply")) return CHAT_REFUSED;
	chat->stats.requests++;
	outbox__init(&effects);
	reply = cJSON_CreateObject();
	result = cJSON_CreateObject();
	if(!reply || !result){
		cJSON_Delete(reply);
		cJSON_Delete(result);
		return CHAT_STORE_FAILED;
	}

	cJSON_AddTrueToObject(reply, "ok");   /* first key; replaced on failure */
	rc = json__parse_object(payload, len, chat->cfg.max_payload, &req, &e);
	if(!rc) rc = reply_header(reply, req, &op_name, &e);
	if(!rc && cl->response_topic){
		if(response_topic_ok(&chat->cfg, cl->response_topic, cl->username)){
			snprintf(topic, sizeof(topic), "%s", cl->response_topic);
		}else{
			rc = chat__fail(&e, CHAT_E_INVALID_RESPONSE_TOPIC, "the response topic must be under %s/u/%s/",
					chat->cfg.prefix, cl->username);
		}
	}
	if(!rc) rc = limited;
	if(!rc && !(op = find_op(op_name))){
		rc = chat__fail(&e, CHAT_E_UNKNOWN_OP, "unknown op '%.32s'", op_name);
	}
	if(!rc) rc = run_op(chat, op, cl->username, req, result, &effects, &e);
	if(rc == CHAT_E_STORE && op && op->write && store__full(chat->store)){
		/* a full map refuses the change but keeps the client: reads go on */
		rc = chat__fail(&e, CHAT_E_STORAGE_FULL, "the server's storage is full: nothing was changed, try again later");
	}

	if(rc == CHAT_E_STORE || rc == CHAT_E_NOMEM){
		outbox__clear(&effects);
		cJSON_Delete(req);
		cJSON_Delete(reply);
		cJSON_Delete(result);
		return CHAT_STORE_FAILED;
	}
	if(rc){
		cJSON *err;
		stats__request_error(chat, rc);
		outbox__clear(&effects);
		cJSON_ReplaceItemInObjectCaseSensitive(reply, "ok", cJSON_CreateFalse());
		err = cJSON_AddObjectToObject(reply, "error");
		if(err){
			cJSON_AddStringToObject(err, "code", chat_err__code(rc));
			cJSON_AddStringToObject(err, "message", e.message);
			if(rc == CHAT_E_RATE_LIMITED) cJSON_AddNumberToObject(err, "retry_after_ms", e.retry_after_ms);
		}
	}else{
		/* {"ok":true,"op","req_id", …result} */
		while((it = result->child) != NULL){
			cJSON_DetachItemViaPointer(result, it);
			cJSON_AddItemToObject(reply, it->string, it);
		}
	}
	/* the reply first, then what the op caused */
	outbox__add_json(out, topic, reply, OUTBOX_SENDER, true);
	outbox__append(out, &effects);
	cJSON_Delete(req);
	cJSON_Delete(reply);
	cJSON_Delete(result);
	return CHAT_CONSUMED;
}

/*
 * chat.c — the core's entry points: open/close, and the dispatch of one
 * inbound publish to the room that handles it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int chat__open(struct chat **out, struct chat_config *cfg, char *err, size_t errlen)
{
	struct chat *chat;

	*out = NULL;
	if(cfg->max_body > cfg->max_payload){
		snprintf(err, errlen, "plugin_opt_max_body (%u) is larger than plugin_opt_max_payload (%u)",
				cfg->max_body, cfg->max_payload);
		return -1;
	}
	if(!cfg->db_path){
		snprintf(err, errlen, "plugin_opt_db_path is required (a directory for the LMDB files)");
		return -1;
	}
	chat = calloc(1, sizeof(*chat));
	if(!chat){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	chat->cfg = *cfg;          /* the chat owns the config's memory from now on */
	memset(cfg, 0, sizeof(*cfg));
	chat->now_ms = json__now_ms;
	chat->payload_alloc = malloc;
	chat->payload_free = free;
	chat->push_resend_all = true;   /* every job still in the outbox goes out again */
	chat->stats.started_ms = chat->now_ms();
	struct store_opts so = {
		.map_size = chat->cfg.map_size,
		.sync_each = chat->cfg.fsync == CHAT_FSYNC_ALWAYS,
		.flush_ms = chat->cfg.sync_interval_ms,
		.journal = chat->cfg.journal >= 0 ? chat->cfg.journal == 1 : chat->cfg.fsync == CHAT_FSYNC_ALWAYS,
		.commit_ms = chat->cfg.commit_interval_ms != CHAT_COMMIT_DEFAULT ? chat->cfg.commit_interval_ms
				: chat->cfg.fsync == CHAT_FSYNC_ALWAYS ? 100 : 0,
	};
	if(store__open_ex(&chat->store, chat->cfg.db_path, &so, err, errlen) != STORE_OK){
		chat__close(chat);
		return -1;
	}
	*out = chat;
	return 0;
}

void chat__close(struct chat *chat)
{
	if(!chat) return;
	typing__free(chat);
	ratelimit__free(chat);
	presence__free(chat);
	store__close(chat->store);
	config__free(&chat->cfg);
	free(chat);
}

/* The room that handles one inbound publish of a valid user. */
static enum chat_verdict dispatch(struct chat *chat, const struct chat_client *cl, const struct topic_ref *ref,
		const void *payload, size_t len, struct chat_outbox *out, struct chat_rewrite *rw)
{
	struct chat_error e;

	switch(ref->kind){
		case TOPIC_SEND:
			return message__send(chat, cl, ref, payload, len, out);
		case TOPIC_REQ:
			return request__handle(chat, cl, payload, len, out);
		case TOPIC_TYPING:
			return typing__handle(chat, cl, ref, payload, len, out);
		case TOPIC_RECEIPT:
			return receipt__handle(chat, cl, ref, payload, len, out);
		case TOPIC_PRESENCE:
			return presence__handle(chat, cl, ref, payload, len, out, rw);
		case TOPIC_PUSH_ACK:
			return push__ack(chat, cl, payload, len);
		case TOPIC_PUSH_STATUS:
			return CHAT_PASS;   /* the bridge's retained counters, routed as published */
		default:
			/* the write ACL already refuses these; never let one through */
			chat__fail(&e, CHAT_E_NOT_SUPPORTED, "nothing is served on this topic");
			return message__refuse(chat, cl, ref, NULL, &e, out);
	}
}

enum chat_verdict chat__handle_publish(struct chat *chat, const struct chat_client *cl, const char *topic,
		const void *payload, size_t len, struct chat_outbox *out, struct chat_rewrite *rw)
{
	struct topic_ref ref;
	enum chat_verdict v;

	topic__parse(&chat->cfg, topic, &ref, NULL);
	if(ref.kind == TOPIC_OUTSIDE) return CHAT_PASS;
	if(!cl->username || !json__valid_id(cl->username, strlen(cl->username))) return CHAT_REFUSED;
	if(ref.kind != TOPIC_PRESENCE) presence__track(chat, cl->conn, cl->username);

	v = dispatch(chat, cl, &ref, payload, len, out, rw);
	/* refused too often in a row: this publish was refused too, and rather
	 * than answer it the connection goes (its answer is not needed) */
	if(chat->rate_conns && ratelimit__kick(chat, cl)){
		outbox__clear(out);
		if(v == CHAT_REWRITE){
			free(rw->payload);
			rw->payload = NULL;
		}
		return CHAT_DISCONNECT;
	}
	return v;
}

void chat__tick(struct chat *chat, struct chat_outbox *out)
{
	if(chat->typing) typing__expire(chat, chat->now_ms(), out);
	if(chat->offline_pending) presence__tick(chat, out);
	push__tick(chat, out);
	stats__tick(chat, chat->now_ms(), out);
	ratelimit__sweep(chat, chat->now_ms());
	store__tick(chat->store);   /* last: the timed work above is in the batch it commits */
}

void chat__disconnect(struct chat *chat, const void *conn, struct chat_outbox *out)
{
	presence__disconnect(chat, conn, out);
	ratelimit__forget(chat, conn);
}

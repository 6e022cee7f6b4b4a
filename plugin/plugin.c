/*
 * plugin.c — the broker adapter: mosquitto 2.0 plugin API v5 entry points.
 *
 * The only file that includes mosquitto's headers. It turns broker events
 * into calls on the core (chat.h) and the core's results into broker
 * actions: a verdict for the publish, and mosquitto_broker_publish for each
 * entry of the outbox.
 *
 * Callbacks: ACL_CHECK (every publish, subscribe and delivery), MESSAGE
 * (inbound chat publishes; runs before the broker sends the PUBACK, so a
 * commit here makes "acked means stored" true), DISCONNECT (a device is
 * gone: presence), TICK (typing expiry, presence grace, push outbox); with
 * plugin_opt_auth jwt also BASIC_AUTH (every CONNECT: the password is a JWT)
 * and RELOAD (SIGHUP: re-read the key files).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "chat.h"

#define CHAT_EXPORT __attribute__((visibility("default")))
#define LOG_PREFIX "mosquitto-chat: "

struct plugin {
	mosquitto_plugin_id_t *id;
	struct chat *chat;
	bool acl_registered, message_registered, tick_registered, disconnect_registered;
	bool auth_registered, reload_registered;
	struct jwt_keys *jwt_keys;      /* auth jwt: replaced whole on a good reload */
	/* A stamped message went to mosquitto_broker_publish in this pass of the
	 * broker's loop. The broker routes such publishes at the start of its next
	 * pass, so a send delivered in place now (deliver_inbound) would overtake
	 * it: members must get a conversation's messages in seq order. The tick,
	 * which ends every pass, clears it. */
	bool seq_queued;
	uint64_t full_logged;     /* store__full_count() when the map-full warning was last logged */
	time_t full_logged_at;
};

/* A full map refuses writes (sends get no PUBACK, requests storage_full)
 * while reads go on: tell the operator what to do, at most once a minute
 * however many writes fail meanwhile. */
static void log_map_full(struct plugin *pl)
{
	uint64_t n = store__full_count(pl->chat->store);
	time_t now = time(NULL);

	if(n == pl->full_logged || (pl->full_logged_at && now - pl->full_logged_at < 60)) return;
	mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "the database %s is full (map size %zu bytes): %llu write(s) "
			"refused so far — sends get no PUBACK, requests that write get storage_full, reads go on. "
			"Raise plugin_opt_map_size (and make sure the disk has room) and restart the broker.",
			pl->chat->cfg.db_path, store__map_size(pl->chat->store), (unsigned long long)n);
	pl->full_logged = n;
	pl->full_logged_at = now;
}

/* ====================================================================== *
 * Outbox → broker
 * ====================================================================== */

/* Publishes every queued entry. The broker owns a payload only once
 * mosquitto_broker_publish succeeded. A payload the core made with the
 * broker's allocator (chat->payload_alloc) is handed over as it is; others
 * are copied into the broker's memory. */
static void flush_outbox(struct plugin *pl, struct chat_outbox *ob, const char *client_id, const void *corr,
		uint16_t corr_len)
{
	for(struct outbox_pub *p = ob->head; p; p = p->next){
		mosquitto_property *props = NULL;
		void *buf;
		int rc;

		if(!p->payload && p->as_inbound) continue;   /* delivered as the inbound publish (deliver_inbound) */
		if(p->in_sequence && p->target == OUTBOX_ALL) pl->seq_queued = true;
		if(p->free_payload == mosquitto_free && p->len > 0){
			buf = p->payload;
			p->payload = NULL;
		}else if((buf = mosquitto_malloc(p->len ? p->len : 1)) != NULL){
			memcpy(buf, p->payload, p->len);
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "out of memory publishing to %s", p->topic);
			continue;
		}
		if(p->correlate && corr
				&& mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, corr_len) != MOSQ_ERR_SUCCESS){
			props = NULL;
		}
		rc = mosquitto_broker_publish(p->target == OUTBOX_SENDER ? client_id : NULL, p->topic, (int)p->len, buf,
				p->qos, p->retain, props);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_free(buf);
			mosquitto_property_free_all(&props);
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "could not publish to %s: %s", p->topic,
					mosquitto_strerror(rc));
		}
	}
	outbox__clear(ob);
}

/* The common send, a QoS 1 publish on {prefix}/send/{conv} without
 * retain or properties, travels on as the stamped message itself: its payload
 * is replaced by the stamped bytes and its topic rewritten in place to
 * {prefix}/c/{conv}/m — one byte shorter, so it fits the broker's own string,
 * whose pointer is kept (replacing the pointer leaks in 2.0.11 and is freed
 * twice from 2.0.15). The broker then routes one message where it would
 * otherwise route the emptied send to no one and, on its next pass, a copy of
 * the stamped one: that second routing was ~4.6k of the broker's 49k
 * instructions per chat message (callgrind). Everything else (QoS 0 or 2 — delivery is QoS 1 and QoS
 * cannot be changed here —, retain, MQTT 5 properties, which would be
 * forwarded, or a stamped message already queued in this pass, which this
 * one must not overtake) takes mosquitto_broker_publish as before. */
static bool deliver_inbound(struct plugin *pl, struct mosquitto_evt_message *ed, struct chat_outbox *ob)
{
	struct outbox_pub *p;
	size_t tl;

	if(ed->qos != 1 || ed->retain || ed->properties || pl->seq_queued) return false;
	for(p = ob->head; p && !p->as_inbound; p = p->next);
	if(!p || p->free_payload != mosquitto_free || p->len == 0 || p->len > UINT32_MAX) return false;
	tl = strlen(p->topic);
	if(tl > strlen(ed->topic)) return false;
	memcpy(ed->topic, p->topic, tl + 1);
	ed->payload = p->payload;   /* the broker frees the send's payload */
	ed->payloadlen = (uint32_t)p->len;
	p->payload = NULL;
	return true;
}

/* ====================================================================== *
 * Callbacks
 * ====================================================================== */

static int acl_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	enum chat_access access;

	switch(ed->access){
		case MOSQ_ACL_READ: access = CHAT_ACCESS_READ; break;
		case MOSQ_ACL_WRITE: access = CHAT_ACCESS_WRITE; break;
		case MOSQ_ACL_SUBSCRIBE: access = CHAT_ACCESS_SUBSCRIBE; break;
		case MOSQ_ACL_UNSUBSCRIBE: access = CHAT_ACCESS_UNSUBSCRIBE; break;
		default: return MOSQ_ERR_PLUGIN_DEFER;
	}
	switch(acl__check(pl->chat, ed->client, mosquitto_client_username(ed->client), access, ed->topic,
				ed->payload, ed->payloadlen)){
		case CHAT_ACL_ALLOW: return MOSQ_ERR_SUCCESS;
		case CHAT_ACL_DENY: return MOSQ_ERR_ACL_DENIED;
		default: return MOSQ_ERR_PLUGIN_DEFER;
	}
}

static int message_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct mosquitto_evt_message *ed = event_data;
	const struct chat_config *cfg = &pl->chat->cfg;
	struct chat_client cl = {0};
	struct chat_rewrite rw = {0};
	struct chat_outbox out;
	char *response_topic = NULL;
	void *corr = NULL;
	uint16_t corr_len = 0;
	enum chat_verdict v;

	/* the common case on a shared broker: not a chat topic at all */
	if(strncmp(ed->topic, cfg->prefix, cfg->prefix_len) != 0 || ed->topic[cfg->prefix_len] != '/'){
		return MOSQ_ERR_SUCCESS;
	}
	cl.conn = ed->client;
	cl.username = mosquitto_client_username(ed->client);
	cl.client_id = mosquitto_client_id(ed->client);
	cl.protocol_version = mosquitto_client_protocol_version(ed->client);
	if(ed->properties){
		mosquitto_property_read_string(ed->properties, MQTT_PROP_RESPONSE_TOPIC, &response_topic, false);
		mosquitto_property_read_binary(ed->properties, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len, false);
	}
	cl.response_topic = response_topic;
	cl.has_correlation = corr != NULL;

	outbox__init(&out);
	v = chat__handle_publish(pl->chat, &cl, ed->topic, ed->payload, ed->payloadlen, &out, &rw);
	if(v == CHAT_CONSUMED && deliver_inbound(pl, ed, &out)) v = CHAT_PASS;
	flush_outbox(pl, &out, cl.client_id, corr, corr_len);
	log_map_full(pl);
	mosquitto_free(response_topic);
	mosquitto_free(corr);

	switch(v){
		case CHAT_PASS:
			return MOSQ_ERR_SUCCESS;
		case CHAT_CONSUMED:
			/* Nobody may subscribe to inbound topics: route an empty,
			 * unretained copy to no one instead of holding the payload. */
			ed->payload = NULL;
			ed->payloadlen = 0;
			ed->retain = false;
			return MOSQ_ERR_SUCCESS;
		case CHAT_REWRITE: {
			/* the broker frees the old payload and takes this one */
			void *buf = mosquitto_malloc(rw.len ? rw.len : 1);
			if(!buf){
				free(rw.payload);
				return MOSQ_ERR_NOMEM;
			}
			memcpy(buf, rw.payload, rw.len);
			free(rw.payload);
			ed->payload = buf;
			ed->payloadlen = (uint32_t)rw.len;
			ed->retain = rw.retain;
			return MOSQ_ERR_SUCCESS;
		}
		case CHAT_REFUSED:
			return MOSQ_ERR_ACL_DENIED;
		case CHAT_DISCONNECT: {
			/* mosquitto closes the connection on any error but ACL_DENIED,
			 * without a PUBACK; this one logs "disconnected by
			 * administrative action" */
			char line[400];
			if(ratelimit__kick_note(pl->chat, &cl, line, sizeof(line))){
				mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "%s", line);
			}
			return MOSQ_ERR_ADMINISTRATIVE_ACTION;
		}
		case CHAT_STORE_FAILED:
		default:
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "could not store a publish from %s on %s: %s; "
					"no PUBACK, the client will resend%s", cl.client_id ? cl.client_id : "?", ed->topic,
					store__last_error(pl->chat->store),
					store__full(pl->chat->store) ? " (the map is full: raise plugin_opt_map_size)" : "");
			return MOSQ_ERR_UNKNOWN;
	}
}

static int disconnect_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct mosquitto_evt_disconnect *ed = event_data;
	struct chat_outbox out;

	outbox__init(&out);
	chat__disconnect(pl->chat, ed->client, &out);
	flush_outbox(pl, &out, NULL, NULL, 0);
	return MOSQ_ERR_SUCCESS;
}

/* Timed work of the core: typing expiry, presence grace, due push jobs. (The
 * disk flush of fsync-less commits runs on the store's own thread.) */
static int tick_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct chat_outbox out;

	outbox__init(&out);
	chat__tick(pl->chat, &out);
	flush_outbox(pl, &out, NULL, NULL, 0);
	log_map_full(pl);
	/* the tick ends the broker's loop pass: whatever was queued so far,
	 * this tick's own publishes included, is routed before the next pass
	 * handles any publish */
	pl->seq_queued = false;
	return MOSQ_ERR_SUCCESS;
}

/* plugin_opt_auth jwt: the plugin decides every login. MOSQ_ERR_AUTH is the
 * only refusal mosquitto 2.0.11 answers with a CONNACK (MQTT 5: 0x87 Not
 * authorized, 3.1.1: 5); the log line names the reason, never the token. On a
 * SIGHUP mosquitto runs this again for every connected client. */
static int basic_auth_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	char why[256];

	if(jwt__is_deferred(&pl->chat->cfg.jwt, ed->username)){
		return MOSQ_ERR_PLUGIN_DEFER;   /* password_file or another plugin decides */
	}
	if(!ed->username){
		snprintf(why, sizeof(why), "no username");
	}else if(!ed->password){
		snprintf(why, sizeof(why), "no password (a JWT is required)");
	}else if(jwt__verify(pl->jwt_keys, &pl->chat->cfg.jwt, ed->password, strlen(ed->password), ed->username,
				(int64_t)time(NULL), why, sizeof(why)) == JWT_OK){
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "login refused for user '%.64s' (client '%.64s'): %s",
			ed->username ? ed->username : "", id ? id : "", why);
	return MOSQ_ERR_AUTH;
}

/* SIGHUP: mosquitto passes no options (the ones from start stay), so re-read
 * the key files they name. A bad file keeps the keys in use. Deferring lets
 * later plugins' RELOAD callbacks run too. */
static int reload_cb(int event, void *event_data, void *userdata)
{
	struct plugin *pl = userdata;
	struct jwt_keys *keys = NULL;
	char err[256], desc[128];

	if(jwt__keys_load(&pl->chat->cfg.jwt, &keys, err, sizeof(err))){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "reload: %s; keeping the JWT keys in use", err);
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	jwt__keys_free(pl->jwt_keys);
	pl->jwt_keys = keys;
	jwt__keys_describe(keys, desc, sizeof(desc));
	mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "reload: JWT keys re-read (%s)", desc);
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* ====================================================================== *
 * Entry points
 * ====================================================================== */

CHAT_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static void plugin_free(struct plugin *pl)
{
	if(!pl) return;
	if(pl->tick_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_TICK, tick_cb, NULL);
	if(pl->disconnect_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_DISCONNECT, disconnect_cb, NULL);
	if(pl->message_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_MESSAGE, message_cb, NULL);
	if(pl->acl_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_ACL_CHECK, acl_cb, NULL);
	if(pl->auth_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_BASIC_AUTH, basic_auth_cb, NULL);
	if(pl->reload_registered) mosquitto_callback_unregister(pl->id, MOSQ_EVT_RELOAD, reload_cb, NULL);
	jwt__keys_free(pl->jwt_keys);
	chat__close(pl->chat);
	mosquitto_free(pl);
}

CHAT_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct chat_config cfg;
	struct plugin *pl = NULL;
	char err[256];
	int rc;

	config__defaults(&cfg);
	for(int i = 0; i < option_count; i++){
		if(config__set(&cfg, options[i].key, options[i].value, err, sizeof(err))){
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s", err);
			goto fail;
		}
	}
	pl = mosquitto_calloc(1, sizeof(*pl));
	if(!pl){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "out of memory");
		goto fail;
	}
	pl->id = identifier;
	if(jwt__config_check(&cfg.jwt, err, sizeof(err))
			|| (cfg.jwt.mode == CHAT_AUTH_JWT && jwt__keys_load(&cfg.jwt, &pl->jwt_keys, err, sizeof(err)))){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s", err);
		goto fail;
	}
	if(chat__open(&pl->chat, &cfg, err, sizeof(err))){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s", err);
		goto fail;
	}
	pl->chat->payload_alloc = mosquitto_malloc;
	pl->chat->payload_free = mosquitto_free;

	rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, acl_cb, NULL, pl);
	if(rc) goto fail_register;
	pl->acl_registered = true;
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, message_cb, NULL, pl);
	if(rc) goto fail_register;
	pl->message_registered = true;
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, tick_cb, NULL, pl);
	if(rc) goto fail_register;
	pl->tick_registered = true;
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, disconnect_cb, NULL, pl);
	if(rc) goto fail_register;
	pl->disconnect_registered = true;
	/* only with auth jwt: registering BASIC_AUTH at all changes what
	 * mosquitto does with anonymous logins */
	if(pl->jwt_keys){
		char desc[128];
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, basic_auth_cb, NULL, pl);
		if(rc) goto fail_register;
		pl->auth_registered = true;
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, reload_cb, NULL, pl);
		if(rc) goto fail_register;
		pl->reload_registered = true;
		jwt__keys_describe(pl->jwt_keys, desc, sizeof(desc));
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "auth jwt: %s, leeway %u s%s%s%s%s", desc,
				pl->chat->cfg.jwt.leeway_s, pl->chat->cfg.jwt.issuer ? ", issuer " : "",
				pl->chat->cfg.jwt.issuer ? pl->chat->cfg.jwt.issuer : "",
				pl->chat->cfg.jwt.audience ? ", audience " : "",
				pl->chat->cfg.jwt.audience ? pl->chat->cfg.jwt.audience : "");
	}

	/* republish stored presence; "online" left by a broker that died is
	 * now "offline" (queued: the broker delivers it on its first loop) */
	{
		struct chat_outbox out;
		outbox__init(&out);
		presence__startup(pl->chat, &out);
		flush_outbox(pl, &out, NULL, NULL, 0);
	}

	{
		struct store_journal_stats js;
		store__journal_stats(pl->chat->store, &js);
		if(js.replayed){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "applied %llu journal records the last run had "
					"acknowledged but not yet committed to the database", (unsigned long long)js.replayed);
		}
		mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "ready: prefix '%s', database %s, fsync %s, journal %s, "
				"observers %zu", pl->chat->cfg.prefix, pl->chat->cfg.db_path,
				pl->chat->cfg.fsync == CHAT_FSYNC_ALWAYS ? "always (power-loss safe)" : "off (crash safe)",
				js.on ? "on" : "off", pl->chat->cfg.observer_count);
	}
	*userdata = pl;
	return MOSQ_ERR_SUCCESS;

fail_register:
	mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "could not register a callback: %s", mosquitto_strerror(rc));
fail:
	config__free(&cfg);
	plugin_free(pl);
	return MOSQ_ERR_INVAL;
}

CHAT_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	plugin_free(userdata);
	return MOSQ_ERR_SUCCESS;
}

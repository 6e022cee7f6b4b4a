/*
 * mqtt.c — the bridge's MQTT client (libmosquitto, no thread of its own: the
 * main loop polls its socket and calls mosquitto_loop_read/write/misc).
 *
 * Jobs come on {prefix}/push/jobs (QoS 1). libmosquitto sends the PUBACK
 * before on_message runs, so that PUBACK promises nothing: the job is ours to
 * confirm, with a QoS 1 publish on {prefix}/push/ack once every device has an
 * outcome (docs/push.md). A bridge killed before that loses nothing: the
 * plugin keeps the job and sends it again.
 *
 * The session is clean: while the bridge is away the broker queues nothing
 * for it, the plugin's re-send does that job (a persistent session would
 * queue one more copy of every job per push_retry_ms of absence).
 *
 * Duplicates: a job whose id is in flight is ignored; a job acked a moment
 * ago (its ack crossed the plugin's re-send) is acked again from the cache of
 * recent acks, not delivered again.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "bridge.h"

#define MQTT_RETRY_MIN_MS 1000
#define MQTT_RETRY_MAX_MS 30000

static char *topic(const char *prefix, const char *rest)
{
	size_t n = strlen(prefix) + strlen(rest) + 1;
	char *t = malloc(n);

	if(t) snprintf(t, n, "%s%s", prefix, rest);
	return t;
}

static const char *mosq_error(int rc)
{
	return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

/* QoS 1 publish. libmosquitto keeps a QoS 1 message it could not send for
 * want of a connection and sends it after the reconnect: NO_CONN is queued. */
static int publish(struct bridge *b, const char *t, const char *payload, bool retain)
{
	int rc = mosquitto_publish(b->mosq, NULL, t, (int)strlen(payload), payload, 1, retain);

	if(rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_NO_CONN){
		b->unconfirmed++;
		return 0;
	}
	log__printf(LOG_ERROR, "mqtt: publish on %s failed: %s", t, mosq_error(rc));
	return -1;
}

void mqtt__ack(struct bridge *b, const char *key, const char *payload)
{
	publish(b, b->topic_ack, payload, false);
	ackcache__put(&b->acks, key, payload);
}

void mqtt__status(struct bridge *b, const char *state)
{
	const struct counters *n = &b->n;
	cJSON *s;
	char *text;

	if(!b->mqtt_connected) return;
	s = cJSON_CreateObject();
	if(!s) return;
#define NUM(name, v) if(!cJSON_AddNumberToObject(s, name, (double)(v))) goto out
	if(!cJSON_AddStringToObject(s, "state", state)) goto out;
	NUM("ts", clock__wall_ms());
	NUM("since", b->started_wall_ms);
	NUM("received", n->received);
	NUM("duplicates", n->duplicates);
	NUM("deferred", n->deferred);
	NUM("invalid", n->invalid);
	NUM("acked", n->acked);
	NUM("delivered", n->delivered);
	NUM("retried", n->retried);
	NUM("failed", n->failed);
	NUM("dead", n->dead);
	NUM("unregistered", n->unregistered);
	NUM("in_flight", b->njobs);
	NUM("jobs_delivered", n->jobs_delivered);
	NUM("jobs_failed", n->jobs_failed);
	NUM("jobs_dead", n->jobs_dead);
	NUM("abandoned", n->abandoned);
	NUM("fcm_tokens", b->fcm.tokens_fetched);
	NUM("apns_jwts", b->apns.jwts_made);
#undef NUM
	text = cJSON_PrintUnformatted(s);
	if(text){
		publish(b, b->topic_status, text, true);
		cJSON_free(text);
	}
out:
	cJSON_Delete(s);
}

/* ----------------------------------------------------------------------
 * Jobs in
 * ---------------------------------------------------------------------- */

static void handle_job(struct bridge *b, const void *payload, size_t len)
{
	struct job *job = NULL, *running = NULL;
	const char *cached;
	char err[BRIDGE_ERR_MAX];
	int rc;

	rc = job__parse(payload, len, &job, err, sizeof(err));
	if(rc == -1){
		b->n.invalid++;
		log__printf(LOG_WARNING, "job dropped (cannot be acked): %s", err);
		return;
	}
	HASH_FIND_STR(b->jobs, job->key, running);
	if(running){
		b->n.duplicates++;
		log__printf(LOG_DEBUG, "job=%s is in flight: copy ignored", job->key + 2);
		job__free(job);
		return;
	}
	cached = ackcache__find(&b->acks, job->key);
	if(cached){
		b->n.duplicates++;
		log__printf(LOG_INFO, "job=%s was acked already: ack sent again", job->key + 2);
		publish(b, b->topic_ack, cached, false);
		job__free(job);
		return;
	}
	if(rc == -2){
		char *ack = job__ack_payload(job);
		b->n.invalid++;
		log__printf(LOG_WARNING, "job=%s invalid (%s): acked failed", job->key + 2, err);
		if(ack){
			b->n.acked++;
			b->n.jobs_failed++;
			mqtt__ack(b, job->key, ack);
			cJSON_free(ack);
		}
		job__free(job);
		return;
	}
	if(b->njobs >= (size_t)b->cfg.max_jobs){
		b->n.deferred++;
		log__printf(LOG_WARNING, "job=%s: %ld jobs in flight (max_jobs): left to the plugin's re-send",
				job->key + 2, b->cfg.max_jobs);
		job__free(job);
		return;
	}
	log__printf(LOG_DEBUG, "job=%s user=%s devices=%zu received", job->key + 2, job->user, job->ndev);
	deliver__add_job(b, job);
}

static void on_message_cb(struct mosquitto *mosq, void *userdata, const struct mosquitto_message *msg)
{
	struct bridge *b = userdata;

	(void)mosq;
	if(!b->taking_jobs){
		b->n.deferred++;    /* arrived after we unsubscribed: the plugin sends it again */
		return;
	}
	if(strcmp(msg->topic, b->topic_jobs)) return;
	handle_job(b, msg->payload ? msg->payload : "", (size_t)msg->payloadlen);
}

/* ----------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------- */

static void on_connect_cb(struct mosquitto *mosq, void *userdata, int rc)
{
	struct bridge *b = userdata;
	int src;

	if(rc){
		log__printf(LOG_ERROR, "mqtt: connection refused: %s", mosquitto_connack_string(rc));
		return;     /* libmosquitto closes the connection: on_disconnect follows */
	}
	log__printf(LOG_INFO, "mqtt: connected to %s:%ld as %s", b->cfg.mqtt_host, b->cfg.mqtt_port, b->cfg.mqtt_username);
	b->mqtt_connected = true;
	b->mqtt_retry_ms = MQTT_RETRY_MIN_MS;
	if(b->taking_jobs){
		src = mosquitto_subscribe(mosq, NULL, b->topic_jobs, 1);
		if(src != MOSQ_ERR_SUCCESS){
			log__printf(LOG_ERROR, "mqtt: subscribe %s: %s", b->topic_jobs, mosq_error(src));
		}
	}
	mqtt__status(b, "running");
}

static void on_subscribe_cb(struct mosquitto *mosq, void *userdata, int mid, int qos_count, const int *granted)
{
	struct bridge *b = userdata;

	(void)mosq;
	(void)mid;
	if(qos_count < 1 || granted[0] > 2){
		log__printf(LOG_ERROR, "mqtt: subscription to %s refused: is %s in plugin_opt_push_users?",
				b->topic_jobs, b->cfg.mqtt_username);
		return;
	}
	b->mqtt_subscribed = true;
	log__printf(LOG_INFO, "mqtt: taking jobs from %s (QoS %d)", b->topic_jobs, granted[0]);
}

static void on_publish_cb(struct mosquitto *mosq, void *userdata, int mid)
{
	struct bridge *b = userdata;

	(void)mosq;
	(void)mid;
	if(b->unconfirmed > 0) b->unconfirmed--;
}

static void on_disconnect_cb(struct mosquitto *mosq, void *userdata, int rc)
{
	struct bridge *b = userdata;

	(void)mosq;
	if(rc && !b->stopping){
		log__printf(LOG_WARNING, "mqtt: connection lost (%s), reconnecting in %" PRId64 " ms", mosq_error(rc),
				b->mqtt_retry_ms);
	}
	b->mqtt_connected = false;
	b->mqtt_subscribed = false;
	b->mqtt_socket = false;
	b->mqtt_next_attempt = clock__mono_ms() + b->mqtt_retry_ms;
	b->mqtt_retry_ms = b->mqtt_retry_ms * 2 > MQTT_RETRY_MAX_MS ? MQTT_RETRY_MAX_MS : b->mqtt_retry_ms * 2;
}

static void on_log_cb(struct mosquitto *mosq, void *userdata, int level, const char *str)
{
	(void)mosq;
	(void)userdata;
	if(level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) log__printf(LOG_WARNING, "libmosquitto: %s", str);
	else log__printf(LOG_DEBUG, "libmosquitto: %s", str);
}

int mqtt__init(struct bridge *b)
{
	const struct bridge_config *cfg = &b->cfg;
	static const char will[] = "{\"state\":\"lost\"}";
	int rc;

	b->topic_jobs = topic(cfg->prefix, "/push/jobs");
	b->topic_ack = topic(cfg->prefix, "/push/ack");
	b->topic_status = topic(cfg->prefix, "/push/status");
	if(!b->topic_jobs || !b->topic_ack || !b->topic_status){
		log__printf(LOG_ERROR, "out of memory");
		return -1;
	}
	b->mosq = mosquitto_new(cfg->mqtt_client_id, true, b);
	if(!b->mosq){
		log__printf(LOG_ERROR, "mosquitto_new: %s", strerror(errno));
		return -1;
	}
	rc = mosquitto_username_pw_set(b->mosq, cfg->mqtt_username, cfg->mqtt_password);
	if(rc == MOSQ_ERR_SUCCESS && cfg->mqtt_tls_ca){
		rc = mosquitto_tls_set(b->mosq, cfg->mqtt_tls_ca, NULL, NULL, NULL, NULL);
	}
	/* Monitoring sees "lost" (retained) when the bridge dies without a word. */
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_will_set(b->mosq, b->topic_status, (int)strlen(will), will, 1, true);
	if(rc != MOSQ_ERR_SUCCESS){
		log__printf(LOG_ERROR, "mqtt: setup: %s", mosq_error(rc));
		return -1;
	}
	mosquitto_connect_callback_set(b->mosq, on_connect_cb);
	mosquitto_disconnect_callback_set(b->mosq, on_disconnect_cb);
	mosquitto_message_callback_set(b->mosq, on_message_cb);
	mosquitto_subscribe_callback_set(b->mosq, on_subscribe_cb);
	mosquitto_publish_callback_set(b->mosq, on_publish_cb);
	mosquitto_log_callback_set(b->mosq, on_log_cb);
	b->taking_jobs = true;
	b->mqtt_retry_ms = MQTT_RETRY_MIN_MS;
	b->mqtt_next_attempt = 0;
	return 0;
}

void mqtt__cleanup(struct bridge *b)
{
	if(b->mosq) mosquitto_destroy(b->mosq);
	b->mosq = NULL;
	free(b->topic_jobs);
	free(b->topic_ack);
	free(b->topic_status);
	b->topic_jobs = b->topic_ack = b->topic_status = NULL;
}

void mqtt__maintain(struct bridge *b, int64_t now)
{
	int rc;

	if(b->mqtt_socket || now < b->mqtt_next_attempt) return;
	/* Blocking TCP (and TLS) connect, a moment on a LAN; the CONNACK is read
	 * by the loop like any packet. Messages queued while disconnected (acks)
	 * are kept by libmosquitto and sent after the CONNACK. */
	rc = mosquitto_connect(b->mosq, b->cfg.mqtt_host, (int)b->cfg.mqtt_port, (int)b->cfg.mqtt_keepalive);
	if(rc != MOSQ_ERR_SUCCESS){
		log__printf(LOG_WARNING, "mqtt: cannot connect to %s:%ld: %s; next attempt in %" PRId64 " ms",
				b->cfg.mqtt_host, b->cfg.mqtt_port, mosq_error(rc), b->mqtt_retry_ms);
		b->mqtt_next_attempt = now + b->mqtt_retry_ms;
		b->mqtt_retry_ms = b->mqtt_retry_ms * 2 > MQTT_RETRY_MAX_MS ? MQTT_RETRY_MAX_MS : b->mqtt_retry_ms * 2;
		return;
	}
	b->mqtt_socket = true;
}

int mqtt__socket(struct bridge *b)
{
	return b->mqtt_socket ? mosquitto_socket(b->mosq) : -1;
}

bool mqtt__want_write(struct bridge *b)
{
	return b->mqtt_socket && mosquitto_want_write(b->mosq);
}

void mqtt__io(struct bridge *b, bool readable, bool writable)
{
	int rc = MOSQ_ERR_SUCCESS;

	if(!b->mqtt_socket) return;
	if(readable) rc = mosquitto_loop_read(b->mosq, 1);
	if(rc == MOSQ_ERR_SUCCESS && b->mqtt_socket && (writable || mosquitto_want_write(b->mosq))){
		rc = mosquitto_loop_write(b->mosq, 1);
	}
	if(rc == MOSQ_ERR_SUCCESS && b->mqtt_socket) rc = mosquitto_loop_misc(b->mosq);
	if(rc != MOSQ_ERR_SUCCESS && b->mqtt_socket){
		/* libmosquitto called on_disconnect unless the error came before it
		 * noticed; make sure the state says disconnected either way. */
		on_disconnect_cb(b->mosq, b, rc);
	}
}

void mqtt__stop_jobs(struct bridge *b)
{
	int rc;

	b->taking_jobs = false;
	if(!b->mqtt_connected) return;
	rc = mosquitto_unsubscribe(b->mosq, NULL, b->topic_jobs);
	if(rc != MOSQ_ERR_SUCCESS) log__printf(LOG_WARNING, "mqtt: unsubscribe: %s", mosq_error(rc));
}

int mqtt__unconfirmed(const struct bridge *b)
{
	return b->unconfirmed;
}

bool mqtt__connected(const struct bridge *b)
{
	return b->mqtt_connected;
}

void mqtt__disconnect(struct bridge *b)
{
	int rc;

	if(!b->mqtt_socket) return;
	rc = mosquitto_disconnect(b->mosq);
	if(rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN){
		log__printf(LOG_WARNING, "mqtt: disconnect: %s", mosq_error(rc));
	}
	/* DISCONNECT was written at once (not in a callback); close the socket. */
	rc = mosquitto_loop_write(b->mosq, 1);
	(void)rc;   /* the connection ends either way */
	b->mqtt_socket = false;
	b->mqtt_connected = false;
}

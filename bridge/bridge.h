/*
 * mosquitto-chat-bridge: the private header of the push bridge daemon.
 *
 * The bridge takes push jobs from the broker (`{prefix}/push/jobs`, QoS 1),
 * delivers them to FCM, APNs or a webhook through one libcurl multi handle,
 * and acks each job on `{prefix}/push/ack` once every device of it has an
 * outcome (docs/push.md). Everything runs on one thread: the main loop polls
 * the MQTT socket, curl's sockets and a self-pipe for signals together.
 *
 * One section per file. All state lives in struct bridge, handed around as
 * the first argument and to libmosquitto/libcurl callbacks as userdata.
 */
#ifndef BRIDGE_H
#define BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <uthash.h>

struct mosquitto;
struct bridge;
struct delivery;

#define BRIDGE_NAME "mosquitto-chat-bridge"
#define BRIDGE_ERR_MAX 512

/* ======================================================================
 * clock.c — monotonic and wall clocks in milliseconds
 * ====================================================================== */

int64_t clock__mono_ms(void);   /* for scheduling: never jumps */
int64_t clock__wall_ms(void);   /* for JWT iat, webhook timestamps, status */

/* ======================================================================
 * log.c — one line per event on stderr (systemd puts it in the journal)
 * ====================================================================== */

enum log_level {
	LOG_DEBUG = 0,
	LOG_INFO,
	LOG_WARNING,
	LOG_ERROR,
};

void log__set_level(enum log_level level);
void log__printf(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ======================================================================
 * config.c — the bridge's own config file (key = value lines)
 * ====================================================================== */

struct config_fcm {
	bool enabled;
	char *service_account;  /* path of the service-account JSON */
	char *project_id;       /* default: the JSON's project_id */
	char *token_url;        /* default: the JSON's token_uri */
	char *send_url;         /* base URL, default https://fcm.googleapis.com */
	char *ca_file;
};

struct config_apns {
	bool enabled;
	char *key_file;         /* the .p8 (PKCS#8 PEM, P-256) */
	char *key_id;
	char *team_id;
	char *topic;            /* bundle id */
	char *push_type;        /* default alert */
	char *host;             /* base URL, resolved from production|sandbox|URL */
	char *ca_file;
};

struct config_webhook {
	bool enabled;
	char *url;
	char *secret;
	char *ca_file;
};

struct bridge_config {
	char *path;                 /* of the config file, for messages */
	char *mqtt_host;
	long mqtt_port;
	char *mqtt_username;
	char *mqtt_password;
	char *mqtt_client_id;
	char *mqtt_tls_ca;          /* set: connect with TLS, verifying with this CA file */
	long mqtt_keepalive;        /* seconds */
	char *prefix;               /* first topic level, default chat */
	long concurrency;           /* HTTP requests in flight at once */
	long max_jobs;              /* jobs held in memory; more are left to the plugin's re-send */
	long max_tries;             /* attempts per device before it is dead-lettered */
	long connect_timeout_ms;
	long request_timeout_ms;
	long backoff_base_ms;
	long backoff_max_ms;
	long shutdown_grace_ms;
	long status_interval_ms;
	long ack_cache;             /* recent acks remembered to re-ack re-sent jobs */
	struct config_fcm fcm;
	struct config_apns apns;
	struct config_webhook webhook;
	/* Line of each key in the file (0: not set), for later messages. */
	int line_fcm_enabled, line_apns_enabled, line_webhook_enabled;
	int line_fcm_service_account, line_apns_key_file;
};

/* Reads and checks the file. Returns 0, or -1 with "path:line: sentence" in err. */
int config__load(struct bridge_config *cfg, const char *path, char *err, size_t errlen);
void config__free(struct bridge_config *cfg);
/* Reads a whole (small) file into a NUL-terminated malloc'd buffer. */
char *config__read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen);

/* ======================================================================
 * crypto.c — base64url, JWT signing (RS256, ES256), HMAC-SHA256, jitter
 * ====================================================================== */

enum jwt_alg {
	JWT_RS256,
	JWT_ES256,
};

/* malloc'd base64url without padding, or NULL */
char *crypto__b64url(const unsigned char *in, size_t len);
/* Loads an unencrypted PEM private key (PKCS#8 or traditional). NULL + err on failure. */
EVP_PKEY *crypto__load_key(const char *pem, size_t len, char *err, size_t errlen);
/* Checks the key fits the algorithm (RSA ≥ 2048 / EC P-256). */
int crypto__check_key(EVP_PKEY *key, enum jwt_alg alg, char *err, size_t errlen);
/* Returns malloc'd "header.claims.signature" (ES256: raw 64-byte r||s), or NULL. */
char *crypto__jwt(EVP_PKEY *key, enum jwt_alg alg, const cJSON *header, const cJSON *claims);
/* out = lowercase hex HMAC-SHA256(key, a || b || c); returns 0 or -1. */
int crypto__hmac_sha256_hex(const char *key, size_t keylen, const char *a, size_t alen, const char *b,
		size_t blen, const char *c, size_t clen, char out[65]);
uint64_t crypto__seed(void);
/* xorshift64*: a uniform number in [0, bound] (bound ≥ 0) */
int64_t crypto__jitter(uint64_t *state, int64_t bound);

/* ======================================================================
 * job.c — a push job: parsing, notification text, in-flight table, acks
 * ====================================================================== */

enum platform {
	PLATFORM_FCM = 0,
	PLATFORM_APNS,
	PLATFORM_WEBHOOK,
	PLATFORM_UNKNOWN,
};
const char *job__platform_name(enum platform p);

/* What became of one device. */
enum outcome {
	OUTCOME_NONE = 0,       /* still being delivered */
	OUTCOME_DELIVERED,      /* the provider accepted it */
	OUTCOME_FAILED,         /* refused for good, token kept */
	OUTCOME_UNREGISTER,     /* refused for good, token to be removed */
	OUTCOME_DEAD,           /* retryable errors until max_tries */
};

struct job {
	UT_hash_handle hh;          /* in bridge.jobs, by key */
	char key[80];               /* "n:17" or "s:<id>": the dedup key */
	cJSON *root;                /* the job as received; owns every string below */
	cJSON *id;                  /* borrowed from root: echoed in the ack as received */
	const char *user;
	const char *conv;
	const char *conv_name;      /* may be NULL */
	const char *from;           /* may be NULL */
	const char *preview;        /* NULL when the job has none */
	bool group;
	long long seq;
	long long count;
	long long badge;            /* -1: none */
	char *title;                /* malloc'd notification text */
	char *body;
	size_t ndev;
	struct delivery *dev;       /* ndev deliveries */
	size_t remaining;           /* deliveries without an outcome */
	bool started;               /* some transfer began: finish it even when stopping */
	int64_t received_ms;
};

/* Parses a job payload. Returns 0 with *out set, -1 (no usable id: drop it) or
 * -2 (has an id, but is invalid: ack it "failed"; *out is set, without devices).
 * err gets a sentence either way. */
int job__parse(const void *payload, size_t len, struct job **out, char *err, size_t errlen);
void job__free(struct job *job);
/* The job's result from its devices' outcomes: "delivered", "dead" or "failed". */
const char *job__result(const struct job *job);
/* The ack payload (malloc'd JSON text, cJSON_free it), or NULL. */
char *job__ack_payload(const struct job *job);
/* The webhook body for one device: the job with devices = [that device] and
 * notification {title, body}. cJSON_free it. */
char *job__webhook_body(const struct job *job, size_t dev_index);

/* Recent acks, by job key, to re-ack a job the plugin sends again after we
 * acked it (the ack crossed its re-send) without delivering it twice. */
struct ack_entry {
	UT_hash_handle hh;
	char key[80];
	char *payload;
	struct ack_entry *older, *newer;
};
struct ack_cache {
	struct ack_entry *by_key;
	struct ack_entry *oldest, *newest;
	size_t count, max;
};
const char *ackcache__find(struct ack_cache *c, const char *key);
void ackcache__put(struct ack_cache *c, const char *key, const char *payload);
void ackcache__free(struct ack_cache *c);

/* ======================================================================
 * http.c — the curl multi handle, a pool of easy handles, transfers
 * ====================================================================== */

struct http_buf {
	char *data;         /* NUL-terminated */
	size_t len, cap;
};

enum xfer_kind {
	XFER_DELIVERY,
	XFER_OAUTH,
};

/* One HTTP request. Owned by a delivery or by the FCM token state. */
struct transfer {
	enum xfer_kind kind;
	void *owner;
	CURL *easy;                 /* NULL when not running */
	struct curl_slist *headers;
	char *body;                 /* request body, owned */
	bool body_cjson;            /* body came from cJSON_Print*: cJSON_free it */
	bool in_multi;              /* added to the multi handle */
	struct http_buf resp;       /* response body (capped) */
	long retry_after_s;         /* Retry-After of the response, -1 if none */
	char apns_id[64];           /* apns-id of the response, if any */
	char errbuf[CURL_ERROR_SIZE];
	int64_t started_ms;
};

struct http_pool {
	CURL **free;
	size_t nfree, cap;
};

int http__init(struct bridge *b);
void http__cleanup(struct bridge *b);
enum http_mode {
	HTTP_1,             /* HTTP/1.1 only */
	HTTP_2_OFFER,       /* HTTP/2 if TLS ALPN agrees, else HTTP/1.1 on as many connections as needed */
	HTTP_2_MULTIPLEX,   /* a known HTTP/2 service: new requests wait for the connection and share it */
};

/* Takes an easy handle and sets the common options: POST to url, timeouts,
 * TLS verification (with ca_file if set), the HTTP version, response
 * capture. Returns 0 or -1 (logged). */
int http__begin(struct bridge *b, struct transfer *t, const char *url, const char *ca_file, enum http_mode mode);
/* Adds one "Name: value" header; returns 0 or -1. */
int http__header(struct transfer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the request body (takes ownership of body, malloc'd or cJSON-printed). */
int http__body(struct transfer *t, char *body, bool cjson_owned);
/* Hands the transfer to the multi handle. On failure the transfer is released. */
int http__start(struct bridge *b, struct transfer *t);
/* Removes the transfer from the multi handle (if running) and releases it. */
void http__release(struct bridge *b, struct transfer *t);
/* Runs curl and dispatches finished transfers. */
int http__perform(struct bridge *b);
long http__status(const struct transfer *t);

/* ======================================================================
 * fcm.c — Firebase Cloud Messaging HTTP v1, OAuth 2 service-account tokens
 * ====================================================================== */

struct fcm_state {
	EVP_PKEY *key;
	char *client_email;
	char *project_id;
	char *token_url;
	char *send_url;             /* {send_url}/v1/projects/{project}/messages:send */
	char *access_token;         /* NULL: none */
	int64_t token_refresh_ms;   /* mono time to fetch a new one */
	struct transfer oauth;      /* the token request, when running */
	bool oauth_running;
	unsigned long tokens_fetched;   /* also the generation of access_token */
};

int fcm__init(struct bridge *b, char *err, size_t errlen);
void fcm__cleanup(struct bridge *b);
/* Prepares the send for d. Returns 0 (ready), 1 (parked until a token
 * arrives: a token request is running) or -1 (error, retryable). */
int fcm__prepare(struct bridge *b, struct delivery *d);
enum outcome fcm__classify(struct bridge *b, struct delivery *d, long status, bool *retry);
void fcm__oauth_done(struct bridge *b, CURLcode code);

/* ======================================================================
 * apns.c — Apple Push Notification service over HTTP/2, token auth
 * ====================================================================== */

struct apns_state {
	EVP_PKEY *key;
	char *jwt;
	int64_t jwt_made_ms;        /* mono */
	unsigned long jwts_made;
};

int apns__init(struct bridge *b, char *err, size_t errlen);
void apns__cleanup(struct bridge *b);
int apns__prepare(struct bridge *b, struct delivery *d);
enum outcome apns__classify(struct bridge *b, struct delivery *d, long status, bool *retry);

/* ======================================================================
 * webhook.c — the operator's own endpoint, HMAC-signed JSON
 * ====================================================================== */

int webhook__prepare(struct bridge *b, struct delivery *d);
enum outcome webhook__classify(struct bridge *b, struct delivery *d, long status, bool *retry);

/* ======================================================================
 * deliver.c — deliveries: queue, concurrency, retries, outcomes, acks
 * ====================================================================== */

enum delivery_state {
	DELIVERY_QUEUED = 0,    /* in the ready queue */
	DELIVERY_PARKED,        /* waiting for an FCM access token */
	DELIVERY_RUNNING,       /* its transfer is in the multi handle */
	DELIVERY_BACKOFF,       /* waiting until due_ms */
	DELIVERY_DONE,
};

struct delivery {
	struct job *job;
	size_t index;               /* in job->devices */
	enum platform platform;
	const char *token;          /* borrowed from job->root */
	enum delivery_state state;
	enum outcome outcome;
	unsigned tries;
	long last_status;           /* HTTP status of the last attempt, 0: none */
	char reason[64];            /* provider's reason of the last refusal, for the log */
	unsigned long auth_gen;     /* FCM: which access token the last attempt carried */
	int64_t due_ms;
	int64_t first_ms;           /* first attempt, for the latency in the log */
	struct transfer xfer;
	struct delivery *next;      /* ready queue / parked list / backoff list */
	struct delivery *prev;      /* backoff list */
};

struct counters {
	unsigned long long received;        /* jobs taken on */
	unsigned long long duplicates;      /* copies of a job in flight or recently acked */
	unsigned long long deferred;        /* left to the plugin's re-send: max_jobs reached or stopping */
	unsigned long long invalid;         /* jobs that could not be parsed */
	unsigned long long acked;
	unsigned long long jobs_delivered;
	unsigned long long jobs_failed;     /* acked "failed": counted as dead-lettered */
	unsigned long long jobs_dead;
	unsigned long long delivered;       /* devices accepted by the provider */
	unsigned long long retried;         /* attempts scheduled again */
	unsigned long long failed;          /* devices refused for good (incl. unregistered) */
	unsigned long long dead;            /* devices dead-lettered after max_tries */
	unsigned long long unregistered;    /* tokens sent back for removal */
	unsigned long long abandoned;       /* jobs given up at shutdown, not acked */
};

/* Takes a parsed job (ownership passes) and queues its deliveries. */
void deliver__add_job(struct bridge *b, struct job *job);
/* Moves due retries to the ready queue and starts what the concurrency allows. */
void deliver__pump(struct bridge *b, int64_t now);
/* ms until the next retry is due (or max_ms). */
int64_t deliver__next_due(struct bridge *b, int64_t now, int64_t max_ms);
/* A delivery's transfer ended. */
void deliver__transfer_done(struct bridge *b, struct delivery *d, CURLcode code);
/* The FCM token request ended: parked deliveries go ahead, or count a failed try. */
void deliver__token_ready(struct bridge *b, bool ok);
/* Shutdown: drop jobs not started (not acked: the plugin re-sends them). */
void deliver__drop_unstarted(struct bridge *b);
/* Shutdown deadline: stop every transfer, drop every job without acking it. */
void deliver__abandon_all(struct bridge *b);
/* Whether a transfer runs, a delivery waits to start, or a retry is due by deadline. */
bool deliver__can_progress(const struct bridge *b, int64_t deadline);

/* ======================================================================
 * mqtt.c — libmosquitto: jobs in, acks and status out
 * ====================================================================== */

int mqtt__init(struct bridge *b);
void mqtt__cleanup(struct bridge *b);
/* Connects (blocking) if due; reconnects with backoff after a loss. */
void mqtt__maintain(struct bridge *b, int64_t now);
int mqtt__socket(struct bridge *b);
bool mqtt__want_write(struct bridge *b);
void mqtt__io(struct bridge *b, bool readable, bool writable);
/* QoS 1 ack; the payload is cached for re-acks. */
void mqtt__ack(struct bridge *b, const char *key, const char *payload);
/* Retained status with the counters. */
void mqtt__status(struct bridge *b, const char *state);
/* Stops taking jobs (unsubscribes). */
void mqtt__stop_jobs(struct bridge *b);
/* Publishes not yet confirmed by the broker (PUBACK). */
int mqtt__unconfirmed(const struct bridge *b);
bool mqtt__connected(const struct bridge *b);
/* Sends DISCONNECT. */
void mqtt__disconnect(struct bridge *b);

/* ======================================================================
 * main.c — the bridge state and its loop
 * ====================================================================== */

struct bridge {
	struct bridge_config cfg;
	struct fcm_state fcm;
	struct apns_state apns;
	CURLM *multi;
	struct http_pool pool;
	size_t running;                 /* transfers in the multi handle (deliveries + oauth) */
	size_t running_deliveries;

	/* MQTT */
	struct mosquitto *mosq;
	char *topic_jobs, *topic_ack, *topic_status;
	bool mqtt_connected;            /* CONNACK accepted */
	bool mqtt_socket;               /* a socket exists (connecting or connected) */
	bool mqtt_subscribed;
	int64_t mqtt_next_attempt;      /* mono ms of the next (re)connect */
	int64_t mqtt_retry_ms;          /* current reconnect delay */
	int unconfirmed;                /* QoS 1 publishes without PUBACK */
	bool taking_jobs;

	/* jobs and deliveries */
	struct job *jobs;               /* in flight, by key */
	size_t njobs;
	struct ack_cache acks;
	struct delivery *ready_head, *ready_tail;
	struct delivery *parked;        /* FCM deliveries waiting for a token */
	struct delivery *backoff;       /* doubly linked, unordered */
	struct counters n;
	uint64_t rng;

	/* lifecycle */
	bool stopping;
	int64_t grace_deadline;
	int64_t started_wall_ms;
	bool stop_requested;
	int sigpipe[2];
};

#endif

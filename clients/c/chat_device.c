/*
 * chat_device.c — a mosquitto-chat client for small devices, on libmosquitto alone.
 *
 * A device (a sensor, a controller) is a chat user like any other: it sends
 * its readings as messages to one conversation and takes commands from the
 * messages others send there. This example
 *   - connects (MQTT 3.1.1, the lowest common denominator of small devices),
 *     subscribes to its own topics and to the conversation, says "online";
 *   - finds its conversation: given (-c conv) or the direct one with a user
 *     (-w user: a conv.create request, idempotent per pair);
 *   - sends messages (-m text, repeatable; -r n -t ms: n readings, one every
 *     ms) with a cmid unique per device and boot, so a resend after a lost
 *     PUBACK is stored once;
 *   - receives the conversation's messages in seq order, prints them, and acks
 *     them with a read receipt ({"read": seq}; read implies delivered);
 *   - survives reconnects: libmosquitto resends unacked QoS 1 publishes; after
 *     every (re)connect, and whenever seq jumps (45 after 42), it asks
 *     `history` for everything after the last seq it holds, page by page;
 *   - keeps that last seq in a state file (-S path), so after a reboot it
 *     fetches only what it missed.
 *
 * JSON is formatted and scanned by hand (about 150 lines below): the payloads
 * are small, flat and produced by the plugin, and a device saves a library.
 * The scanner walks a JSON object's top level and skips nested values and
 * strings correctly; it does not validate. Link with -lmosquitto only.
 *
 *   chat_device -h host -p 1883 -u sensor1 [-P pw] (-c conv | -w user)
 *               [-m text]... [-r n -t ms] [-S statefile] [-x n] [-l page] [-i client_id]
 *
 * -x n: exit (0) once n messages from others were received and acked and all
 * sends were acked — handy for tests and one-shot jobs. Prints one line per
 * event on stdout: "connected", "conv <id>", "sent <cmid>", "msg <conv> <seq>
 * <from>: <body>", "filled <n>", "disconnected".
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#define ID_MAX 64
#define TOPIC_MAX 160
#define MAX_SENDS 32
#define HISTORY_PAGE 50         /* default -l: messages per history request */

struct device {
	struct mosquitto *mosq;
	const char *host, *user, *password, *with, *state_path;
	char client_id[ID_MAX + 1];
	int port;
	char conv[ID_MAX + 1];
	uint64_t last_seq;             /* every message up to here was handled */
	uint64_t acked_seq;            /* the read cursor we last sent */
	bool connected, conv_requested, filling, gap_seen;
	const char *texts[MAX_SENDS];  /* -m: sent once the conversation is known */
	int text_count, texts_sent;
	int readings, readings_sent;   /* -r: sensor readings */
	long reading_ms;
	uint64_t next_reading;
	int outstanding;               /* QoS 1 publishes not yet acked (PUBACK) */
	long boot;                     /* part of every cmid: unique per run */
	int cmid_seq;
	int exit_after, received;      /* -x */
	int page;                      /* -l */
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ====================================================================== *
 * A small JSON scanner: find a key at an object's top level, walk arrays
 * ====================================================================== */

static const char *skip_ws(const char *p, const char *end)
{
	while(p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
	return p;
}

/* p at '"': returns the position after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end)
{
	for(p++; p < end; p++){
		if(*p == '\\') p++;
		else if(*p == '"') return p + 1;
	}
	return NULL;
}

/* Skips one value (string, number, literal, object or array). */
static const char *skip_value(const char *p, const char *end)
{
	int depth = 0;

	if(p >= end) return NULL;
	if(*p == '"') return skip_string(p, end);
	if(*p != '{' && *p != '['){
		while(p < end && !strchr(",}] \t\r\n", *p)) p++;
		return p;
	}
	for(; p < end; p++){
		if(*p == '"'){
			if(!(p = skip_string(p, end))) return NULL;
			p--;
		}else if(*p == '{' || *p == '['){
			depth++;
		}else if((*p == '}' || *p == ']') && --depth == 0){
			return p + 1;
		}
	}
	return NULL;
}

/* Finds key at the top level of the object in [obj, obj+len): *val and
 * *vlen receive the raw value. Keys are compared as written (ours have no
 * escapes). */
static bool json_get(const char *obj, size_t len, const char *key, const char **val, size_t *vlen)
{
	const char *p = obj, *end = obj + len, *k, *v;
	size_t klen = strlen(key);

	p = skip_ws(p, end);
	if(p >= end || *p != '{') return false;
	p++;
	while((p = skip_ws(p, end)) < end && *p == '"'){
		k = p + 1;
		if(!(p = skip_string(p, end))) return false;
		bool match = (size_t)(p - 1 - k) == klen && !memcmp(k, key, klen);
		p = skip_ws(p, end);
		if(p >= end || *p != ':') return false;
		v = skip_ws(p + 1, end);
		if(!(p = skip_value(v, end))) return false;
		if(match){
			*val = v;
			*vlen = (size_t)(p - v);
			return true;
		}
		p = skip_ws(p, end);
		if(p < end && *p == ',') p++;
	}
	return false;
}

static bool json_get_u64(const char *obj, size_t len, const char *key, uint64_t *out)
{
	const char *v;
	size_t n;
	char buf[24];
	if(!json_get(obj, len, key, &v, &n) || n == 0 || n >= sizeof(buf) || *v < '0' || *v > '9') return false;
	memcpy(buf, v, n);
	buf[n] = '\0';
	*out = strtoull(buf, NULL, 10);
	return true;
}

/* Appends code point cp as UTF-8. */
static size_t put_utf8(char *o, uint32_t cp)
{
	if(cp < 0x80){ o[0] = (char)cp; return 1; }
	if(cp < 0x800){ o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
	if(cp < 0x10000){
		o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Copies the string value of key, unescaped, into out (truncated to size). */
static bool json_get_str(const char *obj, size_t len, const char *key, char *out, size_t size)
{
	const char *v, *end;
	size_t n, o = 0;

	if(!json_get(obj, len, key, &v, &n) || n < 2 || *v != '"') return false;
	end = v + n - 1;
	for(v++; v < end && o + 5 < size; v++){
		if(*v != '\\'){
			out[o++] = *v;
			continue;
		}
		if(++v >= end) break;
		switch(*v){
			case 'n': out[o++] = '\n'; break;
			case 't': out[o++] = '\t'; break;
			case 'r': out[o++] = '\r'; break;
			case 'b': out[o++] = '\b'; break;
			case 'f': out[o++] = '\f'; break;
			case 'u': {
				uint32_t cp = 0, lo = 0;
				if(end - v < 5 || sscanf(v + 1, "%4x", &cp) != 1) return false;
				v += 4;
				if(cp >= 0xD800 && cp < 0xDC00 && end - v >= 7 && v[1] == '\\' && v[2] == 'u'
						&& sscanf(v + 3, "%4x", &lo) == 1 && lo >= 0xDC00 && lo < 0xE000){
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					v += 6;
				}
				o += put_utf8(out + o, cp);
				break;
			}
			default: out[o++] = *v; break;   /* \" \\ \/ */
		}
	}
	out[o] = '\0';
	return true;
}

/* Iterates an array's elements: *p starts at '[' (first call) or after the
 * previous element; returns false at the end. */
static bool json_array_next(const char **p, const char *end, const char **elem, size_t *elen)
{
	const char *q = skip_ws(*p, end);
	if(q < end && (*q == '[' || *q == ',')) q = skip_ws(q + 1, end);
	if(q >= end || *q == ']') return false;
	*elem = q;
	if(!(q = skip_value(q, end))) return false;
	*elen = (size_t)(q - *elem);
	*p = q;
	return true;
}

/* Writes s as a JSON string (with quotes) into out; false if it does not fit. */
static bool json_quote(const char *s, char *out, size_t size)
{
	size_t o = 0;
	if(size < 3) return false;
	out[o++] = '"';
	for(; *s; s++){
		unsigned char c = (unsigned char)*s;
		if(o + 7 >= size) return false;
		if(c == '"' || c == '\\'){
			out[o++] = '\\';
			out[o++] = (char)c;
		}else if(c < 0x20){
			o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
		}else{
			out[o++] = (char)c;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	return true;
}

/* ====================================================================== *
 * State file: the last seq handled, so a reboot fetches only what it missed
 * ====================================================================== */

static void state_load(struct device *d)
{
	FILE *f;
	char conv[ID_MAX + 1];
	unsigned long long seq;

	if(!d->state_path || !(f = fopen(d->state_path, "r"))) return;
	if(fscanf(f, "%64s %llu", conv, &seq) == 2 && (!d->conv[0] || !strcmp(conv, d->conv))){
		snprintf(d->conv, sizeof(d->conv), "%s", conv);
		d->last_seq = d->acked_seq = seq;
	}
	fclose(f);
}

static void state_save(const struct device *d)
{
	char tmp[4096];
	FILE *f;

	if(!d->state_path || !d->conv[0]) return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", d->state_path);
	if(!(f = fopen(tmp, "w"))) return;
	fprintf(f, "%s %llu\n", d->conv, (unsigned long long)d->last_seq);
	if(fclose(f) == 0) rename(tmp, d->state_path);   /* atomic: never a half-written file */
}

/* ====================================================================== *
 * Publishing
 * ====================================================================== */

static void publish(struct device *d, const char *topic, const char *payload, bool retain)
{
	int rc = mosquitto_publish(d->mosq, NULL, topic, (int)strlen(payload), payload, 1, retain);
	if(rc == MOSQ_ERR_SUCCESS){
		d->outstanding++;   /* libmosquitto keeps it until the PUBACK, resending after a reconnect */
	}else{
		fprintf(stderr, "publish to %s failed: %s\n", topic, mosquitto_strerror(rc));
	}
}

static void request(struct device *d, const char *req_id, const char *body)
{
	char payload[512];
	snprintf(payload, sizeof(payload), "{\"req_id\":\"%s\",%s}", req_id, body);
	publish(d, "chat/req", payload, false);
}

/* history after the last seq we hold (one page; the reply asks for more). */
static void fill_gap(struct device *d)
{
	char body[256];
	if(d->filling || !d->conv[0] || !d->connected) return;
	d->filling = true;
	d->gap_seen = false;
	snprintf(body, sizeof(body), "\"op\":\"history\",\"conv\":\"%s\",\"after\":%llu,\"limit\":%d",
			d->conv, (unsigned long long)d->last_seq, d->page);
	request(d, "history", body);
}

static void send_text(struct device *d, const char *text)
{
	char topic[TOPIC_MAX], body[1024], payload[1200];

	if(!json_quote(text, body, sizeof(body))){
		fprintf(stderr, "message too long for this example's buffer: %.40s…\n", text);
		return;
	}
	snprintf(topic, sizeof(topic), "chat/send/%s", d->conv);
	/* cmid: unique per device, boot and message; a resend of the same
	 * publish carries the same one, so the plugin stores it once */
	snprintf(payload, sizeof(payload), "{\"cmid\":\"%s-%lx-%d\",\"body\":%s}", d->client_id, d->boot,
			++d->cmid_seq, body);
	publish(d, topic, payload, false);
	printf("sent %s-%lx-%d\n", d->client_id, d->boot, d->cmid_seq);
}

/* The read receipt: everything up to last_seq was handled here. */
static void ack(struct device *d)
{
	char topic[TOPIC_MAX], payload[64];
	if(d->last_seq <= d->acked_seq) return;
	snprintf(topic, sizeof(topic), "chat/receipt/%s", d->conv);
	snprintf(payload, sizeof(payload), "{\"read\":%llu}", (unsigned long long)d->last_seq);
	publish(d, topic, payload, false);
	d->acked_seq = d->last_seq;
	state_save(d);
}

/* ====================================================================== *
 * Receiving
 * ====================================================================== */

/* One stamped message, live or from history. Returns true if it was new. */
static bool handle_message(struct device *d, const char *m, size_t len)
{
	char from[ID_MAX + 1] = "", body[2048] = "", type[16] = "";
	uint64_t seq;

	if(!json_get_u64(m, len, "seq", &seq) || seq <= d->last_seq) return false;   /* a duplicate */
	if(seq > d->last_seq + 1){
		d->gap_seen = true;
		fill_gap(d);   /* 45 after 42: history brings 43.. in order */
		return false;
	}
	json_get_str(m, len, "from", from, sizeof(from));
	json_get_str(m, len, "type", type, sizeof(type));
	if(!strcmp(type, "system")) json_get_str(m, len, "event", body, sizeof(body));
	else json_get_str(m, len, "body", body, sizeof(body));
	d->last_seq = seq;
	printf("msg %s %llu %s: %s%s\n", d->conv, (unsigned long long)seq, from, strcmp(type, "system") ? "" : "* ", body);
	if(strcmp(from, d->user) != 0 && strcmp(type, "system") != 0) d->received++;
	/* a device would act on the command here */
	return true;
}

static void subscribe_conv(struct device *d)
{
	char topic[TOPIC_MAX];
	snprintf(topic, sizeof(topic), "chat/c/%s/+", d->conv);
	mosquitto_subscribe(d->mosq, NULL, topic, 1);
	printf("conv %s\n", d->conv);
}

static void handle_reply(struct device *d, const char *r, size_t len)
{
	char req_id[32] = "";
	const char *v, *arr, *elem, *end;
	size_t vlen, elen;
	int n = 0;

	json_get_str(r, len, "req_id", req_id, sizeof(req_id));
	if(!json_get(r, len, "ok", &v, &vlen) || strncmp(v, "true", 4) != 0){
		char err[256] = "";
		if(json_get(r, len, "error", &v, &vlen)) json_get_str(v, vlen, "message", err, sizeof(err));
		fprintf(stderr, "request %s failed: %s\n", req_id, err);
		if(!strcmp(req_id, "history")) d->filling = false;
		return;
	}
	if(!strcmp(req_id, "create")){
		/* {"ok":true,…,"conv":{"conv":"d_…",…}} */
		if(json_get(r, len, "conv", &v, &vlen) && json_get_str(v, vlen, "conv", d->conv, sizeof(d->conv))){
			subscribe_conv(d);
			state_load(d);   /* a state file of this conversation, if any */
			fill_gap(d);
		}
	}else if(!strcmp(req_id, "history")){
		d->filling = false;
		if(json_get(r, len, "messages", &arr, &vlen)){
			end = arr + vlen;
			while(json_array_next(&arr, end, &elem, &elen)) n += handle_message(d, elem, elen);
		}
		printf("filled %d\n", n);
		ack(d);
		/* more pages, or a live message skipped while this page was on its way */
		if((json_get(r, len, "has_more", &v, &vlen) && !strncmp(v, "true", 4)) || d->gap_seen) fill_gap(d);
	}
}

/* ====================================================================== *
 * libmosquitto callbacks
 * ====================================================================== */

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
	struct device *d = obj;
	char topic[TOPIC_MAX];

	if(rc != 0){
		fprintf(stderr, "connection refused: %s\n", mosquitto_connack_string(rc));
		return;
	}
	d->connected = true;
	d->filling = false;
	printf("connected\n");
	snprintf(topic, sizeof(topic), "chat/u/%s/+", d->user);
	mosquitto_subscribe(mosq, NULL, topic, 1);
	snprintf(topic, sizeof(topic), "chat/p/%s", d->user);
	publish(d, topic, "{\"state\":\"online\"}", true);
	if(d->conv[0]){
		subscribe_conv(d);
		fill_gap(d);   /* whatever came while we were away */
	}else if(d->with && !d->conv_requested){
		char body[160];
		snprintf(body, sizeof(body), "\"op\":\"conv.create\",\"type\":\"direct\",\"with\":\"%s\"", d->with);
		request(d, "create", body);
		d->conv_requested = true;
	}
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
	struct device *d = obj;
	d->connected = false;
	d->conv_requested = false;
	if(!stop) printf("disconnected\n");
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
	struct device *d = obj;
	if(d->outstanding > 0) d->outstanding--;
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
	struct device *d = obj;
	char prefix[TOPIC_MAX];
	const char *payload = msg->payload;
	size_t len = (size_t)msg->payloadlen;

	if(!payload) return;
	snprintf(prefix, sizeof(prefix), "chat/c/%s/m", d->conv);
	if(!strcmp(msg->topic, prefix)){
		if(handle_message(d, payload, len)) ack(d);
		return;
	}
	snprintf(prefix, sizeof(prefix), "chat/u/%s/reply", d->user);
	if(!strcmp(msg->topic, prefix)){
		handle_reply(d, payload, len);
		return;
	}
	snprintf(prefix, sizeof(prefix), "chat/u/%s/event", d->user);
	if(!strcmp(msg->topic, prefix)){
		char code[40] = "", text[200] = "";
		json_get_str(payload, len, "code", code, sizeof(code));
		json_get_str(payload, len, "message", text, sizeof(text));
		if(code[0]) fprintf(stderr, "send failed (%s): %s\n", code, text);
	}
}

/* ====================================================================== *
 * Main loop
 * ====================================================================== */

/* Sends what is due: the -m texts once, then a reading every reading_ms. */
static void send_due(struct device *d)
{
	if(!d->connected || !d->conv[0]) return;
	while(d->texts_sent < d->text_count) send_text(d, d->texts[d->texts_sent++]);
	if(d->readings_sent < d->readings && now_ms() >= d->next_reading){
		char reading[64];
		/* a made-up sensor: 21.0 .. 22.9 °C */
		snprintf(reading, sizeof(reading), "temp=%d.%d C", 21 + (d->readings_sent / 10) % 2, d->readings_sent % 10);
		send_text(d, reading);
		d->readings_sent++;
		d->next_reading = now_ms() + (uint64_t)d->reading_ms;
	}
}

static bool done(const struct device *d)
{
	return d->exit_after >= 0 && d->received >= d->exit_after && d->texts_sent == d->text_count
		&& d->readings_sent == d->readings && d->outstanding == 0 && d->acked_seq == d->last_seq;
}

static int usage(const char *argv0)
{
	fprintf(stderr, "usage: %s -h host -p port -u user [-P password] [-i client_id] (-c conv | -w user)\n"
			"          [-m text]... [-r readings -t interval_ms] [-S statefile] [-x n] [-l page]\n", argv0);
	return 2;
}

int main(int argc, char **argv)
{
	struct device d = {.host = "localhost", .port = 1883, .exit_after = -1, .reading_ms = 1000, .page = HISTORY_PAGE};
	unsigned backoff = 1;
	int opt, rc;

	while((opt = getopt(argc, argv, "h:p:u:P:i:c:w:m:r:t:S:x:l:")) != -1){
		switch(opt){
			case 'h': d.host = optarg; break;
			case 'p': d.port = atoi(optarg); break;
			case 'u': d.user = optarg; break;
			case 'P': d.password = optarg; break;
			case 'i': snprintf(d.client_id, sizeof(d.client_id), "%s", optarg); break;
			case 'c': snprintf(d.conv, sizeof(d.conv), "%s", optarg); break;
			case 'w': d.with = optarg; break;
			case 'm':
				if(d.text_count == MAX_SENDS) return usage(argv[0]);
				d.texts[d.text_count++] = optarg;
				break;
			case 'r': d.readings = atoi(optarg); break;
			case 't': d.reading_ms = atol(optarg); break;
			case 'S': d.state_path = optarg; break;
			case 'x': d.exit_after = atoi(optarg); break;
			case 'l': d.page = atoi(optarg); break;
			default: return usage(argv[0]);
		}
	}
	if(!d.user || (!d.conv[0] && !d.with) || d.port <= 0 || d.page < 1 || d.page > 200) return usage(argv[0]);
	if(!d.client_id[0]) snprintf(d.client_id, sizeof(d.client_id), "%s-dev", d.user);
	d.boot = (long)time(NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	state_load(&d);

	mosquitto_lib_init();
	/* clean session: what the broker would have queued, history brings */
	d.mosq = mosquitto_new(d.client_id, true, &d);
	if(!d.mosq){
		fprintf(stderr, "mosquitto_new: %s\n", strerror(errno));
		return 1;
	}
	mosquitto_username_pw_set(d.mosq, d.user, d.password);
	mosquitto_connect_callback_set(d.mosq, on_connect);
	mosquitto_disconnect_callback_set(d.mosq, on_disconnect);
	mosquitto_publish_callback_set(d.mosq, on_publish);
	mosquitto_message_callback_set(d.mosq, on_message);

	rc = mosquitto_connect(d.mosq, d.host, d.port, 30);
	while(!stop && !done(&d)){
		if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_loop(d.mosq, 100, 1);
		if(rc != MOSQ_ERR_SUCCESS){
			/* lost or never made: back off 1, 2, 4 … 30 s, then reconnect;
			 * libmosquitto resends the unacked QoS 1 publishes */
			d.connected = false;
			sleep(backoff);
			backoff = backoff < 16 ? backoff * 2 : 30;
			rc = mosquitto_reconnect(d.mosq);
			continue;
		}
		backoff = 1;
		send_due(&d);
	}
	if(d.connected) mosquitto_disconnect(d.mosq);
	mosquitto_loop(d.mosq, 100, 1);
	mosquitto_destroy(d.mosq);
	mosquitto_lib_cleanup();
	state_save(&d);
	return 0;
}

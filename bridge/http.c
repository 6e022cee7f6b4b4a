/*
 * http.c — every HTTP request of the bridge goes through one curl multi
 * handle, driven from the main loop. Connections live in the multi handle's
 * cache and are reused across requests; APNs and FCM multiplex requests on
 * one HTTP/2 connection (CURLPIPE_MULTIPLEX, with PIPEWAIT so a burst waits
 * for the first connection instead of opening many; an FCM URL answering in
 * HTTP/1.1 gets parallel connections once ALPN has said so). Easy handles are
 * reset and kept in a pool rather than re-created.
 *
 * Every request has a connect timeout and a total timeout; every CURLcode and
 * CURLMcode is checked.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "bridge.h"

#define HTTP_RESP_MAX (64 * 1024)      /* provider error bodies are small; the rest is dropped */
#define HTTP_HEADER_MAX 8192

/* curl_easy_setopt with the failure logged and turned into -1. */
#define SETOPT(easy, opt, val) do{ \
		CURLcode rc_ = curl_easy_setopt((easy), (opt), (val)); \
		if(rc_ != CURLE_OK){ \
			log__printf(LOG_ERROR, "curl_easy_setopt(%s): %s", #opt, curl_easy_strerror(rc_)); \
			return -1; \
		} \
	}while(0)

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct transfer *t = userdata;
	struct http_buf *b = &t->resp;
	size_t n = size * nmemb, take;

	take = b->len < HTTP_RESP_MAX ? HTTP_RESP_MAX - b->len : 0;
	if(take > n) take = n;
	if(take){
		if(b->len + take + 1 > b->cap){
			size_t cap = b->cap ? b->cap : 1024;
			char *p;
			while(cap < b->len + take + 1) cap *= 2;
			p = realloc(b->data, cap);
			if(!p) return 0;    /* makes curl fail the transfer: retried */
			b->data = p;
			b->cap = cap;
		}
		memcpy(b->data + b->len, ptr, take);
		b->len += take;
		b->data[b->len] = '\0';
	}
	return n;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). */
static long parse_retry_after(const char *v)
{
	char *end;
	long s;
	time_t when;

	if(isdigit((unsigned char)*v)){
		s = strtol(v, &end, 10);
		while(isspace((unsigned char)*end)) end++;
		return *end || s < 0 ? -1 : s;
	}
	when = curl_getdate(v, NULL);
	if(when < 0) return -1;
	s = (long)(when - (time_t)(clock__wall_ms() / 1000));
	return s < 0 ? 0 : s;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	struct transfer *t = userdata;
	size_t n = size * nitems;
	char line[512], *v;

	if(n >= sizeof(line)) return n;
	memcpy(line, buf, n);
	line[n] = '\0';
	while(n > 0 && isspace((unsigned char)line[n - 1])) line[--n] = '\0';

	if(!strncmp(line, "HTTP/", 5)){
		t->retry_after_s = -1;     /* a new response (after 100 Continue): forget the last one's */
		t->apns_id[0] = '\0';
		return size * nitems;
	}
	v = strchr(line, ':');
	if(!v) return size * nitems;
	*v++ = '\0';
	while(isspace((unsigned char)*v)) v++;
	if(!strcasecmp(line, "retry-after")){
		t->retry_after_s = parse_retry_after(v);
	}else if(!strcasecmp(line, "apns-id")){
		snprintf(t->apns_id, sizeof(t->apns_id), "%s", v);
	}
	return size * nitems;
}

int http__init(struct bridge *b)
{
	CURLMcode mc;

	b->multi = curl_multi_init();
	if(!b->multi){
		log__printf(LOG_ERROR, "curl_multi_init failed");
		return -1;
	}
	mc = curl_multi_setopt(b->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	if(mc == CURLM_OK) mc = curl_multi_setopt(b->multi, CURLMOPT_MAXCONNECTS, (long)b->cfg.concurrency + 4);
	if(mc != CURLM_OK){
		log__printf(LOG_ERROR, "curl_multi_setopt: %s", curl_multi_strerror(mc));
		return -1;
	}
	b->pool.cap = (size_t)b->cfg.concurrency + 1;
	b->pool.free = calloc(b->pool.cap, sizeof(CURL *));
	if(!b->pool.free){
		log__printf(LOG_ERROR, "out of memory");
		return -1;
	}
	return 0;
}

void http__cleanup(struct bridge *b)
{
	for(size_t i = 0; i < b->pool.nfree; i++){
		curl_easy_cleanup(b->pool.free[i]);
	}
	free(b->pool.free);
	b->pool.free = NULL;
	b->pool.nfree = 0;
	if(b->multi){
		CURLMcode mc = curl_multi_cleanup(b->multi);
		if(mc != CURLM_OK) log__printf(LOG_WARNING, "curl_multi_cleanup: %s", curl_multi_strerror(mc));
		b->multi = NULL;
	}
}

static int set_common(struct bridge *b, struct transfer *t, CURL *e, const char *url, const char *ca_file,
		enum http_mode mode)
{
	SETOPT(e, CURLOPT_URL, url);
	SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(e, CURLOPT_NOSIGNAL, 1L);
	SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, b->cfg.connect_timeout_ms);
	SETOPT(e, CURLOPT_TIMEOUT_MS, b->cfg.request_timeout_ms);
	SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
	SETOPT(e, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if(ca_file) SETOPT(e, CURLOPT_CAINFO, ca_file);
	SETOPT(e, CURLOPT_HTTP_VERSION, mode == HTTP_1 ? (long)CURL_HTTP_VERSION_1_1 : (long)CURL_HTTP_VERSION_2TLS);
	/* PIPEWAIT would also hold requests to a plain-http HTTP/1.1 server
	 * behind the one running: only for services known to speak HTTP/2. */
	if(mode == HTTP_2_MULTIPLEX) SETOPT(e, CURLOPT_PIPEWAIT, 1L);
	SETOPT(e, CURLOPT_USERAGENT, BRIDGE_NAME "/0.1");
	SETOPT(e, CURLOPT_WRITEFUNCTION, write_cb);
	SETOPT(e, CURLOPT_WRITEDATA, t);
	SETOPT(e, CURLOPT_HEADERFUNCTION, header_cb);
	SETOPT(e, CURLOPT_HEADERDATA, t);
	SETOPT(e, CURLOPT_ERRORBUFFER, t->errbuf);
	SETOPT(e, CURLOPT_PRIVATE, t);
	return 0;
}

int http__begin(struct bridge *b, struct transfer *t, const char *url, const char *ca_file, enum http_mode mode)
{
	CURL *e;

	t->headers = NULL;
	t->body = NULL;
	t->body_cjson = false;
	t->resp.len = 0;
	if(t->resp.data) t->resp.data[0] = '\0';
	t->retry_after_s = -1;
	t->apns_id[0] = '\0';
	t->errbuf[0] = '\0';
	t->in_multi = false;

	if(b->pool.nfree){
		e = b->pool.free[--b->pool.nfree];
	}else{
		e = curl_easy_init();
		if(!e){
			log__printf(LOG_ERROR, "curl_easy_init failed");
			return -1;
		}
	}
	t->easy = e;
	if(set_common(b, t, e, url, ca_file, mode)
			|| http__header(t, "Expect:")){     /* no 100-continue round trip on HTTP/1.1 */
		http__release(b, t);
		return -1;
	}
	return 0;
}

int http__header(struct transfer *t, const char *fmt, ...)
{
	char line[HTTP_HEADER_MAX];
	struct curl_slist *l;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if(n < 0 || (size_t)n >= sizeof(line)){
		log__printf(LOG_ERROR, "HTTP header too long");
		return -1;
	}
	l = curl_slist_append(t->headers, line);
	if(!l){
		log__printf(LOG_ERROR, "out of memory (curl_slist_append)");
		return -1;
	}
	t->headers = l;
	return 0;
}

int http__body(struct transfer *t, char *body, bool cjson_owned)
{
	t->body = body;
	t->body_cjson = cjson_owned;
	SETOPT(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
	SETOPT(t->easy, CURLOPT_POSTFIELDS, body);
	return 0;
}

int http__start(struct bridge *b, struct transfer *t)
{
	CURLcode rc;
	CURLMcode mc;

	rc = curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
	if(rc != CURLE_OK){
		log__printf(LOG_ERROR, "curl_easy_setopt(CURLOPT_HTTPHEADER): %s", curl_easy_strerror(rc));
		http__release(b, t);
		return -1;
	}
	mc = curl_multi_add_handle(b->multi, t->easy);
	if(mc != CURLM_OK){
		log__printf(LOG_ERROR, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
		http__release(b, t);
		return -1;
	}
	t->in_multi = true;
	t->started_ms = clock__mono_ms();
	b->running++;
	return 0;
}

void http__release(struct bridge *b, struct transfer *t)
{
	if(t->easy){
		if(t->in_multi){
			CURLMcode mc = curl_multi_remove_handle(b->multi, t->easy);
			if(mc != CURLM_OK) log__printf(LOG_WARNING, "curl_multi_remove_handle: %s", curl_multi_strerror(mc));
			t->in_multi = false;
			b->running--;
		}
		/* Reset drops the options (and our pointers into t), not the
		 * connections: those stay in the multi handle's cache. */
		curl_easy_reset(t->easy);
		if(b->pool.nfree < b->pool.cap){
			b->pool.free[b->pool.nfree++] = t->easy;
		}else{
			curl_easy_cleanup(t->easy);
		}
		t->easy = NULL;
	}
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	if(t->body_cjson) cJSON_free(t->body);
	else free(t->body);
	t->body = NULL;
	free(t->resp.data);
	t->resp.data = NULL;
	t->resp.len = t->resp.cap = 0;
}

long http__status(const struct transfer *t)
{
	long code = 0;

	if(!t->easy || curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK) return 0;
	return code;
}

int http__perform(struct bridge *b)
{
	CURLMsg *msg;
	CURLMcode mc;
	int still = 0, left = 0;

	mc = curl_multi_perform(b->multi, &still);
	if(mc != CURLM_OK){
		log__printf(LOG_ERROR, "curl_multi_perform: %s", curl_multi_strerror(mc));
		return -1;
	}
	while((msg = curl_multi_info_read(b->multi, &left))){
		struct transfer *t = NULL;
		CURLcode rc;
		if(msg->msg != CURLMSG_DONE) continue;
		rc = curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
		if(rc != CURLE_OK || !t){
			log__printf(LOG_ERROR, "curl_easy_getinfo(CURLINFO_PRIVATE): %s", curl_easy_strerror(rc));
			continue;
		}
		if(t->kind == XFER_OAUTH){
			fcm__oauth_done(b, msg->data.result);
		}else{
			deliver__transfer_done(b, (struct delivery *)t->owner, msg->data.result);
		}
	}
	return 0;
}

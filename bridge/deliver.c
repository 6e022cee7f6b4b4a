/*
 * deliver.c — the life of a delivery (one device of one job) and of its job.
 *
 *   queued ──start──▶ running ──2xx──────────────▶ delivered ┐
 *     ▲  │               │ └──410/BadDeviceToken─▶ unregister ├─▶ all devices done:
 *     │  └─no token─▶ parked (FCM)  └──other 4xx──▶ failed     │   ack the job, free it
 *     │                  │ 429/5xx/timeout/conn. error         │
 *     └──── due ── backoff ◀┘        tries == max_tries ─▶ dead ┘
 *
 * At most cfg.concurrency deliveries run at once; the rest wait in the ready
 * queue (FIFO). A retry waits a random time in [0, min(backoff_max, base ·
 * 2^(tries-1))] ("full jitter"), and at least the provider's Retry-After.
 *
 * A job is acked once, when its last device has an outcome; its result is
 * "delivered" (every device accepted), "dead" (none) or "failed" (some).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"

#define RETRY_AFTER_MAX_MS (3600LL * 1000)

static const char *outcome_name(enum outcome o)
{
	switch(o){
		case OUTCOME_DELIVERED: return "delivered";
		case OUTCOME_FAILED: return "failed";
		case OUTCOME_UNREGISTER: return "unregister";
		case OUTCOME_DEAD: return "dead";
		default: return "pending";
	}
}

static bool platform_enabled(const struct bridge *b, enum platform p)
{
	switch(p){
		case PLATFORM_FCM: return b->cfg.fcm.enabled;
		case PLATFORM_APNS: return b->cfg.apns.enabled;
		case PLATFORM_WEBHOOK: return b->cfg.webhook.enabled;
		default: return false;
	}
}

/* ----------------------------------------------------------------------
 * Queues
 * ---------------------------------------------------------------------- */

static void ready_push(struct bridge *b, struct delivery *d)
{
	d->state = DELIVERY_QUEUED;
	d->next = NULL;
	if(b->ready_tail) b->ready_tail->next = d;
	else b->ready_head = d;
	b->ready_tail = d;
}

static struct delivery *ready_pop(struct bridge *b)
{
	struct delivery *d = b->ready_head;

	if(d){
		b->ready_head = d->next;
		if(!b->ready_head) b->ready_tail = NULL;
		d->next = NULL;
	}
	return d;
}

static void backoff_add(struct bridge *b, struct delivery *d, int64_t due)
{
	d->state = DELIVERY_BACKOFF;
	d->due_ms = due;
	d->prev = NULL;
	d->next = b->backoff;
	if(b->backoff) b->backoff->prev = d;
	b->backoff = d;
}

static void backoff_remove(struct bridge *b, struct delivery *d)
{
	if(d->prev) d->prev->next = d->next;
	else b->backoff = d->next;
	if(d->next) d->next->prev = d->prev;
	d->next = d->prev = NULL;
}

/* ----------------------------------------------------------------------
 * Outcomes
 * ---------------------------------------------------------------------- */

static void log_outcome(const struct delivery *d, const char *result, int64_t now, const char *extra)
{
	const struct job *job = d->job;

	log__printf(LOG_INFO, "delivery job=%s user=%s platform=%s token=%.8s%s status=%ld result=%s tries=%u "
			"latency_ms=%" PRId64 "%s%s%s",
			job->key + 2, job->user, job__platform_name(d->platform), d->token,
			strlen(d->token) > 8 ? "…" : "", d->last_status, result, d->tries, now - job->received_ms,
			d->reason[0] ? " reason=" : "", d->reason, extra ? extra : "");
}

static void finish_device(struct bridge *b, struct delivery *d, enum outcome o, int64_t now)
{
	d->outcome = o;
	d->state = DELIVERY_DONE;
	d->job->remaining--;
	switch(o){
		case OUTCOME_DELIVERED: b->n.delivered++; break;
		case OUTCOME_UNREGISTER: b->n.failed++; b->n.unregistered++; break;
		case OUTCOME_FAILED: b->n.failed++; break;
		case OUTCOME_DEAD: b->n.dead++; break;
		default: break;
	}
	log_outcome(d, outcome_name(o), now, NULL);
}

static void remove_job(struct bridge *b, struct job *job)
{
	HASH_DEL(b->jobs, job);
	b->njobs--;
	job__free(job);
}

/* Acks and frees the job once every device has an outcome. */
static void maybe_complete(struct bridge *b, struct job *job, int64_t now)
{
	const char *result;
	char *payload;
	size_t unreg = 0;

	if(job->remaining > 0) return;
	result = job__result(job);
	for(size_t i = 0; i < job->ndev; i++){
		if(job->dev[i].outcome == OUTCOME_UNREGISTER) unreg++;
	}
	payload = job__ack_payload(job);
	if(!payload){
		/* Not acked: the plugin sends it again after push_retry_ms. */
		log__printf(LOG_ERROR, "ack job=%s: out of memory building the ack; left to the plugin's re-send", job->key + 2);
		remove_job(b, job);
		return;
	}
	mqtt__ack(b, job->key, payload);
	cJSON_free(payload);
	b->n.acked++;
	if(!strcmp(result, "delivered")) b->n.jobs_delivered++;
	else if(!strcmp(result, "dead")) b->n.jobs_dead++;
	else b->n.jobs_failed++;
	log__printf(LOG_INFO, "ack job=%s user=%s result=%s devices=%zu unregister=%zu latency_ms=%" PRId64,
			job->key + 2, job->user, result, job->ndev, unreg, now - job->received_ms);
	remove_job(b, job);
}

/* A retryable failure: back off, or dead-letter after max_tries. */
static void retry_or_dead(struct bridge *b, struct delivery *d, long retry_after_s, int64_t now)
{
	int64_t cap, delay;
	char extra[48];

	if(d->tries >= (unsigned)b->cfg.max_tries){
		finish_device(b, d, OUTCOME_DEAD, now);
		maybe_complete(b, d->job, now);
		return;
	}
	cap = b->cfg.backoff_base_ms;
	for(unsigned i = 1; i < d->tries && cap < b->cfg.backoff_max_ms; i++) cap *= 2;
	if(cap > b->cfg.backoff_max_ms) cap = b->cfg.backoff_max_ms;
	delay = crypto__jitter(&b->rng, cap);
	if(retry_after_s >= 0){
		int64_t ra = retry_after_s * 1000LL;
		if(ra > RETRY_AFTER_MAX_MS) ra = RETRY_AFTER_MAX_MS;
		if(delay < ra) delay = ra;
	}
	b->n.retried++;
	snprintf(extra, sizeof(extra), " retry_in_ms=%" PRId64, delay);
	log_outcome(d, "retry", now, extra);
	backoff_add(b, d, now + delay);
}

/* ----------------------------------------------------------------------
 * Attempts
 * ---------------------------------------------------------------------- */

static void start_attempt(struct bridge *b, struct delivery *d, int64_t now)
{
	int rc;

	d->reason[0] = '\0';
	switch(d->platform){
		case PLATFORM_FCM: rc = fcm__prepare(b, d); break;
		case PLATFORM_APNS: rc = apns__prepare(b, d); break;
		case PLATFORM_WEBHOOK: rc = webhook__prepare(b, d); break;
		default: rc = -1; break;
	}
	if(rc == 1){
		d->state = DELIVERY_PARKED;
		d->next = b->parked;
		b->parked = d;
		return;
	}
	d->tries++;
	d->job->started = true;
	if(!d->first_ms) d->first_ms = now;
	d->last_status = 0;
	if(rc == 0 && http__start(b, &d->xfer) == 0){
		d->state = DELIVERY_RUNNING;
		b->running_deliveries++;
		return;
	}
	/* prepare released the transfer on error; http__start too */
	snprintf(d->reason, sizeof(d->reason), "%s", "cannot build the request");
	retry_or_dead(b, d, -1, now);
}

void deliver__add_job(struct bridge *b, struct job *job)
{
	int64_t now = clock__mono_ms();

	job->received_ms = now;
	HASH_ADD_STR(b->jobs, key, job);
	b->njobs++;
	b->n.received++;
	for(size_t i = 0; i < job->ndev; i++){
		struct delivery *d = &job->dev[i];
		if(!platform_enabled(b, d->platform)){
			snprintf(d->reason, sizeof(d->reason), "platform not enabled in the bridge");
			finish_device(b, d, OUTCOME_FAILED, now);
		}else{
			ready_push(b, d);
		}
	}
	maybe_complete(b, job, now);
}

void deliver__pump(struct bridge *b, int64_t now)
{
	struct delivery *d, *next;

	for(d = b->backoff; d; d = next){
		next = d->next;
		if(d->due_ms <= now){
			backoff_remove(b, d);
			ready_push(b, d);
		}
	}
	while(b->running_deliveries < (size_t)b->cfg.concurrency && (d = ready_pop(b))){
		start_attempt(b, d, now);
	}
}

int64_t deliver__next_due(struct bridge *b, int64_t now, int64_t max_ms)
{
	int64_t best = max_ms;

	if(b->ready_head && b->running_deliveries < (size_t)b->cfg.concurrency) return 0;
	for(struct delivery *d = b->backoff; d; d = d->next){
		int64_t wait = d->due_ms - now;
		if(wait < best) best = wait < 0 ? 0 : wait;
	}
	return best;
}

void deliver__transfer_done(struct bridge *b, struct delivery *d, CURLcode code)
{
	int64_t now = clock__mono_ms();
	enum outcome o = OUTCOME_NONE;
	long retry_after = d->xfer.retry_after_s;
	bool retry = true;

	b->running_deliveries--;
	d->last_status = http__status(&d->xfer);
	if(code != CURLE_OK){
		snprintf(d->reason, sizeof(d->reason), "%.63s", d->xfer.errbuf[0] ? d->xfer.errbuf : curl_easy_strerror(code));
		/* no spaces: the log line stays key=value */
		for(char *p = d->reason; *p; p++) if(*p == ' ') *p = '_';
		d->last_status = 0;
	}else{
		switch(d->platform){
			case PLATFORM_FCM: o = fcm__classify(b, d, d->last_status, &retry); break;
			case PLATFORM_APNS: o = apns__classify(b, d, d->last_status, &retry); break;
			case PLATFORM_WEBHOOK: o = webhook__classify(b, d, d->last_status, &retry); break;
			default: o = OUTCOME_FAILED; retry = false; break;
		}
	}
	http__release(b, &d->xfer);
	if(o != OUTCOME_NONE){
		finish_device(b, d, o, now);
		maybe_complete(b, d->job, now);
	}else{
		retry_or_dead(b, d, retry_after, now);
	}
}

void deliver__token_ready(struct bridge *b, bool ok)
{
	int64_t now = clock__mono_ms();
	struct delivery *d = b->parked, *next;

	b->parked = NULL;
	for(; d; d = next){
		next = d->next;     /* d (and its job) may be gone after retry_or_dead */
		if(ok){
			ready_push(b, d);
		}else{
			d->tries++;
			d->job->started = true;
			d->last_status = 0;
			snprintf(d->reason, sizeof(d->reason), "no_fcm_access_token");
			retry_or_dead(b, d, -1, now);
		}
	}
}

/* Removes from a singly linked list every delivery whose job has not started. */
static struct delivery *filter_unstarted(struct delivery *head, struct delivery **tail)
{
	struct delivery *out = NULL, *last = NULL, *next;

	for(struct delivery *d = head; d; d = next){
		next = d->next;
		if(!d->job->started) continue;
		d->next = NULL;
		if(last) last->next = d;
		else out = d;
		last = d;
	}
	if(tail) *tail = last;
	return out;
}

void deliver__drop_unstarted(struct bridge *b)
{
	struct job *job, *tmp;
	size_t dropped = 0;

	b->ready_head = filter_unstarted(b->ready_head, &b->ready_tail);
	b->parked = filter_unstarted(b->parked, NULL);
	HASH_ITER(hh, b->jobs, job, tmp){
		if(job->started) continue;
		remove_job(b, job);
		b->n.deferred++;
		dropped++;
	}
	if(dropped){
		log__printf(LOG_INFO, "shutdown: %zu job(s) not started are left to the plugin's re-send", dropped);
	}
}

void deliver__abandon_all(struct bridge *b)
{
	struct job *job, *tmp;
	size_t n = 0;

	HASH_ITER(hh, b->jobs, job, tmp){
		for(size_t i = 0; i < job->ndev; i++){
			struct delivery *d = &job->dev[i];
			if(d->state == DELIVERY_RUNNING){
				http__release(b, &d->xfer);
				b->running_deliveries--;
			}
		}
		remove_job(b, job);
		b->n.abandoned++;
		n++;
	}
	b->ready_head = b->ready_tail = NULL;
	b->parked = NULL;
	b->backoff = NULL;
	if(n){
		log__printf(LOG_WARNING, "shutdown: grace period over, %zu job(s) not acked: the plugin will send them again", n);
	}
}

/* Whether anything can still finish before the deadline: a transfer runs, a
 * delivery waits to start, or a retry falls due in time. */
bool deliver__can_progress(const struct bridge *b, int64_t deadline)
{
	if(b->running_deliveries || b->ready_head || b->parked) return true;
	for(const struct delivery *d = b->backoff; d; d = d->next){
		if(d->due_ms <= deadline) return true;
	}
	return false;
}

/*
 * job.c — a push job (docs/push.md, schema/push_job.json): parsing and checks,
 * the notification text, the ack payload, the webhook body, and the cache of
 * recent acks.
 *
 * A job keeps the cJSON tree it was parsed from; every string of the job and
 * of its deliveries is borrowed from that tree, so freeing the job frees all.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"

#define JOB_MAX_DEVICES 100
#define JOB_ID_MAX 64

const char *job__platform_name(enum platform p)
{
	switch(p){
		case PLATFORM_FCM: return "fcm";
		case PLATFORM_APNS: return "apns";
		case PLATFORM_WEBHOOK: return "webhook";
		default: return "unknown";
	}
}

static enum platform platform_from(const char *s)
{
	if(!strcmp(s, "fcm")) return PLATFORM_FCM;
	if(!strcmp(s, "apns")) return PLATFORM_APNS;
	if(!strcmp(s, "webhook")) return PLATFORM_WEBHOOK;
	return PLATFORM_UNKNOWN;
}

/* A string member, or NULL when absent, null or not a non-empty string. */
static const char *str_of(const cJSON *obj, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

	if(!cJSON_IsString(item) || !item->valuestring || !item->valuestring[0]) return NULL;
	return item->valuestring;
}

/* An integral number member in [lo, hi], or dflt when absent or null.
 * Returns 0, or -1 when present but not such a number. */
static int int_of(const cJSON *obj, const char *name, long long lo, long long hi, long long dflt, long long *out)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
	double v;

	if(!item || cJSON_IsNull(item)){
		*out = dflt;
		return 0;
	}
	if(!cJSON_IsNumber(item)) return -1;
	v = item->valuedouble;
	if(v != v || v < (double)lo || v > (double)hi || v != (double)(long long)v) return -1;
	*out = (long long)v;
	return 0;
}

/* The dedup key of an id: "n:<integer>" or "s:<string>". */
static int key_of(const cJSON *id, char *key, size_t keylen)
{
	if(cJSON_IsNumber(id)){
		double v = id->valuedouble;
		if(v != v || v < 0 || v > 9007199254740992.0 || v != (double)(long long)v) return -1;
		snprintf(key, keylen, "n:%lld", (long long)v);
		return 0;
	}
	if(cJSON_IsString(id) && id->valuestring){
		size_t n = strlen(id->valuestring);
		if(n < 1 || n > JOB_ID_MAX) return -1;
		snprintf(key, keylen, "s:%s", id->valuestring);
		return 0;
	}
	return -1;
}

static char *dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dup_printf(const char *fmt, ...)
{
	va_list ap;
	char *out;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if(n < 0) return NULL;
	out = malloc((size_t)n + 1);
	if(!out) return NULL;
	va_start(ap, fmt);
	vsnprintf(out, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return out;
}

/* Title: the group's name, or the sender of a direct message. Body: "from:
 * preview" in groups, the preview in direct chats; without a preview "New
 * message" or "N new messages". */
static int make_text(struct job *job)
{
	const char *fallback = job->conv_name ? job->conv_name : job->conv;

	if(job->group){
		job->title = strdup(fallback);
	}else{
		job->title = strdup(job->from ? job->from : fallback);
	}
	if(job->preview){
		if(job->group && job->from){
			job->body = dup_printf("%s: %s", job->from, job->preview);
		}else{
			job->body = strdup(job->preview);
		}
	}else if(job->count > 1){
		job->body = dup_printf("%lld new messages", job->count);
	}else{
		job->body = strdup("New message");
	}
	return job->title && job->body ? 0 : -1;
}

static int parse_devices(struct job *job, const cJSON *devices, char *err, size_t errlen)
{
	const cJSON *dev;
	size_t i = 0, n;

	if(!cJSON_IsArray(devices) || (n = (size_t)cJSON_GetArraySize(devices)) == 0){
		snprintf(err, errlen, "devices must be a non-empty array");
		return -1;
	}
	if(n > JOB_MAX_DEVICES){
		snprintf(err, errlen, "more than %d devices", JOB_MAX_DEVICES);
		return -1;
	}
	job->dev = calloc(n, sizeof(*job->dev));
	if(!job->dev){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	cJSON_ArrayForEach(dev, devices){
		const char *platform = str_of(dev, "platform"), *token = str_of(dev, "token");
		struct delivery *d = &job->dev[i];
		if(!platform || !token){
			snprintf(err, errlen, "devices[%zu] needs a platform and a token", i);
			free(job->dev);
			job->dev = NULL;
			return -1;
		}
		d->job = job;
		d->index = i;
		d->platform = platform_from(platform);
		d->token = token;
		d->xfer.kind = XFER_DELIVERY;
		d->xfer.owner = d;
		i++;
	}
	job->ndev = n;
	job->remaining = n;
	return 0;
}

int job__parse(const void *payload, size_t len, struct job **out, char *err, size_t errlen)
{
	struct job *job;
	cJSON *root, *id;
	const cJSON *type;
	char key[sizeof(job->key)];

	*out = NULL;
	root = cJSON_ParseWithLength(payload, len);
	if(!cJSON_IsObject(root)){
		snprintf(err, errlen, "not a JSON object");
		cJSON_Delete(root);
		return -1;
	}
	id = cJSON_GetObjectItemCaseSensitive(root, "id");
	if(key_of(id, key, sizeof(key))){
		snprintf(err, errlen, "no usable id (an integer ≥ 0 or a string of 1–%d chars)", JOB_ID_MAX);
		cJSON_Delete(root);
		return -1;
	}
	job = calloc(1, sizeof(*job));
	if(!job){
		snprintf(err, errlen, "out of memory");
		cJSON_Delete(root);
		return -1;
	}
	job->root = root;
	job->id = id;
	memcpy(job->key, key, sizeof(key));
	*out = job;

	job->user = str_of(root, "user");
	job->conv = str_of(root, "conv");
	job->conv_name = str_of(root, "conv_name");
	job->from = str_of(root, "from");
	type = cJSON_GetObjectItemCaseSensitive(root, "type");
	job->group = cJSON_IsString(type) && !strcmp(type->valuestring, "group");
	{
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "preview");
		job->preview = cJSON_IsString(p) ? p->valuestring : NULL;
	}
	if(!job->user || !job->conv){
		snprintf(err, errlen, "user and conv are required strings");
		return -2;
	}
	if(int_of(root, "seq", 0, INT64_MAX, 0, &job->seq)
			|| int_of(root, "count", 1, INT32_MAX, 1, &job->count)
			|| int_of(root, "badge", 0, INT32_MAX, -1, &job->badge)){
		snprintf(err, errlen, "seq, count and badge must be integers (count ≥ 1)");
		return -2;
	}
	if(parse_devices(job, cJSON_GetObjectItemCaseSensitive(root, "devices"), err, errlen)) return -2;
	if(make_text(job)){
		snprintf(err, errlen, "out of memory");
		free(job->dev);
		job->dev = NULL;
		job->ndev = job->remaining = 0;
		return -2;
	}
	return 0;
}

void job__free(struct job *job)
{
	if(!job) return;
	cJSON_Delete(job->root);
	free(job->title);
	free(job->body);
	free(job->dev);
	free(job);
}

const char *job__result(const struct job *job)
{
	size_t ok = 0;

	for(size_t i = 0; i < job->ndev; i++){
		if(job->dev[i].outcome == OUTCOME_DELIVERED) ok++;
	}
	if(job->ndev > 0 && ok == job->ndev) return "delivered";
	if(ok == 0) return "dead";
	return "failed";
}

char *job__ack_payload(const struct job *job)
{
	cJSON *ack, *id, *list = NULL;
	char *text = NULL;

	ack = cJSON_CreateObject();
	if(!ack) return NULL;
	id = cJSON_Duplicate(job->id, true);
	if(!id || !cJSON_AddItemToObject(ack, "id", id)){
		cJSON_Delete(id);
		goto out;
	}
	/* A job without devices (invalid) is "failed", not vacuously "delivered". */
	if(!cJSON_AddStringToObject(ack, "result", job->ndev ? job__result(job) : "failed")) goto out;
	for(size_t i = 0; i < job->ndev; i++){
		const struct delivery *d = &job->dev[i];
		cJSON *item;
		if(d->outcome != OUTCOME_UNREGISTER) continue;
		if(!list && !(list = cJSON_AddArrayToObject(ack, "unregister"))) goto out;
		item = cJSON_CreateObject();
		if(!item || !cJSON_AddItemToArray(list, item)){
			cJSON_Delete(item);
			goto out;
		}
		if(!cJSON_AddStringToObject(item, "platform", job__platform_name(d->platform))
				|| !cJSON_AddStringToObject(item, "token", d->token)){
			goto out;
		}
	}
	text = cJSON_PrintUnformatted(ack);
out:
	cJSON_Delete(ack);
	return text;
}

char *job__webhook_body(const struct job *job, size_t dev_index)
{
	cJSON *copy, *devices, *dev, *note;
	char *text = NULL;

	copy = cJSON_Duplicate(job->root, true);
	if(!copy) return NULL;
	devices = cJSON_GetObjectItemCaseSensitive(copy, "devices");
	/* Keep only this device: detach it, then replace the whole array. */
	dev = cJSON_DetachItemFromArray(devices, (int)dev_index);
	if(!dev) goto out;
	devices = cJSON_CreateArray();
	if(!devices || !cJSON_AddItemToArray(devices, dev)){
		cJSON_Delete(devices);
		cJSON_Delete(dev);
		goto out;
	}
	if(!cJSON_ReplaceItemInObjectCaseSensitive(copy, "devices", devices)){
		cJSON_Delete(devices);
		goto out;
	}
	note = cJSON_AddObjectToObject(copy, "notification");
	if(!note || !cJSON_AddStringToObject(note, "title", job->title)
			|| !cJSON_AddStringToObject(note, "body", job->body)){
		goto out;
	}
	text = cJSON_PrintUnformatted(copy);
out:
	cJSON_Delete(copy);
	return text;
}

/* ----------------------------------------------------------------------
 * Recent acks: a hash by key plus a FIFO; the oldest goes when full.
 * ---------------------------------------------------------------------- */

const char *ackcache__find(struct ack_cache *c, const char *key)
{
	struct ack_entry *e = NULL;

	HASH_FIND_STR(c->by_key, key, e);
	return e ? e->payload : NULL;
}

static void ackcache__remove(struct ack_cache *c, struct ack_entry *e)
{
	HASH_DEL(c->by_key, e);
	if(e->older) e->older->newer = e->newer;
	else c->oldest = e->newer;
	if(e->newer) e->newer->older = e->older;
	else c->newest = e->older;
	free(e->payload);
	free(e);
	c->count--;
}

void ackcache__put(struct ack_cache *c, const char *key, const char *payload)
{
	struct ack_entry *e = NULL;

	if(c->max == 0) return;
	HASH_FIND_STR(c->by_key, key, e);
	if(e) ackcache__remove(c, e);
	while(c->count >= c->max && c->oldest) ackcache__remove(c, c->oldest);
	e = calloc(1, sizeof(*e));
	if(!e) return;
	if(!(e->payload = strdup(payload))){
		free(e);
		return;
	}
	snprintf(e->key, sizeof(e->key), "%s", key);
	HASH_ADD_STR(c->by_key, key, e);
	e->older = c->newest;
	if(c->newest) c->newest->newer = e;
	else c->oldest = e;
	c->newest = e;
	c->count++;
}

void ackcache__free(struct ack_cache *c)
{
	while(c->oldest) ackcache__remove(c, c->oldest);
}

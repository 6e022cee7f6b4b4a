/*
 * apns.c — Apple Push Notification service: HTTP/2 (requests multiplexed on
 * one connection by the multi handle), token-based auth.
 *
 * The provider token is an ES256 JWT {"alg":"ES256","kid":key_id}
 * {"iss":team_id,"iat":now} signed with the .p8 key. Apple wants it renewed
 * at most every 20 minutes and at least every hour: it is made again after 50
 * minutes, or at once when APNs answers ExpiredProviderToken.
 *
 * 410 (Unregistered) and 400 BadDeviceToken / DeviceTokenNotForTopic mean
 * the token is gone: it is unregistered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"

#define APNS_JWT_TTL_MS (50LL * 60 * 1000)
#define APNS_KEY_MAX (16 * 1024)

int apns__init(struct bridge *b, char *err, size_t errlen)
{
	const struct config_apns *cfg = &b->cfg.apns;
	struct apns_state *a = &b->apns;
	char msg[BRIDGE_ERR_MAX], *pem;
	size_t len;

	memset(a, 0, sizeof(*a));
	if(!cfg->enabled) return 0;
	pem = config__read_file(cfg->key_file, APNS_KEY_MAX, &len, msg, sizeof(msg));
	if(!pem){
		snprintf(err, errlen, "%s:%d: apns_key_file: %s", b->cfg.path, b->cfg.line_apns_key_file, msg);
		return -1;
	}
	a->key = crypto__load_key(pem, len, msg, sizeof(msg));
	free(pem);
	if(!a->key || crypto__check_key(a->key, JWT_ES256, msg, sizeof(msg))){
		snprintf(err, errlen, "%s:%d: apns_key_file %s: %s", b->cfg.path, b->cfg.line_apns_key_file,
				cfg->key_file, msg);
		return -1;
	}
	log__printf(LOG_INFO, "apns: %s, topic %s, push type %s, key %s of team %s", cfg->host, cfg->topic,
			cfg->push_type, cfg->key_id, cfg->team_id);
	return 0;
}

void apns__cleanup(struct bridge *b)
{
	EVP_PKEY_free(b->apns.key);
	free(b->apns.jwt);
	memset(&b->apns, 0, sizeof(b->apns));
}

/* The current provider token, made again when 50 minutes old. */
static const char *provider_token(struct bridge *b)
{
	struct apns_state *a = &b->apns;
	int64_t now = clock__mono_ms();
	cJSON *header, *claims;
	char *jwt = NULL;

	if(a->jwt && now - a->jwt_made_ms < APNS_JWT_TTL_MS) return a->jwt;
	header = cJSON_CreateObject();
	claims = cJSON_CreateObject();
	if(header && claims
			&& cJSON_AddStringToObject(header, "alg", "ES256")
			&& cJSON_AddStringToObject(header, "kid", b->cfg.apns.key_id)
			&& cJSON_AddStringToObject(claims, "iss", b->cfg.apns.team_id)
			&& cJSON_AddNumberToObject(claims, "iat", (double)(clock__wall_ms() / 1000))){
		jwt = crypto__jwt(a->key, JWT_ES256, header, claims);
	}
	cJSON_Delete(header);
	cJSON_Delete(claims);
	if(!jwt){
		log__printf(LOG_ERROR, "apns: cannot sign the provider token");
		return NULL;
	}
	free(a->jwt);
	a->jwt = jwt;
	a->jwt_made_ms = now;
	a->jwts_made++;
	log__printf(LOG_INFO, "apns: new provider token");
	return a->jwt;
}

static char *payload_json(const struct bridge *b, const struct job *job)
{
	cJSON *root, *aps, *alert;
	char *text = NULL;

	root = cJSON_CreateObject();
	if(!root) return NULL;
	if(!(aps = cJSON_AddObjectToObject(root, "aps"))) goto out;
	if(!strcmp(b->cfg.apns.push_type, "background")){
		/* Background pushes wake the app; Apple forbids alert, sound and badge. */
		if(!cJSON_AddNumberToObject(aps, "content-available", 1)) goto out;
	}else{
		if(!(alert = cJSON_AddObjectToObject(aps, "alert"))) goto out;
		if(!cJSON_AddStringToObject(alert, "title", job->title)
				|| !cJSON_AddStringToObject(alert, "body", job->body)){
			goto out;
		}
		if(job->badge >= 0 && !cJSON_AddNumberToObject(aps, "badge", (double)job->badge)) goto out;
		if(!cJSON_AddStringToObject(aps, "thread-id", job->conv)
				|| !cJSON_AddStringToObject(aps, "sound", "default")){
			goto out;
		}
	}
	if(!cJSON_AddStringToObject(root, "conv", job->conv)
			|| !cJSON_AddNumberToObject(root, "seq", (double)job->seq)){
		goto out;
	}
	text = cJSON_PrintUnformatted(root);
out:
	cJSON_Delete(root);
	return text;
}

int apns__prepare(struct bridge *b, struct delivery *d)
{
	const struct config_apns *cfg = &b->cfg.apns;
	const char *jwt = provider_token(b);
	char *body, *token = NULL, *url = NULL;
	size_t n;
	int rc = -1;

	if(!jwt) return -1;
	body = payload_json(b, d->job);
	if(!body) return -1;
	if(http__begin(b, &d->xfer, cfg->host, cfg->ca_file, HTTP_2_MULTIPLEX)){
		cJSON_free(body);
		return -1;
	}
	if(http__body(&d->xfer, body, true)) goto out;
	/* Device tokens are hex; escape anything else rather than trust it in a path. */
	token = curl_easy_escape(d->xfer.easy, d->token, 0);
	if(!token) goto out;
	n = strlen(cfg->host) + strlen("/3/device/") + strlen(token) + 1;
	url = malloc(n);
	if(!url) goto out;
	snprintf(url, n, "%s/3/device/%s", cfg->host, token);
	if(curl_easy_setopt(d->xfer.easy, CURLOPT_URL, url) != CURLE_OK) goto out;
	if(http__header(&d->xfer, "authorization: bearer %s", jwt)
			|| http__header(&d->xfer, "apns-topic: %s", cfg->topic)
			|| http__header(&d->xfer, "apns-push-type: %s", cfg->push_type)
			|| http__header(&d->xfer, "apns-priority: %d", strcmp(cfg->push_type, "background") ? 10 : 5)
			|| http__header(&d->xfer, "apns-collapse-id: %.64s", d->job->conv)
			|| http__header(&d->xfer, "content-type: application/json")){
		goto out;
	}
	rc = 0;
out:
	curl_free(token);
	free(url);
	if(rc) http__release(b, &d->xfer);
	return rc;
}

/* The "reason" of an APNs error body ({"reason":"BadDeviceToken"}). */
static void reason_of(const struct transfer *t, char *out, size_t outlen)
{
	cJSON *root = cJSON_ParseWithLength(t->resp.data ? t->resp.data : "", t->resp.len);
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "reason");

	snprintf(out, outlen, "%s", cJSON_IsString(r) ? r->valuestring : "");
	cJSON_Delete(root);
}

enum outcome apns__classify(struct bridge *b, struct delivery *d, long status, bool *retry)
{
	*retry = false;
	if(status == 200) return OUTCOME_DELIVERED;
	reason_of(&d->xfer, d->reason, sizeof(d->reason));
	if(status == 410) return OUTCOME_UNREGISTER;
	if(status == 400 && (!strcmp(d->reason, "BadDeviceToken") || !strcmp(d->reason, "DeviceTokenNotForTopic"))){
		return OUTCOME_UNREGISTER;
	}
	if(status == 403 && (!strcmp(d->reason, "ExpiredProviderToken") || !strcmp(d->reason, "InvalidProviderToken"))){
		free(b->apns.jwt);      /* make a new one for the next attempt */
		b->apns.jwt = NULL;
		*retry = true;
		return OUTCOME_NONE;
	}
	if(status == 429 || status >= 500){
		*retry = true;
		return OUTCOME_NONE;
	}
	return OUTCOME_FAILED;
}

/*
 * webhook.c — the operator's own endpoint: the job (with only this device in
 * "devices", plus the notification text) POSTed as JSON and signed:
 *
 *   X-Chat-Timestamp: <unix seconds>
 *   X-Chat-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
 *
 * The receiver recomputes the HMAC over the raw body and rejects stale
 * timestamps (replays). 2xx: accepted; 410: the token is gone (unregistered);
 * 408, 429, 5xx: retried; any other status: refused for good.
 */
#include <stdio.h>
#include <string.h>

#include "bridge.h"

int webhook__prepare(struct bridge *b, struct delivery *d)
{
	const struct config_webhook *cfg = &b->cfg.webhook;
	char ts[24], sig[65];
	char *body;

	body = job__webhook_body(d->job, d->index);
	if(!body) return -1;
	snprintf(ts, sizeof(ts), "%lld", (long long)(clock__wall_ms() / 1000));
	if(crypto__hmac_sha256_hex(cfg->secret, strlen(cfg->secret), ts, strlen(ts), ".", 1, body, strlen(body), sig)){
		log__printf(LOG_ERROR, "webhook: HMAC-SHA256 failed");
		cJSON_free(body);
		return -1;
	}
	if(http__begin(b, &d->xfer, cfg->url, cfg->ca_file, HTTP_2_OFFER)){
		cJSON_free(body);
		return -1;
	}
	if(http__body(&d->xfer, body, true)
			|| http__header(&d->xfer, "Content-Type: application/json")
			|| http__header(&d->xfer, "X-Chat-Timestamp: %s", ts)
			|| http__header(&d->xfer, "X-Chat-Signature: sha256=%s", sig)){
		http__release(b, &d->xfer);
		return -1;
	}
	return 0;
}

enum outcome webhook__classify(struct bridge *b, struct delivery *d, long status, bool *retry)
{
	(void)b;
	(void)d;
	*retry = false;
	if(status >= 200 && status < 300) return OUTCOME_DELIVERED;
	if(status == 410) return OUTCOME_UNREGISTER;
	if(status == 408 || status == 429 || status >= 500){
		*retry = true;
		return OUTCOME_NONE;
	}
	return OUTCOME_FAILED;
}

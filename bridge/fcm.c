/*
 * fcm.c — Firebase Cloud Messaging, HTTP v1 API.
 *
 * Auth: an OAuth 2 access token obtained with the service account's key
 * (RFC 7523 JWT bearer grant, RS256), cached until shortly before it expires
 * and shared by every send. While the one token request runs, FCM deliveries
 * are parked (deliver.c) and go ahead when it ends.
 *
 * Send: POST {send_url}/v1/projects/{project}/messages:send, one message per
 * device token. 404/400 with errorCode UNREGISTERED, or 400 INVALID_ARGUMENT
 * about the registration token, mean the token is gone: it is unregistered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bridge.h"

#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define FCM_GRANT "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
#define FCM_SA_MAX (64 * 1024)

static char *dup_cat(const char *a, const char *b, const char *c)
{
	size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
	char *out = malloc(n);

	if(out) snprintf(out, n, "%s%s%s", a, b, c);
	return out;
}

/* A non-empty string member of the service-account JSON, or NULL. */
static const char *sa_str(const cJSON *sa, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(sa, name);

	return cJSON_IsString(item) && item->valuestring[0] ? item->valuestring : NULL;
}

int fcm__init(struct bridge *b, char *err, size_t errlen)
{
	const struct config_fcm *cfg = &b->cfg.fcm;
	struct fcm_state *f = &b->fcm;
	char msg[BRIDGE_ERR_MAX], *text, *send_path = NULL;
	const char *email, *pem, *token_uri, *project;
	cJSON *sa;
	size_t len;
	int rc = -1;

	memset(f, 0, sizeof(*f));
	f->oauth.kind = XFER_OAUTH;
	f->oauth.owner = f;
	if(!cfg->enabled) return 0;

	text = config__read_file(cfg->service_account, FCM_SA_MAX, &len, msg, sizeof(msg));
	if(!text){
		snprintf(err, errlen, "%s:%d: fcm_service_account: %s", b->cfg.path, b->cfg.line_fcm_service_account, msg);
		return -1;
	}
	sa = cJSON_ParseWithLength(text, len);
	free(text);
	email = sa_str(sa, "client_email");
	pem = sa_str(sa, "private_key");
	token_uri = cfg->token_url ? cfg->token_url : sa_str(sa, "token_uri");
	project = cfg->project_id ? cfg->project_id : sa_str(sa, "project_id");
	if(!cJSON_IsObject(sa) || !email || !pem){
		snprintf(err, errlen, "%s:%d: fcm_service_account %s: not a service-account JSON (needs client_email and private_key)",
				b->cfg.path, b->cfg.line_fcm_service_account, cfg->service_account);
		goto out;
	}
	if(!token_uri || (strncmp(token_uri, "https://", 8) && strncmp(token_uri, "http://", 7))){
		snprintf(err, errlen, "%s: FCM needs a token URL: fcm_token_url, or token_uri in %s", b->cfg.path,
				cfg->service_account);
		goto out;
	}
	if(!project || strpbrk(project, "/?#% ")){
		snprintf(err, errlen, "%s: FCM needs a project id: fcm_project_id, or project_id in %s", b->cfg.path,
				cfg->service_account);
		goto out;
	}
	f->key = crypto__load_key(pem, strlen(pem), msg, sizeof(msg));
	if(!f->key || crypto__check_key(f->key, JWT_RS256, msg, sizeof(msg))){
		snprintf(err, errlen, "%s:%d: fcm_service_account %s: private_key: %s", b->cfg.path,
				b->cfg.line_fcm_service_account, cfg->service_account, msg);
		goto out;
	}
	f->client_email = strdup(email);
	f->token_url = strdup(token_uri);
	f->project_id = strdup(project);
	send_path = dup_cat("/v1/projects/", project, "/messages:send");
	if(!f->client_email || !f->token_url || !f->project_id || !send_path
			|| !(f->send_url = dup_cat(cfg->send_url, send_path, ""))){
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	log__printf(LOG_INFO, "fcm: project %s as %s, token URL %s", f->project_id, f->client_email, f->token_url);
	rc = 0;
out:
	free(send_path);
	cJSON_Delete(sa);
	return rc;
}

void fcm__cleanup(struct bridge *b)
{
	struct fcm_state *f = &b->fcm;

	http__release(b, &f->oauth);
	EVP_PKEY_free(f->key);
	free(f->client_email);
	free(f->project_id);
	free(f->token_url);
	free(f->send_url);
	free(f->access_token);
	memset(f, 0, sizeof(*f));
}

/* Starts the token request: a JWT grant signed with the service account key. */
static int oauth_start(struct bridge *b)
{
	struct fcm_state *f = &b->fcm;
	cJSON *header = NULL, *claims = NULL;
	char *jwt = NULL, *body = NULL;
	long long now = clock__wall_ms() / 1000;
	int rc = -1;

	header = cJSON_CreateObject();
	claims = cJSON_CreateObject();
	if(!header || !claims
			|| !cJSON_AddStringToObject(header, "alg", "RS256")
			|| !cJSON_AddStringToObject(header, "typ", "JWT")
			|| !cJSON_AddStringToObject(claims, "iss", f->client_email)
			|| !cJSON_AddStringToObject(claims, "scope", FCM_SCOPE)
			|| !cJSON_AddStringToObject(claims, "aud", f->token_url)
			|| !cJSON_AddNumberToObject(claims, "iat", (double)now)
			|| !cJSON_AddNumberToObject(claims, "exp", (double)(now + 3600))){
		goto out;
	}
	jwt = crypto__jwt(f->key, JWT_RS256, header, claims);
	if(!jwt){
		log__printf(LOG_ERROR, "fcm: cannot sign the OAuth grant");
		goto out;
	}
	/* A JWT is base64url and dots: nothing to escape in a form value. */
	body = dup_cat("grant_type=" FCM_GRANT "&assertion=", jwt, "");
	if(!body) goto out;
	if(http__begin(b, &f->oauth, f->token_url, b->cfg.fcm.ca_file, HTTP_1)) goto out;
	rc = http__body(&f->oauth, body, false);      /* the transfer owns body from here */
	body = NULL;
	if(rc || http__header(&f->oauth, "Content-Type: application/x-www-form-urlencoded")){
		http__release(b, &f->oauth);
		rc = -1;
		goto out;
	}
	rc = -1;
	if(http__start(b, &f->oauth)) goto out;
	f->oauth_running = true;
	log__printf(LOG_DEBUG, "fcm: requesting an access token from %s", f->token_url);
	rc = 0;
out:
	free(body);
	free(jwt);
	cJSON_Delete(header);
	cJSON_Delete(claims);
	return rc;
}

static bool header_safe(const char *s)
{
	if(!*s) return false;
	for(; *s; s++){
		if(*s < 0x21 || *s > 0x7e) return false;
	}
	return true;
}

void fcm__oauth_done(struct bridge *b, CURLcode code)
{
	struct fcm_state *f = &b->fcm;
	long status = http__status(&f->oauth);
	cJSON *resp = NULL;
	const cJSON *tok, *exp;
	char why[160];
	bool ok = false;

	f->oauth_running = false;
	if(code != CURLE_OK){
		snprintf(why, sizeof(why), "token request: %.140s", f->oauth.errbuf[0] ? f->oauth.errbuf : curl_easy_strerror(code));
		goto out;
	}
	if(status != 200){
		snprintf(why, sizeof(why), "token request: HTTP %ld %.80s", status, f->oauth.resp.data ? f->oauth.resp.data : "");
		goto out;
	}
	resp = cJSON_ParseWithLength(f->oauth.resp.data ? f->oauth.resp.data : "", f->oauth.resp.len);
	tok = cJSON_GetObjectItemCaseSensitive(resp, "access_token");
	exp = cJSON_GetObjectItemCaseSensitive(resp, "expires_in");
	if(!cJSON_IsString(tok) || !header_safe(tok->valuestring)){
		snprintf(why, sizeof(why), "token response without a usable access_token");
		goto out;
	}
	{
		double secs = cJSON_IsNumber(exp) && exp->valuedouble > 0 ? exp->valuedouble : 3600;
		double margin = secs > 120 ? 60 : secs / 2;     /* renew shortly before it expires */
		char *copy = strdup(tok->valuestring);
		if(!copy){
			snprintf(why, sizeof(why), "out of memory");
			goto out;
		}
		free(f->access_token);
		f->access_token = copy;
		f->token_refresh_ms = clock__mono_ms() + (int64_t)((secs - margin) * 1000);
		f->tokens_fetched++;
		log__printf(LOG_INFO, "fcm: access token obtained, expires in %.0f s", secs);
	}
	ok = true;
out:
	if(!ok) log__printf(LOG_WARNING, "fcm: %s", why);
	cJSON_Delete(resp);
	http__release(b, &f->oauth);
	deliver__token_ready(b, ok);
}

/* Returns 1 (parked: a token request runs), 0 (have a token), -1 (error). */
static int need_token(struct bridge *b)
{
	struct fcm_state *f = &b->fcm;

	if(f->access_token && clock__mono_ms() < f->token_refresh_ms) return 0;
	if(f->oauth_running) return 1;
	return oauth_start(b) ? -1 : 1;
}

static cJSON *message_json(const struct job *job, const struct delivery *d)
{
	cJSON *root, *m, *n, *data, *android, *apns, *payload, *aps;
	char num[32];

	root = cJSON_CreateObject();
	if(!root) return NULL;
	if(!(m = cJSON_AddObjectToObject(root, "message"))) goto fail;
	if(!cJSON_AddStringToObject(m, "token", d->token)) goto fail;
	if(!(n = cJSON_AddObjectToObject(m, "notification"))) goto fail;
	if(!cJSON_AddStringToObject(n, "title", job->title) || !cJSON_AddStringToObject(n, "body", job->body)) goto fail;
	/* FCM data values must be strings. */
	if(!(data = cJSON_AddObjectToObject(m, "data"))) goto fail;
	if(!cJSON_AddStringToObject(data, "conv", job->conv)) goto fail;
	snprintf(num, sizeof(num), "%lld", job->seq);
	if(!cJSON_AddStringToObject(data, "seq", num)) goto fail;
	if(job->from && !cJSON_AddStringToObject(data, "from", job->from)) goto fail;
	snprintf(num, sizeof(num), "%lld", job->count);
	if(!cJSON_AddStringToObject(data, "count", num)) goto fail;
	if(!(android = cJSON_AddObjectToObject(m, "android"))) goto fail;
	if(!cJSON_AddStringToObject(android, "collapse_key", job->conv)) goto fail;
	if(job->badge >= 0){
		if(!(apns = cJSON_AddObjectToObject(m, "apns"))) goto fail;
		if(!(payload = cJSON_AddObjectToObject(apns, "payload"))) goto fail;
		if(!(aps = cJSON_AddObjectToObject(payload, "aps"))) goto fail;
		if(!cJSON_AddNumberToObject(aps, "badge", (double)job->badge)) goto fail;
	}
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}

int fcm__prepare(struct bridge *b, struct delivery *d)
{
	struct fcm_state *f = &b->fcm;
	cJSON *msg;
	char *body;
	int rc;

	rc = need_token(b);
	if(rc) return rc;
	msg = message_json(d->job, d);
	body = msg ? cJSON_PrintUnformatted(msg) : NULL;
	cJSON_Delete(msg);
	if(!body) return -1;
	if(http__begin(b, &d->xfer, f->send_url, b->cfg.fcm.ca_file, HTTP_2_MULTIPLEX)){
		cJSON_free(body);
		return -1;
	}
	d->auth_gen = f->tokens_fetched;
	if(http__body(&d->xfer, body, true)
			|| http__header(&d->xfer, "Authorization: Bearer %s", f->access_token)
			|| http__header(&d->xfer, "Content-Type: application/json; charset=utf-8")){
		http__release(b, &d->xfer);
		return -1;
	}
	return 0;
}

/* What FCM said about the token: UNREGISTERED, or INVALID_ARGUMENT naming the
 * registration token. */
static bool token_is_gone(const char *resp, size_t len, long status, char *reason, size_t reasonlen)
{
	cJSON *root = cJSON_ParseWithLength(resp ? resp : "", len);
	const cJSON *error = cJSON_GetObjectItemCaseSensitive(root, "error");
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(error, "status");
	const cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
	const cJSON *details = cJSON_GetObjectItemCaseSensitive(error, "details"), *det;
	const char *code = NULL;
	bool gone = false;

	cJSON_ArrayForEach(det, details){
		const cJSON *ec = cJSON_GetObjectItemCaseSensitive(det, "errorCode");
		if(cJSON_IsString(ec)){
			code = ec->valuestring;
			break;
		}
	}
	if(!code && cJSON_IsString(st)) code = st->valuestring;
	snprintf(reason, reasonlen, "%s", code ? code : "");
	if(code && !strcmp(code, "UNREGISTERED") && (status == 404 || status == 400)){
		gone = true;
	}else if(status == 400 && code && !strcmp(code, "INVALID_ARGUMENT") && cJSON_IsString(message)
			&& strcasestr(message->valuestring, "registration token")){
		gone = true;
	}
	cJSON_Delete(root);
	return gone;
}

enum outcome fcm__classify(struct bridge *b, struct delivery *d, long status, bool *retry)
{
	*retry = false;
	if(status >= 200 && status < 300) return OUTCOME_DELIVERED;
	if(status == 401){
		/* The access token was refused (revoked, clock skew): get a new one,
		 * unless another answer already made us do so. */
		if(d->auth_gen == b->fcm.tokens_fetched){
			free(b->fcm.access_token);
			b->fcm.access_token = NULL;
		}
		snprintf(d->reason, sizeof(d->reason), "access token refused");
		*retry = true;
		return OUTCOME_NONE;
	}
	if(status == 408 || status == 429 || status >= 500){
		*retry = true;
		return OUTCOME_NONE;
	}
	if(token_is_gone(d->xfer.resp.data, d->xfer.resp.len, status, d->reason, sizeof(d->reason))){
		return OUTCOME_UNREGISTER;
	}
	return OUTCOME_FAILED;
}

/*
 * config.c — the bridge's config file: "key = value" lines, "#" comments.
 *
 * Strict: an unknown key, a key given twice, a value out of range or a line
 * that is not "key = value" is an error naming the file and line, never a
 * silent default. The value is the rest of the line after "=", trimmed; it may
 * contain "#" (secrets do), so comments are whole lines only.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bridge.h"

#define CONFIG_MAX_BYTES (1024 * 1024)

enum key_kind {
	KEY_STRING,
	KEY_LONG,
	KEY_BOOL,
};

/* Extra check of a string value; returns 0 or -1 with a sentence in err. */
typedef int (*key_check)(const char *value, char *err, size_t errlen);

struct key_def {
	const char *name;
	enum key_kind kind;
	size_t offset;
	long lo, hi;        /* KEY_LONG range */
	key_check check;
};

static int check_url(const char *v, char *err, size_t errlen)
{
	if(strncmp(v, "https://", 8) && strncmp(v, "http://", 7)){
		snprintf(err, errlen, "'%s' is not an http:// or https:// URL", v);
		return -1;
	}
	for(const char *p = v; *p; p++){
		if(isspace((unsigned char)*p) || !isprint((unsigned char)*p)){
			snprintf(err, errlen, "URL '%s' contains a blank or control character", v);
			return -1;
		}
	}
	return 0;
}

/* One MQTT topic level: no wildcards, no '/', not empty (empty is caught before). */
static int check_prefix(const char *v, char *err, size_t errlen)
{
	if(strpbrk(v, "/+#") || strlen(v) > 64){
		snprintf(err, errlen, "prefix '%s' must be one topic level (no '/', '+', '#'; at most 64 bytes)", v);
		return -1;
	}
	return 0;
}

static int check_apns_host(const char *v, char *err, size_t errlen)
{
	if(!strcmp(v, "production") || !strcmp(v, "sandbox")) return 0;
	if(check_url(v, err, errlen)){
		snprintf(err, errlen, "apns_host must be production, sandbox or an http(s):// URL, not '%s'", v);
		return -1;
	}
	return 0;
}

static int check_push_type(const char *v, char *err, size_t errlen)
{
	static const char *const types[] = {"alert", "background", "voip", "complication", "fileprovider",
		"mdm", "location", "liveactivity", "pushtotalk", NULL};

	for(size_t i = 0; types[i]; i++){
		if(!strcmp(v, types[i])) return 0;
	}
	snprintf(err, errlen, "apns_push_type '%s' is not an APNs push type (alert, background, voip, …)", v);
	return -1;
}

/* Header-safe tokens: ids end up in HTTP headers and JWTs. */
static int check_word(const char *v, char *err, size_t errlen)
{
	for(const char *p = v; *p; p++){
		if(!isalnum((unsigned char)*p) && !strchr("._-", *p)){
			snprintf(err, errlen, "'%s' may only contain letters, digits, '.', '_' and '-'", v);
			return -1;
		}
	}
	return 0;
}

#define S(name, field, check) {name, KEY_STRING, offsetof(struct bridge_config, field), 0, 0, check}
#define L(name, field, lo, hi) {name, KEY_LONG, offsetof(struct bridge_config, field), lo, hi, NULL}
#define B(name, field) {name, KEY_BOOL, offsetof(struct bridge_config, field), 0, 0, NULL}

static const struct key_def keys[] = {
	S("mqtt_host", mqtt_host, NULL),
	L("mqtt_port", mqtt_port, 1, 65535),
	S("mqtt_username", mqtt_username, NULL),
	S("mqtt_password", mqtt_password, NULL),
	S("mqtt_client_id", mqtt_client_id, NULL),
	S("mqtt_tls_ca", mqtt_tls_ca, NULL),
	L("mqtt_keepalive", mqtt_keepalive, 5, 3600),
	S("prefix", prefix, check_prefix),
	L("concurrency", concurrency, 1, 10000),
	L("max_jobs", max_jobs, 1, 10000000),
	L("max_tries", max_tries, 1, 1000),
	L("connect_timeout_ms", connect_timeout_ms, 100, 600000),
	L("request_timeout_ms", request_timeout_ms, 100, 3600000),
	L("backoff_base_ms", backoff_base_ms, 1, 3600000),
	L("backoff_max_ms", backoff_max_ms, 1, 86400000),
	L("shutdown_grace_ms", shutdown_grace_ms, 0, 3600000),
	L("status_interval_ms", status_interval_ms, 100, 86400000),
	L("ack_cache", ack_cache, 0, 10000000),
	B("fcm_enabled", fcm.enabled),
	S("fcm_service_account", fcm.service_account, NULL),
	S("fcm_project_id", fcm.project_id, check_word),
	S("fcm_token_url", fcm.token_url, check_url),
	S("fcm_send_url", fcm.send_url, check_url),
	S("fcm_ca_file", fcm.ca_file, NULL),
	B("apns_enabled", apns.enabled),
	S("apns_key_file", apns.key_file, NULL),
	S("apns_key_id", apns.key_id, check_word),
	S("apns_team_id", apns.team_id, check_word),
	S("apns_topic", apns.topic, check_word),
	S("apns_push_type", apns.push_type, check_push_type),
	S("apns_host", apns.host, check_apns_host),
	S("apns_ca_file", apns.ca_file, NULL),
	B("webhook_enabled", webhook.enabled),
	S("webhook_url", webhook.url, check_url),
	S("webhook_secret", webhook.secret, NULL),
	S("webhook_ca_file", webhook.ca_file, NULL),
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static void defaults(struct bridge_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->mqtt_port = 1883;
	cfg->mqtt_keepalive = 30;
	cfg->concurrency = 32;
	cfg->max_jobs = 10000;
	cfg->max_tries = 5;
	cfg->connect_timeout_ms = 5000;
	cfg->request_timeout_ms = 15000;
	cfg->backoff_base_ms = 1000;
	cfg->backoff_max_ms = 60000;
	cfg->shutdown_grace_ms = 10000;
	cfg->status_interval_ms = 5000;
	cfg->ack_cache = 4096;
}

/* Strings that stay NULL in the file get these (strdup'd) after parsing. */
static int default_strings(struct bridge_config *cfg)
{
	struct {
		char **field;
		const char *value;
	} d[] = {
		{&cfg->mqtt_host, "localhost"},
		{&cfg->mqtt_client_id, BRIDGE_NAME},
		{&cfg->prefix, "chat"},
		{&cfg->fcm.send_url, "https://fcm.googleapis.com"},
		{&cfg->apns.push_type, "alert"},
		{&cfg->apns.host, "production"},
	};

	for(size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++){
		if(!*d[i].field && !(*d[i].field = strdup(d[i].value))) return -1;
	}
	return 0;
}

static int parse_long(const char *v, long lo, long hi, long *out)
{
	char *end;
	long x;

	if(!isdigit((unsigned char)v[0])) return -1;
	errno = 0;
	x = strtol(v, &end, 10);
	if(errno || *end || x < lo || x > hi) return -1;
	*out = x;
	return 0;
}

static int parse_bool(const char *v, bool *out)
{
	if(!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1")){
		*out = true;
		return 0;
	}
	if(!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0")){
		*out = false;
		return 0;
	}
	return -1;
}

static char *trim(char *s)
{
	char *end;

	while(isspace((unsigned char)*s)) s++;
	end = s + strlen(s);
	while(end > s && isspace((unsigned char)end[-1])) end--;
	*end = '\0';
	return s;
}

static void set_line(struct bridge_config *cfg, const char *key, int line)
{
	if(!strcmp(key, "fcm_enabled")) cfg->line_fcm_enabled = line;
	else if(!strcmp(key, "apns_enabled")) cfg->line_apns_enabled = line;
	else if(!strcmp(key, "webhook_enabled")) cfg->line_webhook_enabled = line;
	else if(!strcmp(key, "fcm_service_account")) cfg->line_fcm_service_account = line;
	else if(!strcmp(key, "apns_key_file")) cfg->line_apns_key_file = line;
}

/* Applies one "key = value" line. Returns 0 or -1 with a sentence in err. */
static int apply(struct bridge_config *cfg, int *seen, char *line, int lineno, char *err, size_t errlen)
{
	char *eq, *key, *value, check_err[BRIDGE_ERR_MAX / 2];
	const struct key_def *def = NULL;
	size_t i;

	eq = strchr(line, '=');
	if(!eq){
		snprintf(err, errlen, "expected 'key = value'");
		return -1;
	}
	*eq = '\0';
	key = trim(line);
	value = trim(eq + 1);
	if(!*key){
		snprintf(err, errlen, "missing key before '='");
		return -1;
	}
	for(i = 0; i < NKEYS; i++){
		if(!strcmp(keys[i].name, key)){
			def = &keys[i];
			break;
		}
	}
	if(!def){
		snprintf(err, errlen, "unknown key '%s'", key);
		return -1;
	}
	if(seen[i]){
		snprintf(err, errlen, "'%s' was already set on line %d", key, seen[i]);
		return -1;
	}
	seen[i] = lineno;
	set_line(cfg, key, lineno);
	if(!*value){
		snprintf(err, errlen, "empty value for '%s' (leave the line out to use the default)", key);
		return -1;
	}

	switch(def->kind){
		case KEY_STRING:
			if(def->check && def->check(value, check_err, sizeof(check_err))){
				snprintf(err, errlen, "%.64s: %s", key, check_err);
				return -1;
			}
			if(!(*(char **)((char *)cfg + def->offset) = strdup(value))){
				snprintf(err, errlen, "out of memory");
				return -1;
			}
			return 0;
		case KEY_LONG:
			if(parse_long(value, def->lo, def->hi, (long *)((char *)cfg + def->offset))){
				snprintf(err, errlen, "%s: '%s' is not an integer from %ld to %ld", key, value, def->lo, def->hi);
				return -1;
			}
			return 0;
		case KEY_BOOL:
			if(parse_bool(value, (bool *)((char *)cfg + def->offset))){
				snprintf(err, errlen, "%s: '%s' is not true or false", key, value);
				return -1;
			}
			return 0;
	}
	return -1;
}

/* Checks what needs several keys. Returns 0 or -1 with "path[:line]: sentence". */
static int validate(struct bridge_config *cfg, char *err, size_t errlen)
{
	const char *p = cfg->path;

	if(!cfg->mqtt_username){
		snprintf(err, errlen, "%s: mqtt_username is required (the plugin lets only its push_users read jobs)", p);
		return -1;
	}
	if(cfg->backoff_max_ms < cfg->backoff_base_ms){
		snprintf(err, errlen, "%s: backoff_max_ms (%ld) is less than backoff_base_ms (%ld)", p,
				cfg->backoff_max_ms, cfg->backoff_base_ms);
		return -1;
	}
	if(!cfg->fcm.enabled && !cfg->apns.enabled && !cfg->webhook.enabled){
		snprintf(err, errlen, "%s: no provider enabled: set fcm_enabled, apns_enabled or webhook_enabled = true", p);
		return -1;
	}
	if(cfg->fcm.enabled && !cfg->fcm.service_account){
		snprintf(err, errlen, "%s:%d: fcm_enabled = true needs fcm_service_account", p, cfg->line_fcm_enabled);
		return -1;
	}
	if(cfg->apns.enabled){
		const char *missing = !cfg->apns.key_file ? "apns_key_file" : !cfg->apns.key_id ? "apns_key_id"
			: !cfg->apns.team_id ? "apns_team_id" : !cfg->apns.topic ? "apns_topic" : NULL;
		if(missing){
			snprintf(err, errlen, "%s:%d: apns_enabled = true needs %s", p, cfg->line_apns_enabled, missing);
			return -1;
		}
	}
	if(cfg->webhook.enabled){
		const char *missing = !cfg->webhook.url ? "webhook_url" : !cfg->webhook.secret ? "webhook_secret" : NULL;
		if(missing){
			snprintf(err, errlen, "%s:%d: webhook_enabled = true needs %s", p, cfg->line_webhook_enabled, missing);
			return -1;
		}
	}
	return 0;
}

/* production / sandbox → Apple's hosts; a URL loses its trailing '/'. */
static int resolve_urls(struct bridge_config *cfg)
{
	char **urls[] = {&cfg->apns.host, &cfg->fcm.send_url, &cfg->fcm.token_url};
	const char *host = NULL;

	if(!strcmp(cfg->apns.host, "production")) host = "https://api.push.apple.com";
	else if(!strcmp(cfg->apns.host, "sandbox")) host = "https://api.sandbox.push.apple.com";
	if(host){
		free(cfg->apns.host);
		if(!(cfg->apns.host = strdup(host))) return -1;
	}
	for(size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++){
		char *u = *urls[i];
		size_t n = u ? strlen(u) : 0;
		while(n > 0 && u[n - 1] == '/') u[--n] = '\0';
	}
	return 0;
}

char *config__read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
	FILE *f;
	char *data;
	size_t n;

	f = fopen(path, "rb");
	if(!f){
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	data = malloc(max + 1);
	if(!data){
		fclose(f);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	n = fread(data, 1, max + 1, f);
	if(ferror(f)){
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto fail;
	}
	if(n > max){
		snprintf(err, errlen, "%s is larger than %zu bytes", path, max);
		goto fail;
	}
	fclose(f);
	data[n] = '\0';
	if(len) *len = n;
	return data;
fail:
	fclose(f);
	free(data);
	return NULL;
}

int config__load(struct bridge_config *cfg, const char *path, char *err, size_t errlen)
{
	int seen[NKEYS] = {0};
	char *text, *line, *save = NULL, msg[BRIDGE_ERR_MAX];
	int lineno = 0;
	size_t len;

	defaults(cfg);
	if(!(cfg->path = strdup(path))){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	text = config__read_file(path, CONFIG_MAX_BYTES, &len, msg, sizeof(msg));
	if(!text){
		snprintf(err, errlen, "%s", msg);
		return -1;
	}
	if(memchr(text, '\0', len)){
		snprintf(err, errlen, "%s: contains a NUL byte", path);
		free(text);
		return -1;
	}

	/* strtok_r would skip empty lines and so miscount them: split by hand. */
	line = text;
	while(line){
		char *nl = strchr(line, '\n'), *s;
		if(nl) *nl = '\0';
		save = nl ? nl + 1 : NULL;
		lineno++;
		s = trim(line);
		if(*s && *s != '#'){
			if(apply(cfg, seen, s, lineno, msg, sizeof(msg))){
				snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
				free(text);
				return -1;
			}
		}
		line = save;
	}
	free(text);

	if(default_strings(cfg) || resolve_urls(cfg)){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return validate(cfg, err, errlen);
}

void config__free(struct bridge_config *cfg)
{
	for(size_t i = 0; i < NKEYS; i++){
		if(keys[i].kind == KEY_STRING){
			char **field = (char **)((char *)cfg + keys[i].offset);
			free(*field);
			*field = NULL;
		}
	}
	free(cfg->path);
	cfg->path = NULL;
}
